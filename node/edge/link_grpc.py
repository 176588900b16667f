"""A link session over gRPC: the transmitter's `LinkConnector` in the node.

It dials the receiver with mutual TLS (`grpc_dial.dial`), waits up to 10 s for the connection,
and opens the two streams of the `QuantumChannel` and `ClassicalChannel` services; the
receiver's side of them is the agent's link servicer, which hands them to `ReceiverLink`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from qkdnet.v1 import link_pb2_grpc

from ..protocol.link_transport import Duplex, PhotonSink
from .grpc_dial import dial

__all__ = ["GrpcLinkConnector", "GrpcStream"]


class GrpcStream:
    """A gRPC stream-stream call, or a server's context, as a `Duplex`: EOF reads as None."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self) -> Any:
        message = await self._stream.read()
        return None if message is grpc.aio.EOF else message

    async def write(self, message: Any) -> None:
        await self._stream.write(message)


class GrpcLinkConnector:
    """Connects a transmitter to the receiver `peer` at `address` (host:port)."""

    def __init__(self, address: str, peer: str, credentials: grpc.ChannelCredentials) -> None:
        self.address = address
        self.peer = peer
        self._credentials = credentials

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[tuple[Duplex, PhotonSink]]:
        async with dial(self.address, self.peer, self._credentials) as channel:
            async with asyncio.timeout(10):  # not wait_for: see Conversation.receive
                await channel.channel_ready()
            classical = link_pb2_grpc.ClassicalChannelStub(channel).Session()
            photons = link_pb2_grpc.QuantumChannelStub(channel).Transmit()
            try:
                yield GrpcStream(classical), photons
            finally:
                classical.cancel()
                photons.cancel()
