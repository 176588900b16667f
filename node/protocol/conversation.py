"""One authenticated classical conversation between the two ends of a link.

`Conversation` seals every outgoing message with the link's Wegman-Carter authenticator and
opens every incoming one; `expect` enforces the protocol order. It runs over any `Duplex`
(link_transport.py): a gRPC stream in the node, an in-memory pair under test.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from ..errors import LinkError, ProtocolError, Reason, RoundAborted
from .authentication import LinkAuthenticator
from .link_messages import Abort, ClassicalMessage, Envelope
from .link_transport import Duplex

__all__ = ["Conversation"]

P = TypeVar("P")


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
        self.frame = 0

    async def send(self, payload: object) -> None:
        """Seal and send one message for the current frame."""
        message = ClassicalMessage(
            link_id=self._link_id, sender=self._sender, frame=self.frame, payload=payload
        )
        await self._stream.write(await self._auth.seal(message))

    async def wait_closed(self) -> None:
        """Return once the session's stream has ended (see `Duplex.wait_closed`)."""
        await self._stream.wait_closed()

    async def receive(self, *, idle: bool = False) -> ClassicalMessage:
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
        if not isinstance(envelope, Envelope):
            raise ProtocolError("unexpected object on the classical channel")
        message = await self._auth.open(envelope)
        if message.link_id != self._link_id:
            raise ProtocolError(f"message for link {message.link_id!r}")
        return message

    async def expect(self, kind: type[P]) -> P:
        """Receive the next message, which must carry a `kind` payload for the current frame.

        An Abort from the peer raises RoundAborted; anything else out of order, ProtocolError.
        """
        message = await self.receive()
        payload = message.payload
        if isinstance(payload, Abort) and message.frame == self.frame:
            raise RoundAborted(
                f"peer aborted: {payload.reason}", reason=Reason.of(payload.reason, Reason.ABORTED)
            )
        if not isinstance(payload, kind):
            raise ProtocolError(f"expected {kind.__name__}, got {type(payload).__name__}")
        if message.frame != self.frame:
            raise ProtocolError(f"{kind.__name__} for frame {message.frame}, expected {self.frame}")
        return payload
