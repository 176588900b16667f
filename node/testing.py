"""Test doubles shipped with the node, as trio and grpclib ship theirs: link ends and relays
joined in memory, with what is between them as faithful or as hostile as a test wants.

`InMemoryLink(receiver)` is a `LinkConnector` (link_transport.py) for a `TransmitterLink`: each
session gets a classical stream and a photon pipe that lead straight into `receiver` (its
`serve` and `receive_photons`, as the agent's gRPC servicer would call them), with no socket,
no process and no TLS. A `MessageFilter` sees every classical message on its way and says what
arrives instead: the message itself, nothing (loss), a changed one (tampering), several
(replay). When the receiver ends a session (it refuses a message, say), the transmitter reads
the end of the stream, as it would from gRPC.

```python
receiver = ReceiverLink(...)
transmitter = TransmitterLink(connector=InMemoryLink(receiver), ...)
```

`InMemoryRelayNetwork` joins the `KeyRelay` of several nodes: `peers_of(node)` is the
`RelayPeers` (relay_peers.py) of one of them, calling the others' relays directly as their
gRPC service would, with the same errors; a node in `down` answers nothing, as a node that
died (reason `unreachable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qkdnet.v1 import relay_pb2

from .errors import RelayError
from .protocol.link_transport import Duplex, PhotonSink

if TYPE_CHECKING:
    from .protocol.link import ReceiverLink
    from .protocol.relay import KeyRelay
    from .store.key_store import KeyStore

__all__ = [
    "Direction",
    "InMemoryLink",
    "InMemoryRelayNetwork",
    "MemoryStream",
    "MessageFilter",
    "store_same_key",
    "stream_pair",
]

Direction = str  # "to_receiver" or "to_transmitter"
MessageFilter = Callable[[Direction, Any], Sequence[Any]]
"""(direction, message) -> the messages that arrive instead (none: lost)."""

_CLOSED = object()


@dataclass
class MemoryStream:
    """One end of an in-memory duplex stream: `write` goes to the peer's `read`; `read`
    returns None once the peer closed (as gRPC's EOF)."""

    _inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _peer: MemoryStream | None = None
    _filter: Callable[[Any], Sequence[Any]] | None = None
    closed: bool = False

    async def read(self) -> Any:
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later read sees the end too
            return None
        return item

    async def write(self, message: Any) -> None:
        if self.closed or self._peer is None or self._peer.closed:
            raise ConnectionResetError("the in-memory stream is closed")
        delivered = [message] if self._filter is None else self._filter(message)
        for item in delivered:
            self._peer._inbox.put_nowait(item)

    def close(self) -> None:
        """End the stream: the peer's reads return None from now on."""
        if not self.closed:
            self.closed = True
            if self._peer is not None:
                self._peer._inbox.put_nowait(_CLOSED)


def stream_pair(
    message_filter: MessageFilter | None = None,
) -> tuple[MemoryStream, MemoryStream]:
    """(transmitter's end, receiver's end) of a duplex stream; `message_filter` sees every
    message either end writes."""
    transmitter, receiver = MemoryStream(), MemoryStream()
    transmitter._peer, receiver._peer = receiver, transmitter
    if message_filter is not None:
        transmitter._filter = lambda m: message_filter("to_receiver", m)
        receiver._filter = lambda m: message_filter("to_transmitter", m)
    return transmitter, receiver


class _PhotonPipe:
    """The emulated quantum channel in memory: what the transmitter writes, the receiver reads."""

    def __init__(self) -> None:
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, message: Any) -> None:
        self._chunks.put_nowait(message)

    def close(self) -> None:
        self._chunks.put_nowait(_CLOSED)

    async def chunks(self) -> AsyncIterator[Any]:
        while (chunk := await self._chunks.get()) is not _CLOSED:
            yield chunk


