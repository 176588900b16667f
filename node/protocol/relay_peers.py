"""The port through which a node's relay reaches other nodes' relays.

`KeyRelay` (relay.py) sends a frame to the next hop, settles or voids a transaction at its
target and floods link-state adverts through a `RelayPeers`; every failure, a refusal by the
peer as much as a peer that does not answer, arrives as a `RelayError` whose `reason` says
which (`unreachable` for no answer). The node's `RelayPeers` is
`qkdnet.node.edge.relay_grpc.PeerChannels`
(mutual-TLS gRPC); tests join relays in memory (`qkdnet.node.testing.InMemoryRelayNetwork`).
"""

from __future__ import annotations

from typing import Protocol

from .relay_messages import LinkStateAdvert, RelayAck, RelayFrame

__all__ = ["RelayPeers"]


class RelayPeers(Protocol):
    """Calls to the relay of another node, by node ID."""

    async def relay(self, node: str, frame: RelayFrame) -> RelayAck:
        """Hand `frame` to neighbour `node`; its ack once the rest of the route has stored it."""
        ...

    async def settle(self, node: str, transaction_id: str, commit: bool) -> int:
        """Commit or discard a transaction at its target `node`; the keys it settled."""
        ...

    async def void(self, node: str, key_uuids: bytes, reason: str) -> int:
        """Withdraw keys this node relayed to `node` (their 16-byte UUIDs, concatenated); how
        many were there."""
        ...

    async def advertise(self, node: str, advert: LinkStateAdvert) -> None:
        """Pass a link-state advert to neighbour `node`."""
        ...

    async def close(self) -> None:
        """Let go of every connection."""
        ...
