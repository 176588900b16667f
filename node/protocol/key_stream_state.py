"""The state of one ETSI GS QKD 004 stream at one KME: its ends, its schedule and the chunks it
holds (`StreamState`), and what is remembered of it once it ended (`RetiredStream`). The
protocol that drives them is `key_streams.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from .key_stream_messages import StreamAnnouncement, StreamQos

__all__ = ["RetiredStream", "StreamState"]


@dataclass(slots=True)
class RetiredStream:
    """What this KME remembers of a stream that ended (a few dozen bytes, kept by the
    hundred thousand): who may close it again, and what may still arrive for it."""

    local_ends: frozenset[str]
    peer_node: str | None
    origin_here: bool
    made: int


class StreamState:
    """One stream as this KME holds it (one end, or both when both SAEs are served here)."""

    def __init__(
        self,
        announcement: StreamAnnouncement,
        *,
        local_ends: frozenset[str],
        peer_node: str | None,
        origin_here: bool,
        expires_at: float,
        reserved: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.ann = announcement
        self.local_ends = local_ends
        self.peer_node = peer_node  # the other end's node (None: both ends here)
        self.origin_here = origin_here
        self.expires_at = expires_at
        self.opened_at = expires_at - announcement.qos.ttl
        self.opened_wall = time.time()
        self.reserved = reserved  # hops whose rate this stream reserved (origin only)
        self.opened: set[str] = set()
        self.connected_at: float | None = None
        # The schedule: chunk i >= anchor_index is due at anchor_time + (i - anchor_index) x
        # chunk bits / Max_bps (a QoS change moves the anchor).
        self.anchor_time = 0.0
        self.anchor_index = 0
        self.settled_at = 0.0  # chunks below anchor_index were due by then
        self.made = 0  # chunks 0 .. made-1 are committed at this end
        self.taken = 0  # destination side: chunks moved out of the delivered-key store
        self.chunks: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.floor = 0  # chunks below were dropped at this end
        self.read_to: dict[str, int] = {}  # end -> highest index read + 1
        self.closed = False
        self.producer: asyncio.Task[None] | None = None
        self.take_lock = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def qos(self) -> StreamQos:
        return self.ann.qos

    @property
    def ended(self) -> bool:
        """`closed`, read anew after an await (a property, so type checkers do not assume it
        kept the value it had before)."""
        return self.closed

    def due(self, index: int) -> float:
        """When chunk `index` is due (connected streams only)."""
        assert self.connected_at is not None
        if index < self.anchor_index:
            return self.settled_at  # due before the last QoS change already
        period = self.qos.chunk_bits / self.qos.max_bps
        return self.anchor_time + (index - self.anchor_index) * period

    def due_count(self, at: float) -> int:
        """How many chunks are due by `at` (none before the stream connected)."""
        if self.connected_at is None:
            return 0
        if at < self.anchor_time:
            return self.anchor_index
        rate = self.qos.max_bps / self.qos.chunk_bits
        return self.anchor_index + 1 + math.floor((at - self.anchor_time) * rate)

    def connect(self, at: float) -> None:
        self.connected_at = self.anchor_time = self.settled_at = at
        self.anchor_index = 0

    def requalify(self, announcement: StreamAnnouncement, at: float) -> None:
        """New QoS from `at` on: what was due stays due; the next chunk comes one period of
        the new rate later."""
        if self.connected_at is not None:
            next_index = self.due_count(at)
            self.ann = announcement
            self.anchor_index = next_index
            self.settled_at = at
            self.anchor_time = at + self.qos.chunk_bits / self.qos.max_bps
        else:
            self.ann = announcement
        self.expires_at = self.opened_at + announcement.qos.ttl

    def changed(self) -> None:
        """Wake everything waiting on the stream."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until the stream changes or `seconds` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._changed.wait()

    def keep(self, index: int, key: bytes, at: float, cap: int) -> None:
        self.chunks[index] = (key, at)
        while len(self.chunks) > cap:
            dropped, _ = self.chunks.popitem(last=False)
            self.floor = max(self.floor, dropped + 1)
