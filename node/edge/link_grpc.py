"""A link session over gRPC: the transmitter's `LinkConnector` and the receiver's streams.

The transmitter dials the receiver with mutual TLS (`grpc_dial.dial`), waits up to 10 s for
the connection, and opens the two streams of the `QuantumChannel` and `ClassicalChannel`
services; the receiver's side of them is `LinkService`, which hands them to its
`SessionReceiver`. Messages cross as protobuf (`link_codec`); what stands between the two ends in
the node — shaping (`channel_shaping.ShapedStream`) and tampering
(`classical_faults.TamperingStream`) — is wrapped around the classical stream here, by
`classical_session`, so the link sees only domain messages and `LinkError`s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc

from qkdnet.v1 import link_pb2, link_pb2_grpc

from ..errors import LinkError
from ..protocol.link import LinkEnd, SessionReceiver
from ..protocol.link_messages import Envelope, PhotonChunk
from ..protocol.link_transport import Duplex, PhotonSink
from .channel_shaping import ChannelShaping, Flow, ShapedStream
from .grpc_authorization import peer_name
from .grpc_dial import dial
from .grpc_errors import abort_with
from .link_codec import (
    envelope_from_wire,
    envelope_to_wire,
    photons_from_wire,
    photons_to_wire,
)

__all__ = [
    "GrpcLinkConnector",
    "GrpcStream",
    "LinkService",
    "classical_session",
    "photons_arriving",
]


def _link_error(exc: grpc.aio.AioRpcError) -> LinkError:
    return LinkError(f"{exc.code().name}: {exc.details()}", reason="transport")


class GrpcStream:
    """A gRPC stream-stream call, or a server's context, as a `Duplex` of domain envelopes:
    EOF reads as None, a failed call raises LinkError. `call` is the client's call, whose end
    `wait_closed` awaits (a server's stream never reports it: the client's end does)."""

    def __init__(self, stream: Any, call: Any = None) -> None:
        self._stream = stream
        self._call = call

    async def wait_closed(self) -> None:
        if self._call is None:
            await asyncio.Event().wait()
        await self._call.code()  # returns once the call has ended, however it ended

    async def read(self) -> Envelope | None:
        try:
            message = await self._stream.read()
        except grpc.aio.AioRpcError as exc:
            raise _link_error(exc) from None
        if message is grpc.aio.EOF or message is None:
            return None
        return envelope_from_wire(message)

    async def write(self, message: Envelope) -> None:
        try:
            await self._stream.write(envelope_to_wire(message))
        except grpc.aio.AioRpcError as exc:
            raise _link_error(exc) from None


class _PhotonStream:
    """A `PhotonSink` over the client stream of `QuantumChannel.Transmit`."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, message: PhotonChunk) -> None:
        try:
            await self._call.write(photons_to_wire(message))
        except grpc.aio.AioRpcError as exc:
            raise _link_error(exc) from None


async def photons_arriving(
    chunks: AsyncIterator[link_pb2.PhotonChunk],
) -> AsyncIterator[PhotonChunk]:
    """The receiver's side of `Transmit`: the request stream as domain chunks."""
    async for chunk in chunks:
        yield photons_from_wire(chunk)


@asynccontextmanager
async def classical_session(
    stream: Any,
    *,
    peer: str,
    shaping: ChannelShaping | None = None,
    call: Any = None,
) -> AsyncIterator[Duplex]:
    """The classical `stream` (a call or a server context) as the link's `Duplex`, with the
    node's shaping toward `peer` around it, for one session; `call` is the client's call."""
    shaped = ShapedStream(stream, shaping, peer, Flow()) if shaping is not None else None
    duplex: Duplex = GrpcStream(shaped if shaped is not None else stream, call)
    try:
        yield duplex
    finally:
        if shaped is not None:
            shaped.close()


class GrpcLinkConnector:
    """Connects a transmitter to the receiver `peer` at `address` (host:port)."""

    def __init__(
        self,
        address: str,
        peer: str,
        credentials: grpc.ChannelCredentials,
        *,
        shaping: ChannelShaping | None = None,
    ) -> None:
        self.address = address
        self.peer = peer
        self._credentials = credentials
        self._shaping = shaping

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[tuple[Duplex, PhotonSink]]:
        async with dial(self.address, self.peer, self._credentials) as channel:
            try:
                async with asyncio.timeout(10):  # not wait_for: see Conversation.receive
                    await channel.channel_ready()
            except TimeoutError:
                raise LinkError(
                    f"{self.peer} at {self.address} did not answer", reason="unreachable"
                ) from None
            classical = link_pb2_grpc.ClassicalChannelStub(channel).Session()
            photons = link_pb2_grpc.QuantumChannelStub(channel).Transmit()
            try:
                async with classical_session(
                    classical, peer=self.peer, shaping=self._shaping, call=classical
                ) as duplex:
                    yield duplex, _PhotonStream(photons)
            finally:
                classical.cancel()
                photons.cancel()


class LinkService(link_pb2_grpc.QuantumChannelServicer, link_pb2_grpc.ClassicalChannelServicer):
    """QuantumChannel and ClassicalChannel: the receiving end of each link, which only the
    link's configured peer may call. `links` are the node's link ends by peer; the classical
    stream toward a peer is shaped as `shaping` says."""

    def __init__(self, links: Mapping[str, LinkEnd], shaping: ChannelShaping) -> None:
        self._links = links
        self._shaping = shaping

    async def _receiver(self, context: grpc.aio.ServicerContext[Any, Any]) -> SessionReceiver:
        peer = peer_name(context)
        link = self._links.get(peer)
        if not isinstance(link, SessionReceiver):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"no link from {peer!r}")
            raise AssertionError("unreachable")
        return link

    async def Transmit(
        self,
        request_iterator: AsyncIterator[link_pb2.PhotonChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> link_pb2.TransmitSummary:
        link = await self._receiver(context)
        try:
            frames = await link.receive_photons(photons_arriving(request_iterator))
        except LinkError as exc:
            await abort_with(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
            raise
        return link_pb2.TransmitSummary(frames=frames)

    async def Session(  # type: ignore[override]  # reads and writes through the context
        self,
        request_iterator: AsyncIterator[link_pb2.Envelope],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        link = await self._receiver(context)
        try:
            async with classical_session(
                context,
                peer=link.peer,
                shaping=self._shaping,
            ) as stream:
                await link.serve(stream)
        except LinkError as exc:
            await abort_with(context, grpc.StatusCode.ABORTED, exc)
