"""Virtual links an SDN controller creates at a node (ETSI GS QKD 015, `qkd_link` of type VIRT):
a key association from this node to a remote node over a path of trusted nodes.

Creating one fixes the path (through the next hop the controller names, or the least-cost one),
reserves `virt_bandwidth` on each of its hops in the node's `RateBook` (so that ETSI 004 streams
opened here cannot take that rate), and pins the path in the node's router: relays from this
node to the remote node follow it while every hop is usable (and the least-cost route
otherwise). Deleting it releases both. Virtual links live in the node's memory: a restarted
node has none until the controller creates them again, as a 015 controller does after it
finds the node's links gone.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .rate_book import RateBook
from .routing import Router

__all__ = ["VirtualLink", "VirtualLinkRefused", "VirtualLinks"]

_LIFETIME_S = 3600.0  # stored key counts as spread over this long for a link's reservation


class VirtualLinkRefused(ValueError):
    """A virtual link that cannot be made (the message says what and why)."""


@dataclass(frozen=True)
class VirtualLink:
    qkdl_id: uuid.UUID
    remote: str  # node ID
    path: tuple[str, ...]  # from this node to the remote node
    bandwidth_bps: int
    created: str  # RFC 3339

    @property
    def hops(self) -> tuple[tuple[str, str], ...]:
        return tuple(zip(self.path, self.path[1:], strict=False))


class VirtualLinks:
    """The virtual links of one node."""

    def __init__(self, node_id: str, router: Router, book: RateBook) -> None:
        self.node_id = node_id
        self._router = router
        self._book = book
        self._links: dict[uuid.UUID, VirtualLink] = {}

    def __iter__(self) -> Iterator[VirtualLink]:
        return iter(sorted(self._links.values(), key=lambda link: str(link.qkdl_id)))

    def get(self, qkdl_id: uuid.UUID) -> VirtualLink | None:
        return self._links.get(qkdl_id)

    def create(
        self,
        qkdl_id: uuid.UUID,
        remote: str,
        *,
        next_hop: str | None = None,
        bandwidth_bps: int = 0,
    ) -> VirtualLink:
        """A virtual link to `remote` (through `next_hop` when given)."""
        if qkdl_id in self._links:
            raise VirtualLinkRefused(f"qkdl_id {qkdl_id} exists already")
        if remote == self.node_id:
            raise VirtualLinkRefused("qkdl_remote is this node")
        if any(link.remote == remote for link in self._links.values()):
            raise VirtualLinkRefused(f"a virtual link to {remote} exists already")
        if next_hop is None:
            path = self._router.route(remote)
        elif next_hop == remote:
            path = [self.node_id, remote]
        else:
            rest = self._router.route(remote, start=next_hop, avoid_nodes=[self.node_id])
            path = [self.node_id, *rest] if rest is not None else None
        if (
            path is None
            or len(path) < 2
            or any(not self._router.link(a, b)[0] for a, b in itertools.pairwise(path))
        ):
            via = f" through {next_hop}" if next_hop else ""
            raise VirtualLinkRefused(f"no usable path from {self.node_id} to {remote}{via}")
        hops = tuple(itertools.pairwise(path))
        left = self._book.left(hops, _LIFETIME_S)
        if bandwidth_bps > left:
            raise VirtualLinkRefused(
                f"virt_bandwidth {bandwidth_bps} bit/s: the path {' → '.join(path)} has "
                f"{left} bit/s left"
            )
        created = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        link = VirtualLink(qkdl_id, remote, tuple(path), bandwidth_bps, created)
        self._book.reserve(hops, bandwidth_bps)
        self._router.pin(remote, list(path))
        self._links[qkdl_id] = link
        return link

    def delete(self, qkdl_id: uuid.UUID) -> bool:
        """Remove a virtual link; False when there is none."""
        link = self._links.pop(qkdl_id, None)
        if link is None:
            return False
        self._book.reserve(link.hops, -link.bandwidth_bps)
        self._router.unpin(link.remote)
        return True
