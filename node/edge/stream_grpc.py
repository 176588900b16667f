"""The two KMEs of an ETSI GS QKD 004 stream over gRPC: `GrpcStreamPeers` and its service.

`GrpcStreamPeers` is the node's `StreamPeers` (`protocol/key_stream_messages.py`): it calls the
KeyStreamSync service of another node over the relay's mutual-TLS channels (so a cut link or a
shaped peer affects it as it does the relay). `StreamSyncService` answers those calls, naming
the caller by its node certificate; a refusal crosses as a typed error detail.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from qkdnet.v1 import relay_pb2, relay_pb2_grpc

from ..errors import Reason, RelayError
from ..protocol.key_stream_messages import StreamAnnouncement, StreamQos
from ..protocol.key_streams import KeyStreams
from .grpc_authorization import peer_name
from .grpc_errors import abort_with
from .relay_grpc import PeerChannels, relay_error

__all__ = ["GrpcStreamPeers", "StreamSyncService"]

_CALL_TIMEOUT_S = 5.0
Context = grpc.aio.ServicerContext[Any, Any]


def _qos_to_wire(qos: StreamQos) -> relay_pb2.StreamQos:
    return relay_pb2.StreamQos(
        key_chunk_size=qos.key_chunk_size,
        max_bps=qos.max_bps,
        min_bps=qos.min_bps,
        jitter=qos.jitter,
        priority=qos.priority,
        timeout=qos.timeout,
        ttl=qos.ttl,
        metadata_mimetype=qos.metadata_mimetype,
    )


def _qos_from_wire(wire: relay_pb2.StreamQos) -> StreamQos:
    return StreamQos(
        key_chunk_size=wire.key_chunk_size,
        max_bps=wire.max_bps,
        min_bps=wire.min_bps,
        jitter=wire.jitter,
        priority=wire.priority,
        timeout=wire.timeout,
        ttl=wire.ttl,
        metadata_mimetype=wire.metadata_mimetype,
    )


def _announcement_to_wire(announcement: StreamAnnouncement) -> relay_pb2.StreamAnnouncement:
    return relay_pb2.StreamAnnouncement(
        ksid=announcement.ksid.bytes,
        origin=announcement.origin,
        source=announcement.source,
        destination=announcement.destination,
        qos=_qos_to_wire(announcement.qos),
        hops=announcement.hops,
    )


def _announcement_from_wire(request: relay_pb2.StreamAnnouncement) -> StreamAnnouncement:
    return StreamAnnouncement(
        ksid=_ksid(request.ksid),
        origin=request.origin,
        source=request.source,
        destination=request.destination,
        qos=_qos_from_wire(request.qos),
        hops=request.hops,
    )


def _ksid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise RelayError("a KSID is 16 bytes", reason="malformed")
    return uuid.UUID(bytes=data)


class GrpcStreamPeers:
    """`StreamPeers` over the relay's gRPC channels."""

    def __init__(self, channels: PeerChannels) -> None:
        self._channels = channels

    def _stub(self, node: str) -> relay_pb2_grpc.KeyStreamSyncAsyncStub:
        return relay_pb2_grpc.KeyStreamSyncStub(self._channels.channel(node))

    async def _call(self, node: str, method: str, request: Any) -> None:
        try:
            await getattr(self._stub(node), method)(request, timeout=_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise relay_error(node, exc, Reason.PEER_FAILED) from None

    async def announce(self, node: str, announcement: StreamAnnouncement) -> None:
        await self._call(node, "Announce", _announcement_to_wire(announcement))

    async def requalified(self, node: str, announcement: StreamAnnouncement) -> None:
        await self._call(node, "Requalified", _announcement_to_wire(announcement))

    async def connected(self, node: str, ksid: uuid.UUID) -> None:
        await self._call(node, "Connected", relay_pb2.StreamEvent(ksid=ksid.bytes))

    async def progress(self, node: str, ksid: uuid.UUID, chunks: int) -> None:
        await self._call(node, "Progress", relay_pb2.StreamEvent(ksid=ksid.bytes, chunks=chunks))

    async def closed(self, node: str, ksid: uuid.UUID, reason: str) -> None:
        await self._call(node, "Closed", relay_pb2.StreamEvent(ksid=ksid.bytes, reason=reason))


class StreamSyncService(relay_pb2_grpc.KeyStreamSyncServicer):
    """The KeyStreamSync gRPC service in front of a node's `KeyStreams`."""

    def __init__(self, streams: KeyStreams | None = None) -> None:
        # Set once the node's key manager runs (the gRPC server starts before it).
        self.streams = streams

    @property
    def _streams(self) -> KeyStreams:
        if self.streams is None:
            raise RelayError("this node serves no key streams", reason="unknown_stream")
        return self.streams

    async def _refuse(self, context: Context, exc: RelayError) -> None:
        code = (
            grpc.StatusCode.ALREADY_EXISTS
            if exc.reason is Reason.KSID_IN_USE
            else grpc.StatusCode.FAILED_PRECONDITION
        )
        await abort_with(context, code, exc)

    async def _answer(
        self, context: Context, call: Callable[[], Awaitable[None] | None]
    ) -> relay_pb2.StreamAck:
        """Run `call` (with the caller named by its certificate); a refusal crosses as a typed
        error detail."""
        try:
            pending = call()
            if pending is not None:
                await pending
        except RelayError as exc:
            await self._refuse(context, exc)
            raise
        return relay_pb2.StreamAck()

    async def Announce(
        self, request: relay_pb2.StreamAnnouncement, context: Context
    ) -> relay_pb2.StreamAck:
        sender = peer_name(context)
        return await self._answer(
            context, lambda: self._streams.announced(_announcement_from_wire(request), sender)
        )

    async def Requalified(
        self, request: relay_pb2.StreamAnnouncement, context: Context
    ) -> relay_pb2.StreamAck:
        sender = peer_name(context)
        return await self._answer(
            context, lambda: self._streams.requalified(_announcement_from_wire(request), sender)
        )

    async def Connected(
        self, request: relay_pb2.StreamEvent, context: Context
    ) -> relay_pb2.StreamAck:
        sender = peer_name(context)
        return await self._answer(
            context, lambda: self._streams.peer_connected(_ksid(request.ksid), sender)
        )

    async def Progress(
        self, request: relay_pb2.StreamEvent, context: Context
    ) -> relay_pb2.StreamAck:
        sender = peer_name(context)
        return await self._answer(
            context,
            lambda: self._streams.progress(_ksid(request.ksid), int(request.chunks), sender),
        )

    async def Closed(self, request: relay_pb2.StreamEvent, context: Context) -> relay_pb2.StreamAck:
        sender = peer_name(context)
        return await self._answer(
            context,
            lambda: self._streams.peer_closed(_ksid(request.ksid), request.reason[:32], sender),
        )
