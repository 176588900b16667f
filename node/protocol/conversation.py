"""One authenticated classical conversation between the two ends of a link.

`Conversation` seals every outgoing ClassicalMessage with the link's Wegman-Carter
authenticator and opens every incoming one; `expect` enforces the protocol order. It works on
either side of the gRPC stream (a client call or a server context both offer `read`/`write`).

A `TamperFault` armed on a conversation corrupts one outgoing message on purpose (a wrong tag, a
replay of the previous envelope, a truncated or a garbled body): the node's control service
offers it to test that receivers refuse such messages.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Protocol

from qkdnet.v1 import link_pb2

from ..errors import LinkError, ProtocolError, RoundAborted
from .authentication import LinkAuthenticator

__all__ = ["TAMPER_KINDS", "Conversation", "Duplex", "TamperFault"]

TAMPER_KINDS = ("bad_tag", "replay", "truncate", "garble")


class Duplex(Protocol):
    """A message stream both ways: `read` returns None once the peer has closed it. (A gRPC
    call or server context is one through `link_grpc.GrpcStream`, which reads EOF as None.)"""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


@dataclass
class TamperFault:
    """Corrupt the next outgoing message (of payload `target`, when given)."""

    kind: str
    target: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TAMPER_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(TAMPER_KINDS)}")


class Conversation:
    """Authenticated, ordered message exchange for one link session."""

    def __init__(
        self,
        stream: Duplex,
        auth: LinkAuthenticator,
        *,
        link_id: str,
        sender: str,
        timeout: float = 120.0,
    ) -> None:
        self._stream = stream
        self._auth = auth
        self._link_id = link_id
        self._sender = sender
        self._timeout = timeout
        self._last: link_pb2.Envelope | None = None
        self.frame = 0
        self.fault: TamperFault | None = None

    async def send(self, **payload: Any) -> None:
        """Send one message; `payload` is a single `name=submessage` of ClassicalMessage."""
        (name,) = payload
        message = link_pb2.ClassicalMessage(
            link_id=self._link_id, sender=self._sender, frame=self.frame, **payload
        )
        envelope = await self._auth.seal(message)
        fault = self.fault
        if fault is not None and fault.target in ("", name):
            self.fault = None
            await self._write_tampered(envelope, fault)
            return
        self._last = envelope
        await self._stream.write(envelope)

    async def _write_tampered(self, envelope: link_pb2.Envelope, fault: TamperFault) -> None:
        if fault.kind == "bad_tag":
            tag = bytearray(envelope.tag)
            tag[0] ^= 0x01
            await self._stream.write(link_pb2.Envelope(body=envelope.body, tag=bytes(tag)))
        elif fault.kind == "replay":
            await self._stream.write(self._last if self._last is not None else envelope)
        elif fault.kind == "truncate":
            cut = envelope.body[: max(1, len(envelope.body) // 2)]
            await self._stream.write(link_pb2.Envelope(body=cut, tag=envelope.tag))
        else:
            await self._stream.write(
                link_pb2.Envelope(body=os.urandom(len(envelope.body)), tag=envelope.tag)
            )

    async def receive(self, *, idle: bool = False) -> link_pb2.ClassicalMessage:
        """The next authenticated message; LinkError when the peer went away.

        `idle`: between rounds, where the peer may be silent for long (a transmitter whose
        store is full): no timeout, the stream's keepalive notices a peer that vanished."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
        # arrives as the read completes, and a session being ended would read on.
        try:
            async with asyncio.timeout(None if idle else self._timeout):
                envelope = await self._stream.read()
        except TimeoutError:
            raise LinkError("peer sent nothing in time", reason="timeout") from None
        if envelope is None:
            raise LinkError("peer closed the classical channel", reason="closed")
        if not isinstance(envelope, link_pb2.Envelope):
            raise ProtocolError("unexpected object on the classical channel")
        message = await self._auth.open(envelope)
        if message.link_id != self._link_id:
            raise ProtocolError(f"message for link {message.link_id!r}")
        return message

    async def expect(self, name: str) -> Any:
        """Receive the next message, which must carry payload `name` for the current frame.

        An Abort from the peer raises RoundAborted; anything else out of order, ProtocolError.
        """
        message = await self.receive()
        kind = message.WhichOneof("payload")
        if kind == "abort" and message.frame == self.frame:
            raise RoundAborted(f"peer aborted: {message.abort.reason}", reason=message.abort.reason)
        if kind != name:
            raise ProtocolError(f"expected {name}, got {kind}")
        if message.frame != self.frame:
            raise ProtocolError(f"{name} for frame {message.frame}, expected {self.frame}")
        return getattr(message, name)
