"""The relay over gRPC: the node's `RelayPeers` (`PeerChannels`) and its KeyRelay service.

`PeerChannels` carries a relay's calls to other nodes over mutual-TLS gRPC (`grpc_dial.dial`);
`RelayService` answers them, naming the caller by its node certificate, and turns a
`RelayError` into an ABORTED status whose details are "reason: message".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from qkdnet.v1 import relay_pb2, relay_pb2_grpc

from ..errors import RelayError
from ..protocol.relay import HOP_TIMEOUT_S, KeyRelay
from ..store.delivered_keys import NotTheOrigin
from .grpc_authorization import peer_name
from .grpc_dial import dial

__all__ = ["PeerChannels", "RelayService"]

_ADVERT_TIMEOUT_S = 2.0


class PeerChannels:
    """`RelayPeers` over gRPC: lazily opened mutual-TLS channels to other nodes (by node ID);
    each channel gets the client interceptors `interceptors(node)` gives (none by default).

    A peer's refusal comes back as a gRPC status whose details are "reason: message" (as
    `RelayService` aborts); it is raised as a RelayError with that reason. No answer (the peer
    is down, cut or too slow) is reason `unreachable`."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        credentials: grpc.ChannelCredentials,
        interceptors: Callable[[str], Sequence[grpc.aio.ClientInterceptor]] | None = None,
    ) -> None:
        self._addresses = dict(addresses)
        self._credentials = credentials
        self._interceptors = interceptors
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, node: str) -> relay_pb2_grpc.KeyRelayAsyncStub:
        channel = self._channels.get(node)
        if channel is None:
            address = self._addresses.get(node)
            if address is None:
                raise RelayError(f"no address known for node {node}", reason="unknown_route")
            interceptors = list(self._interceptors(node)) if self._interceptors else None
            channel = dial(address, node, self._credentials, interceptors=interceptors)
            self._channels[node] = channel
        return relay_pb2_grpc.KeyRelayStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def relay(self, node: str, frame: relay_pb2.RelayFrame) -> relay_pb2.RelayAck:
        try:
            ack: relay_pb2.RelayAck = await self.stub(node).Relay(frame, timeout=HOP_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _relay_error(node, exc, "relay_failed") from None
        return ack

    async def settle(self, node: str, request: relay_pb2.SettleRequest) -> int:
        return await self._keys_call(node, "Settle", request)

    async def void(self, node: str, request: relay_pb2.VoidRequest) -> int:
        return await self._keys_call(node, "Void", request)

    async def _keys_call(self, node: str, method: str, request: Any) -> int:
        """Call `method` of `node`'s KeyRelay; the key count of its reply."""
        try:
            reply = await getattr(self.stub(node), method)(request, timeout=HOP_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise RelayError(exc.details() or str(exc.code()), reason="peer_failed") from None
        return int(reply.keys)

    async def advertise(self, node: str, advert: relay_pb2.LinkStateAdvert) -> None:
        try:
            await self.stub(node).Advertise(advert, timeout=_ADVERT_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _relay_error(node, exc, "advert_failed") from None


def _relay_error(node: str, exc: grpc.aio.AioRpcError, default: str) -> RelayError:
    """The RelayError a failed call to `node` stands for."""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RelayError(f"{node} did not answer", reason="unreachable")
    reason, _, message = (exc.details() or "").partition(": ")
    return RelayError(message or str(exc.code()), reason=reason or default)


class RelayService(relay_pb2_grpc.KeyRelayServicer):
    """The KeyRelay gRPC service; the caller is identified by its node certificate."""

    def __init__(self, relay: KeyRelay, on_advert: Any) -> None:
        self._relay = relay
        self._on_advert = on_advert

    async def Relay(
        self, request: relay_pb2.RelayFrame, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.RelayAck:
        try:
            return await self._relay.receive(request, peer_name(context))
        except RelayError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"{exc.reason}: {exc}")
            raise

    async def Settle(
        self, request: relay_pb2.SettleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.SettleReply:
        try:
            keys = await self._relay.settle_here(
                request.transaction_id, peer_name(context), request.commit
            )
        except NotTheOrigin as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise
        return relay_pb2.SettleReply(keys=keys)

    async def Void(
        self, request: relay_pb2.VoidRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.VoidReply:
        try:
            keys = await self._relay.void_here(peer_name(context), request)
        except RelayError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{exc.reason}: {exc}")
            raise
        return relay_pb2.VoidReply(keys=keys)

    async def Advertise(
        self, request: relay_pb2.LinkStateAdvert, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.AdvertAck:
        await self._on_advert(request, peer_name(context))
        return relay_pb2.AdvertAck()
