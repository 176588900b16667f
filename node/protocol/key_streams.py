"""Key streams of ETSI GS QKD 004: OPEN_CONNECT, GET_KEY and CLOSE at one KME.

A stream joins two SAEs. The first to open it (its *source*) names the other (its
*destination*: the SAE of the destination URI, see `sae_of_uri`); the source's KME is the
stream's origin. The origin checks the QoS against what the route to the destination's node can
carry (on each of its links, the key rate it advertises plus the key it holds spread over the
stream's TTL, less what streams opened here already reserved) and refuses with status 7 and a
counter-proposal when it cannot: no stream is made then (the UC3M wrapper's reading; QUBIP's
server makes one all the same). Otherwise it announces the stream to the destination's KME,
relays the stream's first key, and answers status 1 with the KSID; the destination's
application opens the same KSID (status 0, the source's QoS), and both ends are connected. A
stream its peer application has not opened within `join_within_s` ends.

Key: chunk `i` is `Key_chunk_size` random bytes made at the origin and relayed to the
destination's node as an ordinary key of the SAE pair, under an ID derived from the KSID and
`i` (`chunk_id`), so both ends read the same bytes at the same index with no table exchanged.
It draws on the same link key as ETSI 014 and is committed at the destination before either end
may read it, so no key is ever handed out twice or at one end only. The origin relays ahead of
the stream's schedule by `lead_s` and tells the peer KME how far the committed chunks go; the
peer KME takes them out of its store ahead of the reads.

QoS is enforced: chunk `i` is due `i x chunk bits / Max_bps` seconds after the stream
connected (chunk 0 at once); GET_KEY for a chunk not due within the call's Timeout answers 2,
one due but not there when the Timeout ends answers 6 (every call is bounded by the Timeout;
0 means no waiting at all, so an OPEN_CONNECT that must reach another KME answers 6). The
stream ends at both KMEs when either application closes it or its TTL runs out; a closed KSID
cannot be opened again (5). An end may read an index again (same bytes) while it is among the
last `retained_chunks` it holds. Priority and jitter are negotiated and reported, not
scheduled on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import secrets
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from ..errors import KeyStoreError, Reason, RelayError
from ..store.delivered_keys import DeliveredKeys, KeyNotFound
from ..structured_log import log_event
from .clock import SYSTEM_CLOCK, Clock
from .key_manager import KeyManager
from .key_stream_messages import (
    METADATA_MIMETYPE,
    StreamAnnouncement,
    StreamPeers,
    StreamQos,
    StreamStatus,
    chunk_id,
)
from .key_stream_state import RetiredStream, StreamState
from .rate_book import RateBook
from .routing import Router

__all__ = [
    "ChunkResult",
    "KeyStreams",
    "OpenResult",
    "StreamLimits",
    "sae_of_uri",
]

logger = logging.getLogger("qkdnet.node.protocol.key_streams")

EventSink = Callable[[str, dict[str, Any]], None]

# Closed KSIDs remembered (so that none is opened again) at most.
_RETIRED_KEPT = 100_000
# A progress message for a closed stream withdraws at most this many chunks.
_VOID_BOUND = 1 << 16
# Chunks taken from the delivered-key store at once by the destination's KME.
_TAKE_BATCH = 64
# After a failed relay the origin waits this long before the next.
_RETRY_S = 0.5
# OPEN_CONNECT waits at most this long for the stream's first key to be relayed.
_OPEN_WAIT_S = 2.0


@dataclass(frozen=True)
class StreamLimits:
    """What one KME grants streams."""

    max_chunk_bytes: int = 4096
    max_timeout_ms: int = 60_000
    max_ttl_s: int = 86_400
    local_max_bps: int = 10_000_000  # a stream between two SAEs of this node
    max_streams: int = 1024
    lead_s: float = 1.0  # how far ahead of its schedule a stream's key is relayed
    retained_chunks: int = 1024  # chunks an end keeps (read or not); also the lead's cap
    batch_bits: int = 1 << 16  # key relayed in one transaction at most (one chunk at least)
    join_within_s: float = 300.0  # a stream the peer application has not opened by then ends


@dataclass(frozen=True)
class OpenResult:
    """The answer to OPEN_CONNECT: the status, the QoS (granted, or the counter-proposal with
    7) and the KSID (None when no stream was opened)."""

    status: StreamStatus
    qos: StreamQos
    ksid: uuid.UUID | None = None


@dataclass(frozen=True)
class ChunkResult:
    """The answer to GET_KEY. With 8, `metadata_size` is the size the metadata needs."""

    status: StreamStatus
    index: int = 0
    key: bytes = b""
    metadata: bytes = b""
    metadata_size: int = 0


@dataclass
class StreamCounters:
    """What the streams of one KME did since it started."""

    opened: int = 0
    connected: int = 0
    closed: int = 0
    expired: int = 0
    chunks_served: int = 0
    chunks_made: int = 0
    relay_failures: int = 0
    answers: Counter[str] = field(default_factory=Counter)  # "<call> <status>" -> count


def sae_of_uri(uri: str) -> str | None:
    """The SAE a 004 URI names: its user part, else its first path segment, else its host
    (`qkd://sae-b`, `server://sae-b@10.0.0.2:25575`, `server://10.0.0.2:25575/sae-b`: clients
    such as the UC3M wrapper's connect to the host of the destination URI, so the SAE goes
    beside it); None for a string with no scheme and host (QUBIP's server answers 4 to those
    as well)."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc or not host:
        return None
    if parts.username:
        return parts.username
    segment = parts.path.strip("/").split("/", 1)[0]
    if segment:
        return segment
    # urlsplit lower-cases the host; SAE IDs keep their case.
    start = parts.netloc.rfind("@") + 1
    return parts.netloc[start : start + len(host)]


