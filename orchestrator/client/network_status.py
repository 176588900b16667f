"""The live state of a deployed network, asked from the nodes themselves over NodeControl."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from dataclasses import dataclass, field

import grpc

from qkdnet.node.link_names import link_id_for
from qkdnet.v1 import control_pb2

from ..plan.network_plan import NetworkPlan
from .controller import LinkComparison, NodeClient, compare_link_stores

__all__ = ["LinkView", "NetworkSnapshot", "NetworkStatus"]

_CONCURRENT_CALLS = 16


@dataclass(frozen=True)
class LinkView:
    """One link as its two ends report it (None for an end that did not answer)."""

    link_id: str
    transmitter: str
    receiver: str
    length_km: float
    tx: control_pb2.LinkStatus | None
    rx: control_pb2.LinkStatus | None

    @property
    def has_key(self) -> bool:
        """Whether both ends have stored distilled key."""
        return bool(self.tx and self.rx and self.tx.last_frame >= 0 and self.rx.last_frame >= 0)


@dataclass(frozen=True)
class NetworkSnapshot:
    """Every node's answer (None when it did not answer) and every link."""

    nodes: dict[str, control_pb2.NodeStatus | None]
    links: list[LinkView] = field(default_factory=list)

    @property
    def every_link_has_key(self) -> bool:
        return all(link.has_key for link in self.links)


class NetworkStatus:
    """NodeControl clients for every node of a deployment; use as an async context manager."""

    def __init__(self, plan: NetworkPlan) -> None:
        self.plan = plan
        self.clients: dict[str, NodeClient] = {}

    async def __aenter__(self) -> NetworkStatus:
        credentials = self.plan.controller_credentials
        for node_id, node in self.plan.nodes.items():
            self.clients[node_id] = NodeClient(node_id, node.address, credentials)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self.clients.values():
            await client.close()

    async def _status(
        self, node_id: str, timeout: float, slots: asyncio.Semaphore
    ) -> control_pb2.NodeStatus | None:
        async with slots:  # the timeout counts from the call, not from the queue
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                return await self.clients[node_id].status(timeout)
        return None

    async def snapshot(
        self, timeout: float = 5.0, only: Collection[str] | None = None
    ) -> NetworkSnapshot:
        """Ask every node (or the nodes in `only`: those known to run), `_CONCURRENT_CALLS`
        at a time, so that a large network on a loaded machine is not read as unreachable
        because its calls queued behind each other."""
        slots = asyncio.Semaphore(_CONCURRENT_CALLS)
        asked = [n for n in self.clients if only is None or n in only]
        answers = await asyncio.gather(*(self._status(n, timeout, slots) for n in asked))
        nodes: dict[str, control_pb2.NodeStatus | None] = dict.fromkeys(self.clients)
        nodes.update(zip(asked, answers, strict=True))
        links = []
        for link in self.plan.links:
            a, b = sorted(link.endpoints)
            link_id = link_id_for(a, b)
            ends: dict[str, control_pb2.LinkStatus | None] = {}
            for end in (a, b):
                status = nodes.get(end)
                ends[end] = (
                    next((s for s in status.links if s.link_id == link_id), None)
                    if status
                    else None
                )
            links.append(LinkView(link_id, a, b, link.length_km, ends[a], ends[b]))
        return NetworkSnapshot(nodes, links)

    async def compare_stores(self, link: LinkView) -> LinkComparison:
        """Both ends' stores of a link compared through keyed digests."""
        return await compare_link_stores(
            self.clients[link.transmitter], self.clients[link.receiver], link.link_id
        )
