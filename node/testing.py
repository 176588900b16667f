"""Test doubles shipped with the node, as trio and grpclib ship theirs: link ends and relays
joined in memory, a fake clock, and what is between the ends as faithful or as hostile as a
test wants.

`InMemoryLink(receiver)` is a `LinkConnector` (protocol/link_transport.py) for a
`TransmitterLink`: each session gets a classical stream and a photon pipe that lead straight
into `receiver` (its `serve` and `receive_photons`, as the agent's gRPC servicer would call
them), with no socket, no process and no TLS. A `MessageFilter` sees every classical message on
its way and says what arrives instead; ready-made ones: `Lose`, `Tamper` (a wrong tag, a
replayed, truncated or garbled envelope), `Duplicate`, `Reorder`, and `chain` to combine them;
`delay_s` holds every message back (in order, as a stream does). When the receiver ends a
session (it refuses a message, say), the transmitter reads the end of the stream, as it would
from gRPC.

```python
receiver = ReceiverLink(...)
transmitter = TransmitterLink(connector=InMemoryLink(receiver, Tamper("bad_tag")), ...)
```

`FakeClock` is a `Clock` (protocol/clock.py) on which every sleep passes at once, advancing the
clock and being recorded.

`InMemoryRelayNetwork` joins the `KeyRelay` of several nodes: `peers_of(node)` is the
`RelayPeers` (protocol/relay_peers.py) of one of them, calling the others' relays directly as
their gRPC service would, with the same errors; a node in `down` answers nothing, as a node
that died (reason `unreachable`).

`InMemoryStreamNetwork` joins the ETSI GS QKD 004 stream logic (`KeyStreams`) of several
nodes: `peers_of(node)` is one node's `StreamPeers`, calling the others directly.

`InMemoryKemNetwork` joins the hybrid-key side (`HybridKeys`) of several KMEs the same way.

`InMemoryBorders` joins the `BorderKms` (protocol/interworking.py) of two domains' border
nodes: `peer_of(name)` is the `PeerKms` of one, calling the other's 020 side directly as its
HTTPS server would (a refusal as `InterworkingRefusal`, a border in `down` as `unreachable`);
acknowledgements of asynchronous transfers come back on a task of their own, as over HTTP.
`drop_acks` loses every acknowledgement one border sends (the other never hears).

`InMemoryKmePair` is a pair of KMEs outside the deployment, as an external-KME link sees them:
`end(name)` is one end's `KeySource` (protocol/external_kme_link.py); what one end's enc_keys
hands out, the other's dec_keys returns once. A name in `down` answers nothing; `wrong_size`
makes a side return keys a byte short.

The module imports no gRPC, aiohttp or aiomqtt.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from .edge.link_codec import LINK_CODEC
from .errors import RelayError
from .protocol.link_messages import Envelope, PhotonChunk
from .protocol.link_transport import Duplex, PhotonSink
from .protocol.relay_messages import LinkStateAdvert, RelayAck, RelayFrame

if TYPE_CHECKING:
    from .protocol.hybrid_keys import HybridKeys, HybridSeal
    from .protocol.interworking import BorderKms
    from .protocol.interworking_messages import Ack, KeyTransfer, VoidRequest
    from .protocol.key_stream_messages import StreamAnnouncement
    from .protocol.key_streams import KeyStreams
    from .protocol.link import SessionReceiver
    from .protocol.relay import KeyRelay
    from .store.key_store import KeyStore

__all__ = [
    "TAMPER_KINDS",
    "Direction",
    "Duplicate",
    "FakeClock",
    "InMemoryBorders",
    "InMemoryKemNetwork",
    "InMemoryKmePair",
    "InMemoryLink",
    "InMemoryRelayNetwork",
    "InMemoryStreamNetwork",
    "Lose",
    "MemoryStream",
    "MessageFilter",
    "Reorder",
    "Tamper",
    "chain",
    "payload_of",
    "store_same_key",
    "stream_pair",
    "tampered",
]

Direction = Literal["to_receiver", "to_transmitter"]
MessageFilter = Callable[[Direction, Envelope], Sequence[Envelope]]
"""(direction, message) -> the messages that arrive instead (none: lost)."""

_CLOSED = object()


TAMPER_KINDS = ("bad_tag", "replay", "truncate", "garble")


def tampered(envelope: Envelope, kind: str, previous: Envelope | None) -> Envelope:
    """What an attacker on the classical channel sends in place of `envelope`: a flipped tag
    bit (bad_tag), the previous message again (replay), half the body (truncate) or random
    bytes of the same length (garble)."""
    if kind == "bad_tag":
        tag = bytearray(envelope.tag)
        tag[0] ^= 0x01
        return replace(envelope, tag=bytes(tag))
    if kind == "replay":
        return previous if previous is not None else envelope
    if kind == "truncate":
        return replace(envelope, body=envelope.body[: max(1, len(envelope.body) // 2)])
    return replace(envelope, body=os.urandom(len(envelope.body)))


def payload_of(envelope: Envelope) -> str:
    """The wire name of the payload an envelope carries (`sift_reply`, ...), or "" when its
    body is not a message."""
    try:
        return LINK_CODEC.payload_name(LINK_CODEC.decode(envelope.body).payload)
    except Exception:
        return ""


@dataclass
class _Match:
    """Which messages a filter acts on: in `direction`, carrying `payload` (any when empty),
    the first `count` of them."""

    payload: str = ""
    direction: Direction = "to_receiver"
    count: int = 1
    done: int = 0

    def __call__(self, direction: Direction, envelope: Envelope) -> bool:
        if self.done >= self.count or direction != self.direction:
            return False
        if self.payload and payload_of(envelope) != self.payload:
            return False
        self.done += 1
        return True


class Lose:
    """The first `count` messages in `direction` carrying `payload` (any when empty) never
    arrive."""

    def __init__(self, payload: str = "", direction: Direction = "to_receiver", count: int = 1):
        self.matches = _Match(payload, direction, count)

    def __call__(self, direction: Direction, envelope: Envelope) -> Sequence[Envelope]:
        return [] if self.matches(direction, envelope) else [envelope]


class Duplicate:
    """The matching messages (as for `Lose`) arrive twice: the second copy is a replay."""

    def __init__(self, payload: str = "", direction: Direction = "to_receiver", count: int = 1):
        self.matches = _Match(payload, direction, count)

    def __call__(self, direction: Direction, envelope: Envelope) -> Sequence[Envelope]:
        return [envelope, envelope] if self.matches(direction, envelope) else [envelope]


class Reorder:
    """Each matching message (as for `Lose`) arrives after the next one in its direction."""

    def __init__(self, payload: str = "", direction: Direction = "to_receiver", count: int = 1):
        self.matches = _Match(payload, direction, count)
        self._held: Envelope | None = None

    def __call__(self, direction: Direction, envelope: Envelope) -> Sequence[Envelope]:
        if direction == self.matches.direction and self._held is not None:
            held, self._held = self._held, None
            return [envelope, held]
        if self.matches(direction, envelope):
            self._held = envelope
            return []
        return [envelope]


class Tamper:
    """The matching messages (as for `Lose`) arrive changed, as an attacker on the classical
    channel would change them (`tampered`): `kind` is bad_tag (a flipped tag bit), replay (the
    previous message in its place), truncate or garble (the body)."""

    def __init__(
        self,
        kind: str,
        payload: str = "",
        direction: Direction = "to_receiver",
        count: int = 1,
    ) -> None:
        if kind not in TAMPER_KINDS:
            raise ValueError(f"unknown tampering {kind!r}; one of {', '.join(TAMPER_KINDS)}")
        self.kind = kind
        self.matches = _Match(payload, direction, count)
        self._previous: Envelope | None = None

    def __call__(self, direction: Direction, envelope: Envelope) -> Sequence[Envelope]:
        if self.matches(direction, envelope):
            return [tampered(envelope, self.kind, self._previous)]
        if direction == self.matches.direction:
            self._previous = envelope
        return [envelope]


def chain(*filters: MessageFilter) -> MessageFilter:
    """Apply `filters` in turn: what one lets through, the next sees."""

    def apply(direction: Direction, envelope: Envelope) -> Sequence[Envelope]:
        messages = [envelope]
        for each in filters:
            messages = [out for m in messages for out in each(direction, m)]
        return messages

    return apply


class FakeClock:
    """A `Clock` on which every sleep passes at once: it moves the clock on by the time slept
    and records it in `slept`, so that a test sees what a protocol waited for without waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.now += seconds
            self.slept.append(seconds)
        await asyncio.sleep(0)


