"""The orchestrator's side of telemetry: subscribe to a deployment's topics, keep the latest.

`TelemetryWatch` keeps the newest payload of every retained topic of the tree documented in
`qkdnet.node.telemetry_schema` (node status, link stats, link store levels) and the recent
events. It
reads as the controller, over TLS with the controller's certificate, from the deployment's own
broker (`TelemetryWatch.for_plan`).

Payloads are data from the network, never trusted: each is checked against the shape its topic
must have (schema version, the fields and their types, the node or link its topic names, sizes);
one that fails is not kept but counted by reason (`TelemetryState.rejected`), so that a display
can say so. Nothing of a payload is ever interpreted as markup: displays print its strings as
plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt

from qkdnet.node.addresses import parse_address
from qkdnet.node.telemetry_schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from ..plan.network_plan import NetworkPlan

__all__ = ["MAX_PAYLOAD_BYTES", "TelemetryState", "TelemetryWatch", "check_payload"]

MAX_PAYLOAD_BYTES = 64 * 1024
_MAX_TEXT = 256  # characters of any one string field
_NODE_STATES = ("up", "stopped", "lost")

_Number = "number"
# field -> type ("number": a finite int or float, not a bool); required fields first.
_STATUS_REQUIRED = {"schema": int, "node": str, "state": str}
_STATUS_OPTIONAL: dict[str, Any] = {
    "pid": int,
    "address": str,
    "links": list,
    "uptime_s": _Number,
    "ts": _Number,
}
_STATS_REQUIRED = {"schema": int, "link": str, "state": str}
_STATS_OPTIONAL: dict[str, Any] = {
    "transmitter": str,
    "receiver": str,
    "frames_ok": int,
    "frames_aborted": int,
    "secret_bits": int,
    "store_bits": int,
    **{
        name: _Number
        for name in (
            "qber",
            "sample_qber",
            "last_sample_qber",
            "model_qber",
            "sifted_rate_bps",
            "secret_rate_bps",
            "wall_secret_rate_bps",
            "model_sifted_rate_bps",
            "model_secret_rate_bps",
            "secret_fraction_per_pulse",
            "model_secret_fraction_per_pulse",
            "reconciliation_efficiency",
            "emulated_seconds",
            "ts",
        )
    },
}
_LINK_STATES = ("connecting", "running", "backoff", "waiting", "stopped", "cut")
_STORE_REQUIRED = {"schema": int, "link": str, "node": str}
_STORE_OPTIONAL: dict[str, Any] = {
    "bits": int,
    "blocks": int,
    "total_bits": int,
    "last_frame": int,
    "role": str,
    "ts": _Number,
}
_EVENT_REQUIRED = {"schema": int, "node": str, "event": str}
_KIND_NAMES: dict[Any, str] = {
    _Number: "a finite number",
    int: "an integer",
    str: "a text",
    list: "a list",
}


class BadPayload(ValueError):
    """A message that does not have the shape its topic requires; the text says why."""


def _check_fields(
    data: dict[str, Any], required: dict[str, Any], optional: dict[str, Any] | None = None
) -> None:
    for name in required:
        if name not in data:
            raise BadPayload(f"no {name}")
    for name, kind in {**required, **(optional or {})}.items():
        if name in data:
            _check_type(name, data[name], kind)


def _check_type(name: str, value: Any, kind: Any) -> None:
    if kind == _Number:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise BadPayload(f"{name} is not {_KIND_NAMES.get(kind, 'of its type')}")


def _check_strings(value: Any, depth: int = 0) -> None:
    """No string longer than `_MAX_TEXT` or with anything unprintable in it (a terminal's
    escape sequences, a right-to-left override), no nesting deeper than 4 levels."""
    if depth > 4:
        raise BadPayload("nested too deeply")
    if isinstance(value, str) and len(value) > _MAX_TEXT:
        raise BadPayload(f"a text of {len(value)} characters")
    if isinstance(value, str) and not value.isprintable():
        raise BadPayload("a text with control characters")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, depth + 1)
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def check_payload(
    parts: list[str],
    data: Any,
    nodes: Collection[str] | None = None,
    links: Collection[str] | None = None,
) -> str:
    """Check a decoded payload of topic `<prefix>/<parts...>`; returns its kind ("status",
    "stats", "store", "events" or "relay"), or raises BadPayload saying why not.

    With `nodes` and `links`, the node or link a topic names must be one of them."""
    if not isinstance(data, dict):
        raise BadPayload("not a JSON object")
    _check_strings(data)

    def known(node: str | None = None, link: str | None = None) -> None:
        if node is not None and nodes is not None and node not in nodes:
            raise BadPayload("a node not in this deployment")
        if link is not None and links is not None and link not in links:
            raise BadPayload("a link not in this deployment")

    match parts:
        case ["node", node, "status"]:
            known(node=node)
            _check_fields(data, _STATUS_REQUIRED, _STATUS_OPTIONAL)
            if data["node"] != node:
                raise BadPayload("node differs from the topic's")
            if data["state"] not in _NODE_STATES:
                raise BadPayload("unknown state")
            if not all(isinstance(x, str) for x in data.get("links", [])):
                raise BadPayload("links are not names")
            kind = "status"
        case ["node", node, "events"] | ["relay", "events", node]:
            known(node=node)
            _check_fields(data, _EVENT_REQUIRED)
            if data["node"] != node:
                raise BadPayload("node differs from the topic's")
            kind = "events" if parts[0] == "node" else "relay"
        case ["link", link, "stats"]:
            known(link=link)
            _check_fields(data, _STATS_REQUIRED, _STATS_OPTIONAL)
            if data["link"] != link:
                raise BadPayload("link differs from the topic's")
            if data["state"] not in _LINK_STATES:
                raise BadPayload("unknown link state")
            kind = "stats"
        case ["link", link, "store", node]:
            known(node=node, link=link)
            _check_fields(data, _STORE_REQUIRED, _STORE_OPTIONAL)
            if data["link"] != link or data["node"] != node:
                raise BadPayload("link or node differs from the topic's")
            kind = "store"
        case _:
            raise BadPayload("a topic outside the tree")
    if data["schema"] != SCHEMA_VERSION:
        raise BadPayload(f"schema {data['schema']} (this qkdnet reads {SCHEMA_VERSION})")
    return kind


@dataclass
class TelemetryState:
    """The newest payload per node, link and link end, and the messages refused."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    stores: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    relay_events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    known_nodes: frozenset[str] | None = None
    known_links: frozenset[str] | None = None
    # The newest message kept: (kind, payload); kind is "status", "events", "relay", "stats"
    # or "store".
    last: tuple[str, dict[str, Any]] | None = None
    # Why the newest refused message was refused.
    last_refused: str = ""
    # When the newest status of a node ("node", id) or stats of a link ("link", id) arrived,
    # in seconds since the epoch.
    received: dict[tuple[str, str], float] = field(default_factory=dict)

    def apply(self, prefix: str, topic: str, payload: bytes) -> None:
        """Take one message of the tree under `prefix` (an empty payload clears a retained
        topic); a message of the wrong shape is counted in `rejected` and otherwise ignored."""
        if not topic.startswith(prefix + "/"):
            return
        parts = topic.removeprefix(prefix + "/").split("/")
        if not payload:
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._refuse("larger than 64 KiB")
            return
        try:
            data = json.loads(payload)
            kind = check_payload(parts, data, self.known_nodes, self.known_links)
        except BadPayload as exc:
            self._refuse(str(exc))
            return
        except (ValueError, RecursionError):  # not JSON, not UTF-8, a 5000-digit number
            self._refuse("not JSON")
            return
        self.messages += 1
        self.last = (kind, data)
        if kind in ("status", "stats"):
            self.received[(parts[0], parts[1])] = time.time()
        if kind == "status":
            self.nodes[parts[1]] = data
        elif kind == "events":
            self.events.append(data)
        elif kind == "relay":
            self.relay_events.append(data)
        elif kind == "stats":
            self.links[parts[1]] = data
        else:
            self.stores[(parts[1], parts[3])] = data

    def _refuse(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.last_refused = reason

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class TelemetryWatch:
    """Subscribes to `<prefix>/#` on a broker (host:port) and keeps a `TelemetryState`."""

    def __init__(
        self,
        broker: str,
        prefix: str,
        tls: ssl.SSLContext | None = None,
        nodes: Collection[str] | None = None,
        links: Collection[str] | None = None,
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self._tls = tls
        self.state = TelemetryState(
            known_nodes=frozenset(nodes) if nodes is not None else None,
            known_links=frozenset(links) if links is not None else None,
        )

    @classmethod
    def for_plan(cls, plan: NetworkPlan, broker: str | None = None) -> TelemetryWatch:
        """A watch of a deployment: its broker as the controller (or `broker`, host:port, an
        external one, without TLS), its nodes and links only."""
        return cls(
            broker or plan.broker_address,
            plan.topic_prefix,
            tls=None if broker else plan.telemetry_tls(),
            nodes=plan.nodes,
            links=plan.link_ids(),
        )

    async def updates(self, reconnect: bool = True) -> AsyncIterator[TelemetryState]:
        """Yield the state after every message; reconnects (every second) if the broker goes."""
        host, port = parse_address(self.broker)
        while True:
            try:
                async with aiomqtt.Client(host, port, timeout=5.0, tls_context=self._tls) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=0)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.state.apply(self.prefix, str(message.topic), bytes(payload))
                            yield self.state
            except aiomqtt.MqttError:
                if not reconnect:
                    raise
            await asyncio.sleep(1.0)

    async def collect(self, seconds: float) -> TelemetryState:
        """Listen for `seconds`, then return what arrived (retained topics arrive at once)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for _ in self.updates():
                    pass
        return self.state
