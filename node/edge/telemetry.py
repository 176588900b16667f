"""Telemetry: a node's state, its links' figures and its events, published over MQTT.

The topics and payloads are those of `qkdnet.node.telemetry_schema`.

A node publishes only under its own topics (the brokers of a deployment enforce it, see
`qkdnet.orchestrator.plan.telemetry_access`); with `tls`, it connects over TLS with its own
certificate, and checks the broker's.

Telemetry is never on the key path: publishing happens on its own task, a broker that is down
or goes away only makes the node retry (every `_RETRY_SECONDS`), and links keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiomqtt

from ..addresses import parse_address
from ..config import TelemetryConfig
from ..status import DeliveryStatus, LinkStatus, NodeStatus
from ..structured_log import log_event
from ..telemetry_schema import SCHEMA_VERSION

__all__ = [
    "TelemetryPublisher",
    "link_payloads",
    "node_payload",
]

_RETRY_SECONDS = 1.0
_MAX_EVENTS = 1000

logger = logging.getLogger("qkdnet.node.edge.telemetry")


def node_payload(status: NodeStatus, state: str, address: str) -> dict[str, Any]:
    """The retained `node/<id>/status` payload."""
    return {
        "schema": SCHEMA_VERSION,
        "node": status.node_id,
        "state": state,
        "pid": os.getpid(),
        "address": address,
        "links": [link.link_id for link in status.links],
        "uptime_s": round(status.uptime_seconds, 3),
        "ts": time.time(),
    } | ({"delivery": _delivery(status.delivery)} if status.delivery is not None else {})


_DELIVERY_FIGURES = (
    "keys_waiting",
    "keys_pending",
    "pool_keys",
    "keys_expired",
    "pending_expired",
    "pool_keys_expired",
    "keys_abandoned",
    "keys_voided",
)


def _delivery(delivery: DeliveryStatus) -> dict[str, int]:
    return {name: int(getattr(delivery, name)) for name in _DELIVERY_FIGURES}


def _per_second(bits: int, seconds: float) -> float:
    return bits / seconds if seconds > 0 else 0.0


def link_payloads(node_id: str, link: LinkStatus) -> dict[str, dict[str, Any]]:
    """Topic suffix -> payload for one link end: `store/<id>` always, `stats` at the transmitter."""
    now = time.time()
    out: dict[str, dict[str, Any]] = {
        f"store/{node_id}": {
            "schema": SCHEMA_VERSION,
            "link": link.link_id,
            "node": node_id,
            "role": link.role,
            "bits": link.store_bits,
            "blocks": link.store_blocks,
            "total_bits": link.stored_bits_total,
            "last_frame": link.last_frame,
            "ts": now,
        }
    }
    if link.role == "transmitter":
        out["stats"] = {
            "schema": SCHEMA_VERSION,
            "link": link.link_id,
            "transmitter": node_id,
            "receiver": link.peer,
            "state": link.state,
            "frames_ok": link.frames_ok,
            "frames_aborted": link.frames_aborted,
            "qber": link.qber,
            "sample_qber": link.sample_qber,
            "model_qber": link.model_qber,
            "sifted_rate_bps": _per_second(link.sifted_bits, link.emulated_seconds),
            "secret_rate_bps": _per_second(
                link.secret_bits + link.auth_bits, link.emulated_seconds
            ),
            "wall_secret_rate_bps": link.secret_rate_bps,
            "model_sifted_rate_bps": link.model_sifted_rate_bps,
            "model_secret_rate_bps": link.model_secret_rate_bps,
            "secret_fraction_per_pulse": link.secret_fraction_per_pulse,
            "model_secret_fraction_per_pulse": link.model_secret_fraction_per_pulse,
            "reconciliation_efficiency": link.reconciliation_efficiency,
            "secret_bits": link.secret_bits,
            "store_bits": link.store_bits,
            "emulated_seconds": link.emulated_seconds,
            "kind": link.kind,
            "source": link.source,
            "last_fault": link.last_fault,
            "ts": now,
        }
        if link.last_sample_bits:
            out["stats"]["last_sample_qber"] = link.last_sample_qber
    return out


class TelemetryPublisher:
    """Publishes one node's telemetry until closed, reconnecting whenever the broker is away."""

    def __init__(
        self,
        config: TelemetryConfig,
        node_id: str,
        address: str,
        status: Callable[[], NodeStatus],
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._config = config
        self._tls = tls_context
        self._node_id = node_id
        self._address = address
        self._status = status
        self._prefix = config.topic_prefix
        # (topic suffix, payload); the oldest are dropped while the broker is away too long
        self._events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=_MAX_EVENTS)
        self._wake = asyncio.Event()
        self._previous: dict[str, LinkStatus] = {}
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.connections = 0

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/node/{self._node_id}/status"

    def start(self) -> None:
        self.event("node_started", address=self._address)
        self._task = asyncio.create_task(self._run(), name="telemetry")

    def event(self, kind: str, **fields: Any) -> None:
        """Queue an event (the oldest are dropped while the broker is away too long)."""
        self._events.append(
            (
                f"node/{self._node_id}/events",
                {"schema": SCHEMA_VERSION, "node": self._node_id, "event": kind, "ts": time.time()}
                | fields,
            )
        )
        self._wake.set()

    def relay_event(self, kind: str, fields: dict[str, Any]) -> None:
        """Queue a key-delivery event for `<prefix>/relay/events/<id>`; it goes out with the next
        report (these can come by the thousand per second, so they do not wake the loop)."""
        self._events.append(
            (
                f"relay/events/{self._node_id}",
                {"schema": SCHEMA_VERSION, "node": self._node_id, "event": kind, "ts": time.time()}
                | fields,
            )
        )

    async def close(self, timeout: float = 2.0) -> None:
        """Publish queued events and the "stopped" state (when connected), then stop."""
        self.event("node_stopping")
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        if self.connected:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _node(self, state: str) -> dict[str, Any]:
        return node_payload(self._status(), state, self._address)

    async def _run(self) -> None:
        host, port = parse_address(self._config.broker)
        will = aiomqtt.Will(
            self.status_topic,
            json.dumps({"schema": SCHEMA_VERSION, "node": self._node_id, "state": "lost"}),
            qos=1,
            retain=True,
        )
        outage_logged = False
        while not self._closing:
            try:
                async with aiomqtt.Client(
                    host.strip("[]"),
                    port,
                    # Unguessable: a client that took it would push this node off the broker.
                    identifier=f"{self._prefix}-{self._node_id}-{secrets.token_hex(6)}".replace(
                        "/", "-"
                    ),
                    will=will,
                    keepalive=max(5, int(self._config.interval_s * 5)),
                    timeout=5.0,
                    tls_context=self._tls,
                ) as client:
                    self._client, self.connected = client, True
                    self.connections += 1
                    outage_logged = False
                    log_event(
                        logger, logging.INFO, "telemetry_connected", broker=self._config.broker
                    )
                    await self._publish_loop(client)
                    return
            except aiomqtt.MqttError as exc:
                if not outage_logged:
                    log_event(
                        logger,
                        logging.WARNING,
                        "telemetry_unavailable",
                        broker=self._config.broker,
                        error=str(exc),
                    )
                    outage_logged = True
            finally:
                self._client, self.connected = None, False
            await asyncio.sleep(_RETRY_SECONDS)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        """Report every interval (and on events) until closing; then say "stopped"."""
        while True:
            if self._closing:
                await self._flush_events(client)
                await self._publish(client, self.status_topic, self._node("stopped"), True)
                return
            status = self._status()
            await self._publish(
                client, self.status_topic, node_payload(status, "up", self._address), True
            )
            for link in status.links:
                self._note_changes(link)
                for suffix, payload in link_payloads(self._node_id, link).items():
                    topic = f"{self._prefix}/link/{link.link_id}/{suffix}"
                    await self._publish(client, topic, payload, True)
            await self._flush_events(client)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.interval_s):
                    await self._wake.wait()

    async def _flush_events(self, client: aiomqtt.Client) -> None:
        while self._events:
            suffix, payload = self._events[0]
            await self._publish(client, f"{self._prefix}/{suffix}", payload, False)
            self._events.popleft()

    def _note_changes(self, link: LinkStatus) -> None:
        """Events for what changed on a link since the last report."""
        before = self._previous.get(link.link_id)
        self._previous[link.link_id] = link
        if before is None:
            return
        if link.state != before.state:
            self.event("link_state", link=link.link_id, **{"from": before.state, "to": link.state})
        for kind, now, then in (
            ("frames_aborted", link.aborts_by_reason, before.aborts_by_reason),
            ("messages_rejected", link.rejected_messages, before.rejected_messages),
        ):
            delta = {k: v - then.get(k, 0) for k, v in now.items() if v > then.get(k, 0)}
            if delta:
                self.event(kind, link=link.link_id, reasons=delta)

    @staticmethod
    async def _publish(
        client: aiomqtt.Client, topic: str, payload: dict[str, Any], retain: bool
    ) -> None:
        await client.publish(topic, json.dumps(payload), qos=0, retain=retain)