class KeyStreams:
    """The ETSI GS QKD 004 streams of one KME."""

    def __init__(
        self,
        node_id: str,
        local_saes: frozenset[str],
        manager: KeyManager,
        router: Router,
        delivered: DeliveredKeys,
        peers: StreamPeers,
        limits: StreamLimits = StreamLimits(),
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_event: EventSink | None = None,
        book: RateBook | None = None,
    ) -> None:
        """`book`: the node's rate reservations, shared with its virtual links."""
        self.node_id = node_id
        self.local_saes = local_saes
        self.limits = limits
        self.counters = StreamCounters()
        self._manager = manager
        self._router = router
        self._delivered = delivered
        self._peers = peers
        self._clock = clock
        self._on_event = on_event
        self._streams: dict[uuid.UUID, StreamState] = {}
        self._retired: OrderedDict[uuid.UUID, RetiredStream] = OrderedDict()
        self.book = book or RateBook(router)
        self._reserved_local = 0
        self._background: set[asyncio.Task[None]] = set()

    def _spawn(self, call: Coroutine[Any, Any, object]) -> None:
        """Tell the other KME something, or fetch chunks, without waiting (a failure is left
        to the stream's TTL, or to the next read)."""

        task: asyncio.Task[Any] = asyncio.create_task(call)
        self._background.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, RelayError | KeyStoreError):
            logger.error("a stream's background task failed", exc_info=error)

    # -- what the application calls ----------------------------------------------------------
    async def open_connect(
        self,
        caller: str,
        source: str,
        destination: str,
        qos: StreamQos,
        ksid: uuid.UUID | None = None,
    ) -> OpenResult:
        """OPEN_CONNECT by SAE `caller` (its TLS identity; `source` is recorded only)."""
        result = await self._open(caller, source, destination, qos, ksid)
        self.counters.answers[f"open_connect {result.status.value}"] += 1
        return result

    async def _open(
        self,
        caller: str,
        source: str,
        destination: str,
        qos: StreamQos,
        ksid: uuid.UUID | None,
    ) -> OpenResult:
        if caller not in self.local_saes:  # an SAE of another KME: it has no streams here
            return OpenResult(StreamStatus.NO_QKD_CONNECTION, qos)
        if ksid is not None and ksid.int == 0:
            ksid = None
        if ksid is not None:
            stream = self._streams.get(ksid)
            if stream is not None:
                return await self._join(stream, caller)
            if ksid in self._retired:
                return OpenResult(StreamStatus.KSID_IN_USE, qos)
        peer_sae = sae_of_uri(destination)
        if sae_of_uri(source) is None or peer_sae is None or peer_sae == caller:
            return OpenResult(StreamStatus.NO_QKD_CONNECTION, qos)
        peer_node = self._manager.node_of(peer_sae)
        if peer_node is None or len(self._streams) >= self.limits.max_streams:
            return OpenResult(StreamStatus.NO_QKD_CONNECTION, qos)
        here = peer_node == self.node_id and peer_sae in self.local_saes
        route: list[str] | None = [self.node_id] if here else self._router.route(peer_node)
        if route is None:
            return OpenResult(StreamStatus.NO_QKD_CONNECTION, qos)
        hops = tuple(itertools.pairwise(route))
        if not here and not hops:  # an SAE of another domain: 020 carries no streams
            return OpenResult(StreamStatus.NO_QKD_CONNECTION, qos)
        granted = self._grant(qos, self._capacity(hops, here, max(1, qos.ttl)))
        if granted != qos or granted.max_bps < 1:
            return OpenResult(StreamStatus.QOS_NOT_MET, granted)
        ksid = ksid or uuid.uuid4()
        announcement = StreamAnnouncement(
            ksid=ksid,
            origin=self.node_id,
            source=caller,
            destination=peer_sae,
            qos=qos,
            hops=len(hops),
        )
        stream = StreamState(
            announcement,
            local_ends=frozenset({caller, peer_sae}) if here else frozenset({caller}),
            peer_node=None if here else peer_node,
            origin_here=True,
            expires_at=self._clock.monotonic() + qos.ttl,
            reserved=() if here else hops,
        )
        stream.opened.add(caller)
        self._streams[ksid] = stream
        self._reserve(stream, +1)
        if stream.peer_node is not None:
            status = StreamStatus.SUCCESS
            try:
                async with asyncio.timeout(qos.timeout / 1000):
                    await self._peers.announce(stream.peer_node, announcement)
            except TimeoutError:
                status = StreamStatus.TIMEOUT
                self._spawn(self._peers.closed(stream.peer_node, ksid, "timeout"))
            except RelayError as exc:
                log_event(logger, logging.INFO, "stream_refused", node=peer_node, reason=exc.reason)
                status = (
                    StreamStatus.KSID_IN_USE
                    if exc.reason is Reason.KSID_IN_USE
                    else StreamStatus.NO_QKD_CONNECTION
                )
            if stream.ended:  # closed (or expired) meanwhile: _end undid everything
                return OpenResult(StreamStatus.KSID_IN_USE, qos)
            if status is not StreamStatus.SUCCESS:
                self._reserve(stream, -1)
                del self._streams[ksid]
                return OpenResult(status, qos)
        self.counters.opened += 1
        stream.producer = asyncio.create_task(self._produce(stream), name=f"stream {ksid}")
        self._background.add(stream.producer)
        stream.producer.add_done_callback(self._spawned_done)
        self._event("stream_opened", stream)
        # Key for the stream's first lead is relayed before the answer (within the call's
        # timeout), so that the peer finds it when it connects; if the relay is slower, the
        # producer carries on all the same.
        deadline = self._clock.monotonic() + min(qos.timeout / 1000, _OPEN_WAIT_S)
        while stream.made == 0 and not stream.closed:
            left = deadline - self._clock.monotonic()
            if left <= 0:
                break
            await stream.wait(left)
        if stream.closed:
            return OpenResult(StreamStatus.KSID_IN_USE, qos)
        return OpenResult(StreamStatus.PEER_NOT_CONNECTED, qos, ksid)

    async def _join(self, stream: StreamState, caller: str) -> OpenResult:
        """The second application opens a stream: the one it was opened towards."""
        if stream.closed or caller in stream.opened or caller != stream.ann.destination:
            return OpenResult(StreamStatus.KSID_IN_USE, stream.qos)
        if caller not in stream.local_ends:
            return OpenResult(StreamStatus.KSID_IN_USE, stream.qos)
        if not stream.origin_here:
            assert stream.peer_node is not None
            try:
                async with asyncio.timeout(stream.qos.timeout / 1000):
                    await self._peers.connected(stream.peer_node, stream.ann.ksid)
            except TimeoutError:
                return OpenResult(StreamStatus.TIMEOUT, stream.qos)
            except RelayError as exc:
                log_event(logger, logging.INFO, "stream_connect_failed", reason=exc.reason)
                return OpenResult(StreamStatus.NO_QKD_CONNECTION, stream.qos)
        if stream.ended:  # closed while its peer was told
            return OpenResult(StreamStatus.KSID_IN_USE, stream.qos)
        stream.opened.add(caller)
        self._connected(stream)
        if not stream.origin_here:
            self._prefetch(stream)
        return OpenResult(StreamStatus.SUCCESS, stream.qos, stream.ann.ksid)

    def _prefetch(self, stream: StreamState) -> None:
        """At the destination's KME: take committed chunks out of the store ahead of the reads
        (a batch from SQLite costs milliseconds), no further than the retained window."""
        furthest = max(stream.read_to.values(), default=0)
        last = min(stream.made, furthest + self.limits.retained_chunks) - 1
        if last >= stream.taken:
            self._spawn(self._chunk(stream, last))

    def _connected(self, stream: StreamState) -> None:
        if stream.connected_at is None:
            stream.connect(self._clock.monotonic())
            self.counters.connected += 1
            stream.changed()

    async def get_key(
        self, caller: str, ksid: uuid.UUID, index: int | None, metadata_size: int
    ) -> ChunkResult:
        """GET_KEY by SAE `caller`: chunk `index` (None: the one after the last it read)."""
        result = await self._get(caller, ksid, index, metadata_size)
        self.counters.answers[f"get_key {result.status.value}"] += 1
        if result.status is StreamStatus.SUCCESS:
            self.counters.chunks_served += 1
        return result

    async def _get(
        self, caller: str, ksid: uuid.UUID, index: int | None, metadata_size: int
    ) -> ChunkResult:
        stream = self._streams.get(ksid)
        if stream is None or caller not in stream.opened or await self._expired(stream):
            return ChunkResult(StreamStatus.NOT_CONNECTED)
        if stream.connected_at is None:
            return ChunkResult(StreamStatus.NOT_CONNECTED)
        if index is None:
            index = stream.read_to.get(caller, 0)
        now = self._clock.monotonic()
        deadline = now + stream.qos.timeout / 1000
        if index < stream.floor or stream.due(index) > deadline:
            return ChunkResult(StreamStatus.INSUFFICIENT_KEY, index)
        while not (now >= stream.due(index) and index < stream.made):
            if stream.closed:
                return ChunkResult(StreamStatus.NOT_CONNECTED, index)
            if now >= deadline:
                return ChunkResult(StreamStatus.TIMEOUT, index)
            wake = deadline if now >= stream.due(index) else min(deadline, stream.due(index))
            await stream.wait(wake - now)
            now = self._clock.monotonic()
        if stream.closed:
            return ChunkResult(StreamStatus.NOT_CONNECTED, index)
        chunk = await self._chunk(stream, index)
        if stream.ended:  # closed while the chunk was taken
            return ChunkResult(StreamStatus.NOT_CONNECTED, index)
        if chunk is None:
            return ChunkResult(StreamStatus.INSUFFICIENT_KEY, index)
        key, arrived = chunk
        metadata = b""
        if stream.qos.metadata_mimetype:
            age_ms = max(0, round((self._clock.monotonic() - arrived) * 1000))
            metadata = json.dumps({"age": age_ms, "hops": stream.ann.hops}).encode()
            if metadata_size < len(metadata):
                return ChunkResult(
                    StreamStatus.METADATA_TOO_SMALL, index, metadata_size=len(metadata)
                )
        stream.read_to[caller] = max(stream.read_to.get(caller, 0), index + 1)
        if stream.origin_here:
            stream.changed()  # the producer may run further ahead now
        return ChunkResult(StreamStatus.SUCCESS, index, key, metadata, len(metadata))

    async def _chunk(self, stream: StreamState, index: int) -> tuple[bytes, float] | None:
        """Chunk `index` (committed at this end): held in memory, or, at the destination's
        KME, taken from the delivered-key store (a batch at a time). None when dropped."""
        held = stream.chunks.get(index)
        if held is not None or stream.origin_here:
            return held
        async with stream.take_lock:
            while stream.taken <= index < stream.made and not stream.closed:
                first = stream.taken
                last = min(stream.made, first + _TAKE_BATCH)
                got = await self._take(stream, first, last)
                if stream.ended:  # taken after the end: _end voided the rest, drop these
                    break
                now = self._clock.monotonic()
                for offset, key in enumerate(got):
                    if key is not None:
                        stream.keep(first + offset, key, now, 2 * self.limits.retained_chunks)
                stream.taken = last
        return stream.chunks.get(index)

    async def _take(self, stream: StreamState, first: int, last: int) -> list[bytes | None]:
        """Chunks first .. last-1 out of the delivered-key store (None for any not there)."""
        ann = stream.ann
        ids = [chunk_id(ann.ksid, i) for i in range(first, last)]

        def take(db: Any) -> list[bytes | None]:
            try:
                return [key for _, key in db.take(ann.destination, ann.source, ids)]
            except KeyNotFound:  # one of them expired or was withdrawn: the others one by one
                out: list[bytes | None] = []
                for key_id in ids:
                    try:
                        out.append(db.take(ann.destination, ann.source, [key_id])[0][1])
                    except KeyNotFound:
                        out.append(None)
                return out

        try:
            got: list[bytes | None] = await self._delivered.run(take)
            return got
        except KeyStoreError as exc:
            log_event(logger, logging.WARNING, "stream_take_failed", error=str(exc))
            return [None] * len(ids)

    async def close(self, caller: str, ksid: uuid.UUID) -> StreamStatus:
        """CLOSE by SAE `caller`: 0 also for a stream it had closed already."""
        status = await self._close(caller, ksid)
        self.counters.answers[f"close {status.value}"] += 1
        return status

    async def _close(self, caller: str, ksid: uuid.UUID) -> StreamStatus:
        stream = self._streams.get(ksid)
        if stream is None:
            retired = self._retired.get(ksid)
            if retired is not None and caller in retired.local_ends:
                return StreamStatus.SUCCESS
            return StreamStatus.NOT_CONNECTED
        if caller not in stream.opened:
            return StreamStatus.NOT_CONNECTED
        await self._end(stream, "closed", notify=True)
        return StreamStatus.SUCCESS

    async def update_qos(
        self,
        ksid: uuid.UUID,
        *,
        max_bps: int | None = None,
        min_bps: int | None = None,
        jitter: int | None = None,
        ttl: int | None = None,
    ) -> StreamQos:
        """Change a stream's QoS (an SDN controller's call, ETSI 015 `app_qos`), here at its
        origin and at the other end's KME; the new QoS. LookupError for no such stream,
        ValueError (what and why) for a QoS that cannot be had."""
        stream = self._streams.get(ksid)
        if stream is None:
            raise LookupError(f"no open stream {ksid} here")
        if not stream.origin_here:
            raise ValueError(
                f"the QoS of stream {ksid} is set at its origin, node {stream.ann.origin}"
            )
        old = stream.qos
        qos = old.but(
            max_bps=old.max_bps if max_bps is None else max_bps,
            min_bps=old.min_bps if min_bps is None else min_bps,
            jitter=old.jitter if jitter is None else jitter,
            ttl=old.ttl if ttl is None else ttl,
        )
        if qos.max_bps < 1 or qos.min_bps > qos.max_bps:
            raise ValueError(f"max_bandwidth {qos.max_bps} with min_bandwidth {qos.min_bps}")
        if not 1 <= qos.ttl <= self.limits.max_ttl_s:
            raise ValueError(f"ttl: 1 to {self.limits.max_ttl_s} s, not {qos.ttl}")
        here = stream.peer_node is None
        self._reserve(stream, -1)
        capacity = self._capacity(stream.reserved, here, qos.ttl)
        if qos.max_bps > capacity:
            self._reserve(stream, +1)
            raise ValueError(f"max_bandwidth {qos.max_bps}: the route can carry {capacity} bit/s")
        announcement = replace(stream.ann, qos=qos)
        stream.requalify(announcement, self._clock.monotonic())
        self._reserve(stream, +1)
        stream.changed()
        if stream.peer_node is not None:
            try:
                await self._peers.requalified(stream.peer_node, announcement)
            except RelayError as exc:  # its reads are then paced to the old rate
                log_event(logger, logging.WARNING, "stream_update_not_told", reason=exc.reason)
        self._event("stream_updated", stream)
        return qos

    # -- what the other KME says -------------------------------------------------------------
    def requalified(self, announcement: StreamAnnouncement, sender: str) -> None:
        """The origin `sender` changed the stream's QoS."""
        stream = self._from_peer(announcement.ksid, sender, origin_here=False)
        stream.requalify(replace(stream.ann, qos=announcement.qos), self._clock.monotonic())
        stream.changed()

    def announced(self, announcement: StreamAnnouncement, sender: str) -> None:
        """A stream towards one of this node's SAEs, from its origin `sender`."""
        if announcement.origin != sender:
            raise RelayError(f"{sender} announces a stream of {announcement.origin}")
        ksid = announcement.ksid
        if ksid in self._streams or ksid in self._retired:
            raise RelayError(f"stream {ksid} is known here", reason="ksid_in_use")
        if announcement.destination not in self.local_saes:
            raise RelayError(f"{self.node_id} serves no SAE {announcement.destination}")
        if len(self._streams) >= self.limits.max_streams:
            raise RelayError(f"{self.node_id} holds {self.limits.max_streams} streams already")
        self._streams[ksid] = StreamState(
            announcement,
            local_ends=frozenset({announcement.destination}),
            peer_node=sender,
            origin_here=False,
            expires_at=self._clock.monotonic() + announcement.qos.ttl,
        )

    def peer_connected(self, ksid: uuid.UUID, sender: str) -> None:
        """The destination's application opened stream `ksid` at `sender`."""
        stream = self._from_peer(ksid, sender, origin_here=True)
        self._connected(stream)

    async def progress(self, ksid: uuid.UUID, chunks: int, sender: str) -> None:
        """The origin `sender` committed chunks up to `chunks` here."""
        retired = self._retired.get(ksid)
        if retired is not None and retired.peer_node == sender and not retired.origin_here:
            # Committed after this end closed: withdraw them.
            last = min(chunks, retired.made + _VOID_BOUND)
            await self._void_range(ksid, retired.peer_node, retired.made, last)
            retired.made = max(retired.made, last)
            return
        stream = self._from_peer(ksid, sender, origin_here=False)
        if chunks > stream.made + self._progress_bound(stream):
            raise RelayError(f"progress to chunk {chunks} of stream {ksid}", reason="malformed")
        if chunks > stream.made:
            stream.made = chunks
            stream.changed()
            if stream.opened:
                self._prefetch(stream)

    async def peer_closed(self, ksid: uuid.UUID, reason: str, sender: str) -> None:
        """The other end ended the stream."""
        if ksid in self._retired:
            return
        await self._end(self._from_peer(ksid, sender), reason, notify=False)

    def _from_peer(
        self, ksid: uuid.UUID, sender: str, origin_here: bool | None = None
    ) -> StreamState:
        """The stream `ksid` whose other end `sender` is (and, when `origin_here` is given,
        of which this KME is the origin or not: each message comes from one end only)."""
        stream = self._streams.get(ksid)
        if (
            stream is None
            or stream.peer_node != sender
            or (origin_here is not None and stream.origin_here != origin_here)
        ):
            raise RelayError(f"no stream {ksid} with {sender} here", reason="unknown_stream")
        return stream

    def _progress_bound(self, stream: StreamState) -> int:
        """How far one progress message may move a stream on: a batch and the window."""
        return max(1, self.limits.batch_bits // stream.qos.chunk_bits) + (
            2 * self.limits.retained_chunks
        )

    # -- the stream's life -------------------------------------------------------------------
    def _capacity(self, hops: tuple[tuple[str, str], ...], here: bool, ttl_s: int) -> int:
        """The rate a new stream living `ttl_s` may reserve on `hops` (bit/s): on each hop, what
        the link adds per second and what it holds spread over that time (a link whose store is
        full adds nothing until key is drawn), less what this node reserved (`RateBook`)."""
        if here:
            return max(0, self.limits.local_max_bps - self._reserved_local)
        return self.book.left(hops, ttl_s)

    def _grant(self, asked: StreamQos, capacity: int) -> StreamQos:
        """What this KME can grant of `asked`: `asked` itself, or the counter-proposal."""
        limits = self.limits
        granted = asked
        if asked.metadata_mimetype not in ("", METADATA_MIMETYPE):
            granted = granted.but(metadata_mimetype=METADATA_MIMETYPE)
        if not 1 <= asked.key_chunk_size <= limits.max_chunk_bytes:
            chunk = min(max(asked.key_chunk_size, 1), limits.max_chunk_bytes)
            granted = granted.but(key_chunk_size=chunk)
        if asked.timeout > limits.max_timeout_ms:
            granted = granted.but(timeout=limits.max_timeout_ms)
        if not 1 <= asked.ttl <= limits.max_ttl_s:
            granted = granted.but(ttl=min(max(asked.ttl, 1), limits.max_ttl_s))
        max_bps = min(asked.max_bps, capacity) if asked.max_bps > 0 else capacity
        if max_bps != asked.max_bps:
            granted = granted.but(max_bps=max_bps)
        if granted.min_bps > granted.max_bps:
            granted = granted.but(min_bps=granted.max_bps)
        return granted

    def _reserve(self, stream: StreamState, sign: int) -> None:
        rate = sign * stream.qos.max_bps
        if stream.peer_node is None:
            self._reserved_local += rate
        self.book.reserve(stream.reserved, rate)

    async def _produce(self, stream: StreamState) -> None:
        """The origin's loop: make and relay chunks ahead of the stream's schedule."""
        qos, limits = stream.qos, self.limits
        lead_chunks = max(1, math.ceil(limits.lead_s * qos.max_bps / qos.chunk_bits))
        per_batch = max(1, limits.batch_bits // qos.chunk_bits)
        while not stream.closed:
            now = self._clock.monotonic()
            if stream.connected_at is None:
                want, low = lead_chunks, lead_chunks
            else:
                want = stream.due_count(now + limits.lead_s)
                low = stream.due_count(now + limits.lead_s / 2)
            # No further than the window ahead of the slowest reader here (both ends of a
            # stream between two SAEs of this node), so that no end loses a chunk it never read.
            slowest = min(stream.read_to.get(end, 0) for end in stream.local_ends)
            cap = slowest + limits.retained_chunks
            want, low = min(want, cap), min(low, cap)
            if stream.made >= low:
                if stream.connected_at is None or stream.made >= cap:
                    await stream.wait(1.0)
                else:
                    await stream.wait(stream.due(stream.made) - limits.lead_s / 2 - now)
                continue
            count = min(want - stream.made, per_batch)
            if not await self._make(stream, stream.made, count):
                await stream.wait(_RETRY_S)

    async def _make(self, stream: StreamState, first: int, count: int) -> bool:
        """Make chunks first .. first+count-1 and commit them at both ends."""
        ann = stream.ann
        keys = [secrets.token_bytes(ann.qos.key_chunk_size) for _ in range(count)]
        if stream.peer_node is not None:
            given = [(chunk_id(ann.ksid, first + i), key) for i, key in enumerate(keys)]
            ttl = max(1.0, stream.expires_at - self._clock.monotonic())
            try:
                await self._manager.relay_given(
                    ann.source, [ann.destination], given, ann.qos.chunk_bits, ttl_s=ttl
                )
            except (RelayError, KeyStoreError) as exc:
                self.counters.relay_failures += 1
                reason = exc.reason if isinstance(exc, RelayError) else "store_unavailable"
                log_event(logger, logging.INFO, "stream_relay_failed", reason=reason)
                return False
        if stream.closed:
            if stream.peer_node is not None:  # committed there after the close: withdraw
                with contextlib.suppress(RelayError, KeyStoreError):
                    ids = [chunk_id(ann.ksid, first + i) for i in range(count)]
                    await self._manager.withdraw([ann.destination], ids, "stream_closed")
            return True
        now = self._clock.monotonic()
        for offset, key in enumerate(keys):
            stream.keep(first + offset, key, now, 2 * self.limits.retained_chunks)
        stream.made = first + count
        self.counters.chunks_made += count
        if stream.peer_node is not None:
            try:
                await self._peers.progress(stream.peer_node, ann.ksid, stream.made)
            except RelayError as exc:  # the next batch's progress says it again
                log_event(logger, logging.INFO, "stream_progress_failed", reason=exc.reason)
        stream.changed()
        return True

    async def _expired(self, stream: StreamState) -> bool:
        if stream.closed:
            return True
        if self._clock.monotonic() < stream.expires_at:
            return False
        await self._end(stream, "ttl", notify=True)
        return True

    async def expire_once(self) -> int:
        """End every stream past its TTL, and every stream whose peer application has not
        opened it within `join_within_s` (its KSID lost, say); how many."""
        now = self._clock.monotonic()
        due = [s for s in self._streams.values() if now >= s.expires_at]
        unjoined = [
            s
            for s in self._streams.values()
            if s.connected_at is None and now >= s.opened_at + self.limits.join_within_s
        ]
        for stream in due:
            await self._end(stream, "ttl", notify=True)
        for stream in unjoined:
            await self._end(stream, "not_joined", notify=True)
        return len(due) + len(unjoined)

    async def expire_forever(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_once()
            except Exception:  # a bug here must not end expiry for good
                logger.exception("stream expiry failed")

    async def _end(self, stream: StreamState, reason: str, *, notify: bool) -> None:
        """The stream is over at this KME: forget its key, tell the other end's KME."""
        if stream.closed:
            return
        stream.closed = True
        ksid = stream.ann.ksid
        self._streams.pop(ksid, None)
        retired = RetiredStream(
            stream.local_ends, stream.peer_node, stream.origin_here, stream.made
        )
        self._retired[ksid] = retired
        while len(self._retired) > _RETIRED_KEPT:
            self._retired.popitem(last=False)
        if stream.origin_here:
            self._reserve(stream, -1)
        stream.chunks.clear()
        stream.changed()
        if reason in ("ttl", "not_joined"):
            self.counters.expired += 1
        else:
            self.counters.closed += 1
        self._event("stream_closed", stream, reason=reason)
        # The producer is not cancelled: a relay it has in flight may commit at the peer, and
        # only the producer can then withdraw what it made (`_make`); woken, it ends by itself.
        if not stream.origin_here:
            async with stream.take_lock:
                await self._void_range(ksid, stream.peer_node, stream.taken, stream.made)
                stream.taken = retired.made = max(retired.made, stream.made)
        if notify and stream.peer_node is not None:
            try:
                await self._peers.closed(stream.peer_node, ksid, reason)
            except RelayError as exc:  # its TTL ends it there
                log_event(logger, logging.INFO, "stream_close_not_told", reason=exc.reason)

    async def _void_range(self, ksid: uuid.UUID, origin: str | None, first: int, last: int) -> None:
        """Withdraw chunks first .. last-1 of stream `ksid` (relayed by `origin`) from this
        node's delivered-key store."""
        if last <= first or origin is None:
            return
        ids = [chunk_id(ksid, i) for i in range(first, last)]
        try:
            await self._delivered.run(lambda db: db.void(origin, ids))
        except KeyStoreError as exc:  # their TTL ends them
            log_event(logger, logging.WARNING, "stream_void_failed", error=str(exc))

    async def close_all(self) -> None:
        """At shutdown: stop making key (streams end with the node)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- status ------------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """The open streams, for status and the SDN view (no key material)."""
        now = self._clock.monotonic()
        out = []
        for stream in self._streams.values():
            ann = stream.ann
            out.append(
                {
                    "ksid": str(ann.ksid),
                    "source": ann.source,
                    "destination": ann.destination,
                    "origin": ann.origin,
                    "peer_node": stream.peer_node or self.node_id,
                    "connected": stream.connected_at is not None,
                    "key_chunk_size": ann.qos.key_chunk_size,
                    "max_bps": ann.qos.max_bps,
                    "min_bps": ann.qos.min_bps,
                    "priority": ann.qos.priority,
                    "ttl": ann.qos.ttl,
                    "ttl_left_s": max(0.0, round(stream.expires_at - now, 1)),
                    "chunks_made": stream.made,
                    "hops": ann.hops,
                    "route": [a for a, _ in stream.reserved] + [b for _, b in stream.reserved[-1:]],
                    "jitter": ann.qos.jitter,
                    "created": stream.opened_wall,
                    "expires_in_s": max(0.0, stream.expires_at - now),
                }
            )
        return out

    def _event(self, kind: str, stream: StreamState, **fields: Any) -> None:
        if self._on_event is None:
            return
        ann = stream.ann
        self._on_event(
            kind,
            {
                "node": self.node_id,
                "ksid": str(ann.ksid),
                "source": ann.source,
                "destination": ann.destination,
                "max_bps": ann.qos.max_bps,
                "key_chunk_size": ann.qos.key_chunk_size,
                "at": time.time(),
                **fields,
            },
        )
