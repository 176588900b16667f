"""The orchestrator's side of telemetry: subscribe to a deployment's topics, keep the latest.

`TelemetryWatch` keeps the newest payload of every retained topic of the tree documented in
`qkdnet.node.telemetry` (node status, link stats, link store levels) and the recent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from qkdnet.node.config import parse_address

__all__ = ["TelemetryState", "TelemetryWatch"]


@dataclass
class TelemetryState:
    """The newest payload per node, link and link end."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    stores: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    relay_events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    messages: int = 0

    def apply(self, prefix: str, topic: str, payload: bytes) -> None:
        """Take one message of the tree under `prefix`; anything else is ignored."""
        parts = topic.removeprefix(prefix + "/").split("/")
        try:
            data = json.loads(payload) if payload else None
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        self.messages += 1
        match parts:
            case ["node", node, "status"]:
                self.nodes[node] = data
            case ["node", _node, "events"]:
                self.events.append(data)
            case ["relay", "events"]:
                self.relay_events.append(data)
            case ["link", link, "stats"]:
                self.links[link] = data
            case ["link", link, "store", node]:
                self.stores[(link, node)] = data


class TelemetryWatch:
    """Subscribes to `<prefix>/#` on a broker (host:port) and keeps a `TelemetryState`."""

    def __init__(self, broker: str, prefix: str) -> None:
        self.broker = broker
        self.prefix = prefix
        self.state = TelemetryState()

    async def updates(self, reconnect: bool = True) -> AsyncIterator[TelemetryState]:
        """Yield the state after every message; reconnects (every second) if the broker goes."""
        host, port = parse_address(self.broker)
        while True:
            try:
                async with aiomqtt.Client(host, port, timeout=5.0) as client:
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
