"""Who may publish and read which telemetry topics: the broker's access list, from the plan.

Both brokers authenticate clients by their TLS client certificate, issued by the deployment's
PKI, and refuse every client without one. What an authenticated client may then do follows this
list, which names no more than it must (the topic tree is in `qkdnet.node.telemetry_schema`):

- a node publishes only its own topics: `<prefix>/node/<id>/status` (also its last will),
  `<prefix>/node/<id>/events`, `<prefix>/relay/events/<id>`, `<prefix>/link/<l>/store/<id>` for
  each of its links and `<prefix>/link/<l>/stats` for those it transmits on; it reads nothing;
- the controller (`orchestrator`: `qkdnet watch`, `inspect`, the demos) reads `<prefix>/#` and
  publishes nothing;
- any other certificate of the CA (an application's) may connect but do nothing.

The list is written as JSON for the embedded broker (`broker.py`) and as a Mosquitto `acl_file`
(the docker runtime and the Compose export; Mosquitto takes the certificate's common name as the
user name, and common names are unique in a deployment, see `qkdnet.node.identity`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qkdnet.node.identity import CONTROLLER_NAME, Role

__all__ = ["TelemetryAccess", "filter_covers", "topic_matches"]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` (no wildcards) matches an MQTT `topic_filter` (`+`, `#`)."""
    levels = topic.split("/")
    for index, part in enumerate(topic_filter.split("/")):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(topic_filter.split("/")) == len(levels)


def filter_covers(allowed: str, requested: str) -> bool:
    """Whether every topic the filter `requested` matches is matched by `allowed`."""
    want = requested.split("/")
    have = allowed.split("/")
    for index, part in enumerate(have):
        if part == "#":
            return True
        if index >= len(want) or want[index] == "#":
            return False
        if part != "+" and (want[index] == "+" or part != want[index]):
            return False
    return len(have) == len(want)


@dataclass(frozen=True)
class TelemetryAccess:
    """Topics each identity may publish (exact names) and topic filters it may read."""

    publish: dict[str, list[str]] = field(default_factory=dict)
    subscribe: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def for_network(
        cls, prefix: str, nodes: Iterable[str], links: Iterable[tuple[str, str]]
    ) -> TelemetryAccess:
        """The list of a deployment: its topic prefix, node IDs and links (node pairs; the
        links of its borders to other domains have one end that is not its node)."""
        publish: dict[str, list[str]] = {}
        for node in nodes:
            publish[node] = [
                f"{prefix}/node/{node}/status",
                f"{prefix}/node/{node}/events",
                f"{prefix}/relay/events/{node}",
            ]
        for a, b in links:
            transmitter, receiver = sorted((a, b))
            link_id = f"{transmitter}--{receiver}"
            if transmitter in publish:  # (a link across domains has one end here)
                publish[transmitter].append(f"{prefix}/link/{link_id}/stats")
            for end in (transmitter, receiver):
                if end in publish:
                    publish[end].append(f"{prefix}/link/{link_id}/store/{end}")
        return cls(publish=publish, subscribe={CONTROLLER_NAME: [f"{prefix}/#"]})

    def may_publish(self, role: Role, name: str, topic: str) -> bool:
        return role is Role.NODE and topic in self.publish.get(name, ())

    def may_subscribe(self, role: Role, name: str, topic_filter: str) -> bool:
        if role is not Role.CONTROLLER:
            return False
        return any(filter_covers(allowed, topic_filter) for allowed in self.subscribe.get(name, ()))

    def to_json(self) -> str:
        return json.dumps({"publish": self.publish, "subscribe": self.subscribe}, indent=1)

    @classmethod
    def load(cls, path: Path) -> TelemetryAccess:
        data = json.loads(path.read_text())
        return cls(publish=dict(data["publish"]), subscribe=dict(data["subscribe"]))

    def mosquitto_acl(self) -> str:
        """The list as a Mosquitto acl_file (user = certificate common name)."""
        lines = ["# Written by qkdnet: who may publish and read which topics"]
        for name, filters in sorted(self.subscribe.items()):
            lines += ["", f"user {name}", *(f"topic read {f}" for f in filters)]
        for name, topics in sorted(self.publish.items()):
            lines += ["", f"user {name}", *(f"topic write {t}" for t in topics)]
        return "\n".join(lines) + "\n"
