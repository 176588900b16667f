"""A node's live faults toward its peers, enforced in its gRPC channels: cut links, shaping.

The controller sets them through NodeControl (agent.py) on both ends of a link; each end then
keeps the cut on its own, so the link is cut both ways even while one end is not yet told:

* `PeerFaultInterceptor` (server side) refuses a cut peer's calls to QuantumChannel,
  ClassicalChannel and KeyRelay with UNAVAILABLE, and holds back this node's answers to a
  peer's unary calls as the shaping toward that peer says;
* `shaped_peer_channels` (client side) gives the relay and the link-state flooder channels whose
  calls to a cut peer fail at once with UNAVAILABLE (as an unreachable node's would) and whose
  requests are held back as the shaping says.

So relay hops, settle and void calls and link-state adverts never cross a cut link; the link
itself stops its session (`LinkEnd.set_cut`), its state turns "cut", its advertisements say it
is down, and routes go around it. The link's classical stream is shaped in link_grpc.py
(`ShapedStream`); the photon stream is not (see channel_shaping.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from .channel_shaping import ChannelShaping, Flow
from .grpc_authorization import guarded_handler, peer_name
from .relay_grpc import PeerChannels

__all__ = ["PEER_SERVICES", "PeerFaultInterceptor", "PeerFaults", "shaped_peer_channels"]

PEER_SERVICES = frozenset(
    {"qkdnet.v1.QuantumChannel", "qkdnet.v1.ClassicalChannel", "qkdnet.v1.KeyRelay"}
)
"""The services nodes call on each other: what a cut refuses."""

Context = grpc.aio.ServicerContext[Any, Any]

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler  # generic only in the type stubs


class PeerFaults:
    """The peers a node is cut off from and the shaping of what it sends them."""

    def __init__(self, node_id: str, shaping: ChannelShaping | None = None) -> None:
        self.node_id = node_id
        self.cut_peers: set[str] = set()
        self.shaping = shaping if shaping is not None else ChannelShaping()
        self._flows: dict[tuple[str, str], Flow] = {}

    def is_cut(self, peer: str) -> bool:
        return peer in self.cut_peers

    def cut_message(self, peer: str) -> str:
        return f"the link between {self.node_id} and {peer} is cut"

    def flow(self, kind: str, peer: str) -> Flow:
        """The ordered flow of this node's `kind` ("calls", "answers") to `peer`."""
        return self._flows.setdefault((kind, peer), Flow())


class PeerFaultInterceptor(grpc.aio.ServerInterceptor):
    """Refuses a cut peer's calls to the node-to-node services; shapes unary answers."""

    def __init__(self, faults: PeerFaults) -> None:
        self._faults = faults

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method = str(details.method)
        service = method.split("/")[1] if method.count("/") == 2 else method
        if handler is None or service not in PEER_SERVICES:
            return handler
        return _enforced(handler, self._faults)


def _enforced(handler: Handler, faults: PeerFaults) -> Handler:
    """`handler` refusing cut peers, and with its unary answers shaped."""

    async def refuse_cut(context: Context) -> None:
        peer = peer_name(context)
        if faults.is_cut(peer):
            await context.abort(grpc.StatusCode.UNAVAILABLE, faults.cut_message(peer))

    async def shape_answer(context: Context, answer: Any) -> None:
        peer = peer_name(context)
        await faults.shaping.hold(peer, int(answer.ByteSize()), faults.flow("answers", peer))

    return guarded_handler(handler, refuse_cut, unary_answer=shape_answer)


class _OutgoingCalls(grpc.aio.UnaryUnaryClientInterceptor):
    """Unary calls to one peer: refused while the link to it is cut, held back by shaping."""

    def __init__(self, faults: PeerFaults, peer: str) -> None:
        self._faults = faults
        self._peer = peer

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        if self._faults.is_cut(self._peer):
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details=self._faults.cut_message(self._peer),
            )
        flow = self._faults.flow("calls", self._peer)
        await self._faults.shaping.hold(self._peer, int(request.ByteSize()), flow)
        return await continuation(client_call_details, request)


def shaped_peer_channels(
    addresses: Mapping[str, str], credentials: grpc.ChannelCredentials, faults: PeerFaults
) -> PeerChannels:
    """`PeerChannels` whose calls to a peer honour the node's `PeerFaults` toward it."""
    return PeerChannels(
        addresses, credentials, interceptors=lambda peer: [_OutgoingCalls(faults, peer)]
    )
