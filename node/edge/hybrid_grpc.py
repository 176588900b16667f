"""Hybrid keys between two KMEs over gRPC: `GrpcKemPeers` (the node's `KemPeers`) and the
HybridKem service, over the relay's mutual-TLS channels; the caller is named by its node
certificate, and a refusal crosses as a typed error detail."""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from qkdnet.v1 import relay_pb2, relay_pb2_grpc

from ..errors import Reason, RelayError
from ..protocol.hybrid_keys import HybridKeys, HybridSeal
from .grpc_authorization import peer_name
from .grpc_errors import abort_with
from .relay_grpc import PeerChannels, relay_error

__all__ = ["GrpcKemPeers", "HybridKemService"]

_CALL_TIMEOUT_S = 10.0
Context = grpc.aio.ServicerContext[Any, Any]


class GrpcKemPeers:
    """`KemPeers` over the relay's gRPC channels."""

    def __init__(self, channels: PeerChannels) -> None:
        self._channels = channels

    def _stub(self, node: str) -> relay_pb2_grpc.HybridKemAsyncStub:
        return relay_pb2_grpc.HybridKemStub(self._channels.channel(node))

    async def kem_key(self, node: str) -> tuple[str, bytes]:
        try:
            reply = await self._stub(node).GetKemKey(
                relay_pb2.KemKeyRequest(), timeout=_CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise relay_error(node, exc, Reason.PEER_FAILED) from None
        return reply.key_id, bytes(reply.public_key)

    async def seal(self, node: str, seal: HybridSeal) -> int:
        request = relay_pb2.HybridSeal(
            master=seal.master,
            key_uuids=b"".join(uuid.UUID(key_id).bytes for key_id in seal.key_ids),
            kem_key_id=seal.kem_key_id,
            ciphertext=seal.ciphertext,
        )
        try:
            reply = await self._stub(node).Seal(request, timeout=_CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise relay_error(node, exc, Reason.PEER_FAILED) from None
        return int(reply.keys)


class HybridKemService(relay_pb2_grpc.HybridKemServicer):
    """The HybridKem gRPC service in front of a node's `HybridKeys` (set once it runs)."""

    def __init__(self, hybrid: HybridKeys | None = None) -> None:
        self.hybrid = hybrid

    async def _hybrid(self, context: Context) -> HybridKeys:
        if self.hybrid is None:
            refusal = RelayError("this node makes no hybrid keys", reason="peer_failed")
            await abort_with(context, grpc.StatusCode.FAILED_PRECONDITION, refusal)
            raise AssertionError("unreachable")
        return self.hybrid

    async def GetKemKey(
        self, request: relay_pb2.KemKeyRequest, context: Context
    ) -> relay_pb2.KemKey:
        key_id, public_key = (await self._hybrid(context)).public_key()
        return relay_pb2.KemKey(key_id=key_id, public_key=public_key)

    async def Seal(self, request: relay_pb2.HybridSeal, context: Context) -> relay_pb2.SealReply:
        hybrid = await self._hybrid(context)
        blob = request.key_uuids
        if not blob or len(blob) % 16:
            refusal = RelayError("key IDs are 16-byte UUIDs", reason="malformed")
            await abort_with(context, grpc.StatusCode.INVALID_ARGUMENT, refusal)
        ids = tuple(str(uuid.UUID(bytes=blob[i : i + 16])) for i in range(0, len(blob), 16))
        seal = HybridSeal(request.master, ids, request.kem_key_id, request.ciphertext)
        try:
            keys = await hybrid.opened(peer_name(context), seal)
        except RelayError as exc:
            await abort_with(context, grpc.StatusCode.FAILED_PRECONDITION, exc)
            raise
        return relay_pb2.SealReply(keys=keys)
