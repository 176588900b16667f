"""The ports a link session runs over: how a transmitter reaches its receiver.

A session needs two streams to the peer: the authenticated classical conversation (a `Duplex`
of sealed `Envelope`s, `conversation.py`) and the emulated quantum channel (a `PhotonSink` the
transmitter writes `PhotonChunk`s to). A `LinkConnector` opens both for one session and closes
them when the session ends, whatever the reason. The node connects over gRPC with mutual TLS
(`qkdnet.node.edge.link_grpc.GrpcLinkConnector`, which also applies the node's emulated
shaping and tampering); tests connect two ends in memory (`qkdnet.node.testing.InMemoryLink`),
with loss, delay, reordering, tampering and replay where they ask for it.

A transport that fails raises `LinkError` (or `OSError`), never its own exception types, so
the session can end on it without knowing what carried it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .link_messages import Envelope, PhotonChunk

__all__ = ["Duplex", "LinkConnector", "PhotonSink"]


class Duplex(Protocol):
    """The classical stream of a session, both ways: `read` returns None once the peer has
    closed it."""

    async def read(self) -> Envelope | None: ...

    async def write(self, message: Envelope) -> None: ...

    async def wait_closed(self) -> None:
        """Return once the stream has ended (closed by the peer, or failed), without reading
        it: how a transmitter that sends nothing (its store full) learns its session died."""
        ...


class PhotonSink(Protocol):
    """Where a transmitter writes the photons of its frames."""

    async def write(self, message: PhotonChunk) -> None: ...


class LinkConnector(Protocol):
    """Opens the two streams of one session to the receiver."""

    def __call__(self) -> AbstractAsyncContextManager[tuple[Duplex, PhotonSink]]:
        """An async context manager giving (classical stream, photon sink); leaving it ends
        both. Raises when the receiver cannot be reached."""
        ...