class InMemoryLink:
    """A `LinkConnector` whose sessions lead into `receiver` in this event loop."""

    def __init__(self, receiver: ReceiverLink, message_filter: MessageFilter | None = None):
        self.receiver = receiver
        self.message_filter = message_filter
        self.sessions = 0
        self.ended: list[BaseException | None] = []  # how the receiver ended each session

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[tuple[Duplex, PhotonSink]]:
        self.sessions += 1
        transmitter_end, receiver_end = stream_pair(self.message_filter)
        photons = _PhotonPipe()
        serve = asyncio.create_task(self._serve(receiver_end))
        measure = asyncio.create_task(self.receiver.receive_photons(photons.chunks()))
        try:
            yield transmitter_end, photons
        finally:
            transmitter_end.close()
            photons.close()
            for task in (serve, measure):
                task.cancel()
            # Their own ends, not swallowing a cancellation of the session that is leaving.
            await asyncio.gather(serve, measure, return_exceptions=True)

    async def _serve(self, receiver_end: MemoryStream) -> None:
        try:
            await self.receiver.serve(receiver_end)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the receiver ended the session: the transmitter sees EOF
            self.ended.append(exc)
        else:
            self.ended.append(None)
        finally:
            receiver_end.close()


@dataclass
class InMemoryRelayNetwork:
    """The relays of several nodes, joined in memory (see the module's docstring)."""

    relays: dict[str, KeyRelay] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    adverts: list[tuple[str, str, relay_pb2.LinkStateAdvert]] = field(default_factory=list)

    def add(self, relay: KeyRelay) -> None:
        self.relays[relay.node_id] = relay

    def peers_of(self, node: str) -> _MemoryRelayPeers:
        """The `RelayPeers` of `node`."""
        return _MemoryRelayPeers(self, node)


class _MemoryRelayPeers:
    """One node's `RelayPeers` in an `InMemoryRelayNetwork`."""

    def __init__(self, network: InMemoryRelayNetwork, node: str) -> None:
        self._network = network
        self.node = node

    def _reach(self, node: str) -> KeyRelay:
        relay = self._network.relays.get(node)
        if relay is None or node in self._network.down or self.node in self._network.down:
            raise RelayError(f"{node} did not answer", reason="unreachable")
        return relay

    async def relay(self, node: str, frame: relay_pb2.RelayFrame) -> relay_pb2.RelayAck:
        return await self._reach(node).receive(frame, self.node)

    async def settle(self, node: str, request: relay_pb2.SettleRequest) -> int:
        from .store.delivered_keys import NotTheOrigin

        target = self._reach(node)
        try:
            return await target.settle_here(request.transaction_id, self.node, request.commit)
        except NotTheOrigin as exc:  # as RelayService answers: PERMISSION_DENIED
            raise RelayError(str(exc), reason="peer_failed") from None

    async def void(self, node: str, request: relay_pb2.VoidRequest) -> int:
        target = self._reach(node)
        try:
            return await target.void_here(self.node, request)
        except RelayError as exc:  # as RelayService answers: "reason: message"
            raise RelayError(f"{exc.reason}: {exc}", reason="peer_failed") from None

    async def advertise(self, node: str, advert: relay_pb2.LinkStateAdvert) -> None:
        self._reach(node)
        self._network.adverts.append((self.node, node, advert))

    async def close(self) -> None:
        """Nothing to let go of."""


async def store_same_key(
    ends: Sequence[KeyStore], blocks: int = 4, block_bits: int = 64_000
) -> None:
    """Give the stores of a link's two ends the same random key, as distillation would: `blocks`
    ready blocks of `block_bits` (frames 0, 1, ...: both directions get key)."""
    import os
    import uuid
    from functools import partial

    from .store.key_store import KeyStoreDb

    for frame in range(blocks):
        add = partial(
            KeyStoreDb.add_block,
            block_id=uuid.uuid4().hex,
            frame=frame,
            bits=os.urandom(block_bits // 8),
            nbits=block_bits,
            pending=False,
            refill={},
        )
        for store in ends:
            await store.run(add)