@dataclass
class MemoryStream:
    """One end of an in-memory duplex stream: `write` goes to the peer's `read`, after
    `delay_s` (in order); `read` returns None once the peer closed (as gRPC's EOF)."""

    _inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _peer: MemoryStream | None = None
    _filter: Callable[[Envelope], Sequence[Envelope]] | None = None
    delay_s: float = 0.0
    closed: bool = False
    _in_flight: asyncio.Queue[tuple[float, Envelope]] | None = None
    _courier: asyncio.Task[None] | None = None
    _ended: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_closed(self) -> None:
        """Until either end closed the stream."""
        await self._ended.wait()

    async def read(self) -> Envelope | None:
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later read sees the end too
            return None
        assert isinstance(item, Envelope)
        return item

    async def write(self, message: Envelope) -> None:
        if self.closed or self._peer is None or self._peer.closed:
            raise ConnectionResetError("the in-memory stream is closed")
        delivered = [message] if self._filter is None else self._filter(message)
        for item in delivered:
            if self.delay_s <= 0:
                self._peer._inbox.put_nowait(item)
                continue
            if self._in_flight is None:
                self._in_flight = asyncio.Queue()
                self._courier = asyncio.create_task(self._carry(self._in_flight))
            arrival = asyncio.get_running_loop().time() + self.delay_s
            self._in_flight.put_nowait((arrival, item))

    async def _carry(self, in_flight: asyncio.Queue[tuple[float, Envelope]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            arrival, item = await in_flight.get()
            await asyncio.sleep(max(0.0, arrival - loop.time()))
            if self._peer is not None:
                self._peer._inbox.put_nowait(item)

    def close(self) -> None:
        """End the stream: the peer's reads return None from now on."""
        if not self.closed:
            self.closed = True
            self._ended.set()
            if self._courier is not None:
                self._courier.cancel()
            if self._peer is not None:
                self._peer._inbox.put_nowait(_CLOSED)
                self._peer._ended.set()


def stream_pair(
    message_filter: MessageFilter | None = None, delay_s: float = 0.0
) -> tuple[MemoryStream, MemoryStream]:
    """(transmitter's end, receiver's end) of a duplex stream; `message_filter` sees every
    message either end writes, and each arrives `delay_s` after it was written."""
    transmitter, receiver = MemoryStream(delay_s=delay_s), MemoryStream(delay_s=delay_s)
    transmitter._peer, receiver._peer = receiver, transmitter
    if message_filter is not None:
        transmitter._filter = lambda m: message_filter("to_receiver", m)
        receiver._filter = lambda m: message_filter("to_transmitter", m)
    return transmitter, receiver


class _PhotonPipe:
    """The emulated quantum channel in memory: what the transmitter writes, the receiver reads."""

    def __init__(self) -> None:
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()

    async def write(self, message: PhotonChunk) -> None:
        self._chunks.put_nowait(message)

    def close(self) -> None:
        self._chunks.put_nowait(_CLOSED)

    async def chunks(self) -> AsyncIterator[PhotonChunk]:
        while (chunk := await self._chunks.get()) is not _CLOSED:
            yield chunk


class InMemoryLink:
    """A `LinkConnector` whose sessions lead into `receiver` in this event loop."""

    def __init__(
        self,
        receiver: SessionReceiver,
        message_filter: MessageFilter | None = None,
        *,
        delay_s: float = 0.0,
    ) -> None:
        self.receiver = receiver
        self.message_filter = message_filter
        self.delay_s = delay_s
        self.sessions = 0
        self.ended: list[BaseException | None] = []  # how the receiver ended each session

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[tuple[Duplex, PhotonSink]]:
        self.sessions += 1
        transmitter_end, receiver_end = stream_pair(self.message_filter, self.delay_s)
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
    adverts: list[tuple[str, str, LinkStateAdvert]] = field(default_factory=list)

    def add(self, relay: KeyRelay) -> None:
        self.relays[relay.node_id] = relay

    def peers_of(self, node: str) -> _MemoryRelayPeers:
        """The `RelayPeers` of `node`."""
        return _MemoryRelayPeers(self, node)


class _MemoryRelayPeers:
    """One node's `RelayPeers` in an `InMemoryRelayNetwork`: the same errors, with the same
    reasons, as `qkdnet.node.edge.relay_grpc.PeerChannels` raises."""

    def __init__(self, network: InMemoryRelayNetwork, node: str) -> None:
        self._network = network
        self.node = node

    def _reach(self, node: str) -> KeyRelay:
        relay = self._network.relays.get(node)
        if relay is None or node in self._network.down or self.node in self._network.down:
            raise RelayError(f"{node} did not answer", reason="unreachable")
        return relay

    async def relay(self, node: str, frame: RelayFrame) -> RelayAck:
        return await self._reach(node).receive(frame, self.node)

    async def settle(self, node: str, transaction_id: str, commit: bool) -> int:
        from .store.delivered_keys import NotTheOrigin

        target = self._reach(node)
        try:
            return await target.settle_here(transaction_id, self.node, commit)
        except NotTheOrigin as exc:  # as PeerChannels raises a refused settlement
            raise RelayError(str(exc), reason="peer_failed") from None

    async def void(self, node: str, key_uuids: bytes, reason: str) -> int:
        target = self._reach(node)
        try:
            return await target.void_here(self.node, key_uuids, reason)
        except RelayError as exc:  # as PeerChannels raises a refused void
            raise RelayError(str(exc), reason="peer_failed") from None

    async def advertise(self, node: str, advert: LinkStateAdvert) -> None:
        self._reach(node)
        self._network.adverts.append((self.node, node, advert))

    async def close(self) -> None:
        """Nothing to let go of."""


@dataclass
class InMemoryStreamNetwork:
    """The ETSI 004 stream logic (`KeyStreams`) of several nodes, joined in memory as
    `qkdnet.node.edge.stream_grpc.GrpcStreamPeers` joins them over gRPC; a node in `down`
    answers nothing."""

    streams: dict[str, KeyStreams] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def add(self, streams: KeyStreams) -> None:
        self.streams[streams.node_id] = streams

    def peers_of(self, node: str) -> _MemoryStreamPeers:
        """The `StreamPeers` of `node`."""
        return _MemoryStreamPeers(self, node)


class _MemoryStreamPeers:
    def __init__(self, network: InMemoryStreamNetwork, node: str) -> None:
        self._network = network
        self.node = node

    def _reach(self, node: str) -> KeyStreams:
        streams = self._network.streams.get(node)
        if streams is None or node in self._network.down or self.node in self._network.down:
            raise RelayError(f"{node} did not answer", reason="unreachable")
        return streams

    async def announce(self, node: str, announcement: StreamAnnouncement) -> None:
        self._reach(node).announced(announcement, self.node)

    async def connected(self, node: str, ksid: uuid.UUID) -> None:
        self._reach(node).peer_connected(ksid, self.node)

    async def progress(self, node: str, ksid: uuid.UUID, chunks: int) -> None:
        await self._reach(node).progress(ksid, chunks, self.node)

    async def requalified(self, node: str, announcement: StreamAnnouncement) -> None:
        self._reach(node).requalified(announcement, self.node)

    async def closed(self, node: str, ksid: uuid.UUID, reason: str) -> None:
        await self._reach(node).peer_closed(ksid, reason, self.node)


@dataclass
class InMemoryKemNetwork:
    """The hybrid-key side (`HybridKeys`) of several KMEs, joined in memory as
    `qkdnet.node.edge.hybrid_grpc.GrpcKemPeers` joins them; a node in `down` answers nothing."""

    kmes: dict[str, HybridKeys] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)

    def add(self, hybrid: HybridKeys) -> None:
        self.kmes[hybrid.node_id] = hybrid

    def peers_of(self, node: str) -> _MemoryKemPeers:
        """The `KemPeers` of `node`."""
        return _MemoryKemPeers(self, node)


class _MemoryKemPeers:
    def __init__(self, network: InMemoryKemNetwork, node: str) -> None:
        self._network = network
        self.node = node

    def _reach(self, node: str) -> HybridKeys:
        hybrid = self._network.kmes.get(node)
        if hybrid is None or node in self._network.down or self.node in self._network.down:
            raise RelayError(f"{node} did not answer", reason="unreachable")
        return hybrid

    async def kem_key(self, node: str) -> tuple[str, bytes]:
        return self._reach(node).public_key()

    async def seal(self, node: str, seal: HybridSeal) -> int:
        return await self._reach(node).opened(self.node, seal)


@dataclass
class InMemoryBorders:
    """The 020 sides of border nodes, joined in memory (see the module's docstring)."""

    borders: dict[str, BorderKms] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    drop_acks: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (caller, operation)

    def add(self, name: str, border: BorderKms) -> None:
        self.borders[name] = border

    def peer_of(self, name: str, peer: str) -> _MemoryPeerKms:
        """The `PeerKms` border `name` uses to reach border `peer`."""
        return _MemoryPeerKms(self, name, peer)


class _MemoryPeerKms:
    def __init__(self, network: InMemoryBorders, name: str, peer: str) -> None:
        self._network = network
        self._name = name
        self._peer = peer

    def _reach(self, operation: str) -> BorderKms:
        self._network.calls.append((self._name, operation))
        border = self._network.borders.get(self._peer)
        if border is None or {self._name, self._peer} & self._network.down:
            raise RelayError(f"the peer border {self._peer} did not answer", reason="unreachable")
        return border

    async def transfer(self, transfer: KeyTransfer) -> list[Ack] | None:
        return await self._reach("ext_keys").receive_transfer(transfer)

    async def acknowledge(self, acks: Sequence[Ack]) -> None:
        border = self._reach("ack")
        if self._name in self._network.drop_acks:
            raise RelayError(f"the peer border {self._peer} did not answer", reason="unreachable")
        border.receive_acks(acks)

    async def void(self, request: VoidRequest) -> list[Ack] | None:
        return await self._reach("void").receive_void(request)


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


@dataclass
class InMemoryKmePair:
    """Two external KMEs sharing keys in memory (see the module's docstring)."""

    keys: dict[str, bytes] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    wrong_size: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (end, "enc_keys"/"dec_keys")

    def end(self, name: str) -> _MemoryKeySource:
        return _MemoryKeySource(self, name)


class _MemoryKeySource:
    def __init__(self, pair: InMemoryKmePair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.description = f"in-memory KME {name}"

    def _answer(self, call: str) -> None:
        from .protocol.external_kme_link import KeySourceError

        self.pair.calls.append((self.name, call))
        if self.name in self.pair.down:
            raise KeySourceError(f"{call} at the external KME {self.name}: no answer")

    def _shaped(self, key: bytes) -> bytes:
        return key[:-1] if self.name in self.pair.wrong_size else key

    async def enc_keys(self, number: int, size: int) -> list[tuple[str, bytes]]:
        self._answer("enc_keys")
        out = []
        for _ in range(number):
            key_id, key = str(uuid.uuid4()), os.urandom(size // 8)
            self.pair.keys[key_id] = key
            out.append((key_id, self._shaped(key)))
        return out

    async def dec_keys(self, key_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        self._answer("dec_keys")
        return [(key_id, self._shaped(self.pair.keys.pop(key_id))) for key_id in key_ids]

    async def close(self) -> None:
        return None
