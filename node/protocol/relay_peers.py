"""The port through which a node's relay reaches other nodes' relays.

`KeyRelay` (relay.py) sends a frame to the next hop, settles or voids a transaction at its
target and floods link-state adverts through a `RelayPeers`; every failure, a refusal by the
peer as much as a peer that does not answer, arrives as a `RelayError` whose `reason` says
which (`unreachable` for no answer). The node's `RelayPeers` is `relay_grpc.PeerChannels`
(mutual-TLS gRPC); tests join relays in memory (`qkdnet.node.testing.InMemoryRelayNetwork`).
"""

from __future__ import annotations

from typing import Protocol

from qkdnet.v1 import relay_pb2

__all__ = ["RelayPeers"]


class RelayPeers(Protocol):
    """Calls to the relay of another node, by node ID."""

    async def relay(self, node: str, frame: relay_pb2.RelayFrame) -> relay_pb2.RelayAck:
        """Hand `frame` to neighbour `node`; its ack once the rest of the route has stored it."""
        ...

    async def settle(self, node: str, request: relay_pb2.SettleRequest) -> int:
        """Commit or discard a transaction at its target `node`; the keys it settled."""
        ...

    async def void(self, node: str, request: relay_pb2.VoidRequest) -> int:
        """Withdraw keys this node relayed to `node`; how many were there."""
        ...

    async def advertise(self, node: str, advert: relay_pb2.LinkStateAdvert) -> None:
        """Pass a link-state advert to neighbour `node`."""
        ...

    async def close(self) -> None:
        """Let go of every connection."""
        ...
