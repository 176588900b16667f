"""The relay over gRPC: the node's `RelayPeers` (`PeerChannels`) and its KeyRelay service.

`PeerChannels` carries a relay's calls to other nodes over mutual-TLS gRPC (`grpc_dial.dial`);
`RelayService` answers them, naming the caller by its node certificate. Messages cross as
protobuf (`relay_codec`); a refusal crosses as a typed error detail (`grpc_errors`), from which
the caller raises a `RelayError` with the same reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc

from qkdnet.v1 import relay_pb2, relay_pb2_grpc

from ..errors import Reason, RelayError
from ..protocol.relay import HOP_TIMEOUT_S, KeyRelay
from ..protocol.relay_messages import LinkStateAdvert, RelayAck, RelayFrame
from ..store.delivered_keys import NotTheOrigin
from .grpc_authorization import peer_name
from .grpc_dial import dial
from .grpc_errors import abort_with, error_info
from .relay_codec import (
    ack_from_wire,
    ack_to_wire,
    advert_from_wire,
    advert_to_wire,
    frame_from_wire,
    frame_to_wire,
)

__all__ = ["PeerChannels", "RelayService", "relay_error"]

_ADVERT_TIMEOUT_S = 2.0


class PeerChannels:
    """`RelayPeers` over gRPC: lazily opened mutual-TLS channels to other nodes (by node ID);
    each channel gets the client interceptors `interceptors(node)` gives (none by default).

    A peer's refusal comes back with a typed error detail; it is raised as a RelayError with
    that reason. No answer (the peer is down, cut or too slow) is reason `unreachable`."""

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

    def channel(self, node: str) -> grpc.aio.Channel:
        """The channel to `node`, opened on first use (RelayError for an unknown node)."""
        channel = self._channels.get(node)
        if channel is None:
            address = self._addresses.get(node)
            if address is None:
                raise RelayError(f"no address known for node {node}", reason="unknown_route")
            interceptors = list(self._interceptors(node)) if self._interceptors else None
            channel = dial(address, node, self._credentials, interceptors=interceptors)
            self._channels[node] = channel
        return channel

    def stub(self, node: str) -> relay_pb2_grpc.KeyRelayAsyncStub:
        return relay_pb2_grpc.KeyRelayStub(self.channel(node))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def relay(self, node: str, frame: RelayFrame) -> RelayAck:
        try:
            ack: relay_pb2.RelayAck = await self.stub(node).Relay(
                frame_to_wire(frame), timeout=HOP_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise relay_error(node, exc, Reason.RELAY_FAILED) from None
        return ack_from_wire(ack)

    async def settle(self, node: str, transaction_id: str, commit: bool) -> int:
        request = relay_pb2.SettleRequest(transaction_id=transaction_id, commit=commit)
        return await self._keys_call(node, self.stub(node).Settle(request, timeout=HOP_TIMEOUT_S))

    async def void(self, node: str, key_uuids: bytes, reason: str) -> int:
        request = relay_pb2.VoidRequest(key_uuids=key_uuids, reason=reason)
        return await self._keys_call(node, self.stub(node).Void(request, timeout=HOP_TIMEOUT_S))

    async def _keys_call(self, node: str, call: Awaitable[Any]) -> int:
        """The key count of a Settle or Void reply; a failure is the peer's (`peer_failed`)."""
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            raise RelayError(exc.details() or str(exc.code()), reason="peer_failed") from None
        return int(reply.keys)

    async def advertise(self, node: str, advert: LinkStateAdvert) -> None:
        try:
            await self.stub(node).Advertise(advert_to_wire(advert), timeout=_ADVERT_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise relay_error(node, exc, Reason.ADVERT_FAILED) from None


def relay_error(node: str, exc: grpc.aio.AioRpcError, default: Reason) -> RelayError:
    """The RelayError a failed call to `node` stands for."""
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return RelayError(f"{node} did not answer", reason="unreachable")
    info = error_info(exc)
    if info is None:
        return RelayError(exc.details() or str(exc.code()), reason=default)
    return RelayError(exc.details() or str(exc.code()), reason=Reason.of(info.reason, default))


class RelayService(relay_pb2_grpc.KeyRelayServicer):
    """The KeyRelay gRPC service; the caller is identified by its node certificate."""

    def __init__(
        self, relay: KeyRelay, on_advert: Callable[[LinkStateAdvert, str], Awaitable[None]]
    ) -> None:
        self._relay = relay
        self._on_advert = on_advert

    async def Relay(
        self, request: relay_pb2.RelayFrame, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.RelayAck:
        try:
            ack = await self._relay.receive(frame_from_wire(request), peer_name(context))
        except RelayError as exc:
            await abort_with(context, grpc.StatusCode.ABORTED, exc)
            raise
        return ack_to_wire(ack)

    async def Settle(
        self, request: relay_pb2.SettleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.SettleReply:
        try:
            keys = await self._relay.settle_here(
                request.transaction_id, peer_name(context), request.commit
            )
        except NotTheOrigin as exc:
            refusal = RelayError(str(exc), reason="not_the_origin")
            await abort_with(context, grpc.StatusCode.PERMISSION_DENIED, refusal)
            raise
        return relay_pb2.SettleReply(keys=keys)

    async def Void(
        self, request: relay_pb2.VoidRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.VoidReply:
        try:
            keys = await self._relay.void_here(
                peer_name(context), request.key_uuids, request.reason
            )
        except RelayError as exc:
            await abort_with(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
            raise
        return relay_pb2.VoidReply(keys=keys)

    async def Advertise(
        self, request: relay_pb2.LinkStateAdvert, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.AdvertAck:
        await self._on_advert(advert_from_wire(request), peer_name(context))
        return relay_pb2.AdvertAck()
