"""The ports a link session runs over: how a transmitter reaches its receiver.

A session needs two streams to the peer: the authenticated classical conversation (a `Duplex`
of sealed envelopes, `conversation.py`) and the emulated quantum channel (a `PhotonSink` the
transmitter writes photon chunks to). A `LinkConnector` opens both for one session and closes
them when the session ends, whatever the reason. The node connects over gRPC with mutual TLS
(`link_grpc.GrpcLinkConnector`); tests connect two ends in memory
(`qkdnet.node.testing.InMemoryLink`), with tampering, loss and replay where they ask for it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .conversation import Duplex

__all__ = ["Duplex", "LinkConnector", "PhotonSink"]


class PhotonSink(Protocol):
    """Where a transmitter writes the photons of its frames (`link_pb2.PhotonChunk`)."""

    async def write(self, message: Any) -> None: ...


class LinkConnector(Protocol):
    """Opens the two streams of one session to the receiver."""

    def __call__(self) -> AbstractAsyncContextManager[tuple[Duplex, PhotonSink]]:
        """An async context manager giving (classical stream, photon sink); leaving it ends
        both. Raises when the receiver cannot be reached."""
        ...
