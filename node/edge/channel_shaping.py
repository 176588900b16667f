"""Shaping of a node's classical messages inside the node: delay, jitter, loss and a rate limit.

The process runtime runs every node in one network namespace and a Docker host may lack the
kernel's netem, so the node emulates them itself. The controller sets a `Shaping` toward one peer
or toward every peer (`ChannelShaping.set`; a peer's own shaping takes precedence over the
node-wide one). Each message the node sends to a peer over gRPC — the link's classical session
(each end shapes what it sends), relay frames, settle and void calls, link-state adverts, and
its answers to the peer's relay calls — is held back until the time it would arrive over such a
path:

* rate: messages toward one peer (or toward all, for the node-wide shaping) leave one after the
  other, each taking size x 8 / `rate_kbit` to send, so a burst queues as behind a slow
  interface;
* delay and jitter: each then takes `delay_ms` plus a uniform draw within +-`jitter_ms` (netem's
  default distribution), never less than nothing;
* loss: gRPC runs over TCP, which never loses a message: a lost segment is sent again after a
  retransmission timeout (RTO). So a message is lost with probability `loss_percent` and then
  costs one RTO, ``200 ms + 2 x (delay + jitter)`` (Linux's 200 ms floor over its round-trip
  estimate), and every retransmission is lost again with the same probability, the RTO doubling
  each time (up to 120 s), as TCP's exponential back-off does; after 15 retransmissions (Linux's
  tcp_retries2) the message goes through anyway, where TCP would drop the connection;
* order: a stream delivers in order, so a message never overtakes the one before it on the same
  `Flow`: a delayed or retransmitted message holds up those behind it (head-of-line blocking).

Not emulated: the photon stream (it stands for the fibre, whose losses are the quantum
channel's: `qkdnet.node.core.channel_change.ChannelChange`), the orchestrator's control calls
and the ETSI key API (kernel netem on Docker delays those too), segmentation (a message is one
unit: its loss costs one RTO whatever its size), congestion control (no window shrinks after a
loss).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALL_PEERS",
    "MAX_RETRANSMISSIONS",
    "MAX_RTO_S",
    "MIN_RTO_S",
    "ChannelShaping",
    "Flow",
    "ShapedStream",
    "Shaping",
]

ALL_PEERS = "*"
"""The scope of a node-wide shaping (every peer without one of its own)."""
MIN_RTO_S = 0.2
"""Linux's floor of the retransmission timeout (TCP_RTO_MIN)."""
MAX_RTO_S = 120.0
"""Linux's ceiling of the retransmission timeout (TCP_RTO_MAX)."""
MAX_RETRANSMISSIONS = 15
"""Linux's tcp_retries2: after this many, TCP gives up on the connection."""

_MAX_DELAY_MS = 60_000.0
_MAX_RATE_KBIT = 100e6  # 100 Gbit/s


@dataclass(frozen=True)
class Shaping:
    """What happens to each message sent: delay and jitter (ms), loss (%), rate (kbit/s, 0:
    unlimited). All zero: nothing."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_kbit: float = 0.0

    def __post_init__(self) -> None:
        limits = {
            "delay_ms": _MAX_DELAY_MS,
            "jitter_ms": _MAX_DELAY_MS,
            "loss_percent": 100.0,
            "rate_kbit": _MAX_RATE_KBIT,
        }
        for name, high in limits.items():
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= high):
                raise ValueError(f"{name} must be in [0, {high:g}], got {value!r}")

    @property
    def is_none(self) -> bool:
        """Whether this shapes nothing."""
        return self == Shaping()

    @property
    def rto_s(self) -> float:
        """The first retransmission timeout of a lost message, in seconds."""
        return MIN_RTO_S + 2 * (self.delay_ms + self.jitter_ms) / 1000


class Flow:
    """One ordered sequence of messages (a stream, or the calls over one channel): none
    arrives before the one sent before it."""

    def __init__(self) -> None:
        self.last_arrival = -math.inf


class ChannelShaping:
    """The shaping a node applies to what it sends, by peer, and when each message arrives."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._specs: dict[str, Shaping] = {}
        self._free_at: dict[str, float] = {}  # scope -> when its last message is sent

    def now(self) -> float:
        """The clock arrival times are on."""
        return self._clock()

    def set(self, peer: str, shaping: Shaping) -> None:
        """Shape what is sent to `peer` (`ALL_PEERS`: to every peer) as `shaping` says,
        replacing what was set there; a shaping that does nothing removes it."""
        if shaping.is_none:
            self._specs.pop(peer, None)
            self._free_at.pop(peer, None)
        else:
            self._specs[peer] = shaping

    def clear(self) -> None:
        """No shaping at all."""
        self._specs.clear()
        self._free_at.clear()

    def settings(self) -> dict[str, Shaping]:
        """What is set, by peer (`ALL_PEERS` for the node-wide shaping)."""
        return dict(self._specs)

    def toward(self, peer: str) -> tuple[str, Shaping] | None:
        """The scope and shaping that apply to messages for `peer`, if any."""
        for scope in (peer, ALL_PEERS):
            spec = self._specs.get(scope)
            if spec is not None:
                return scope, spec
        return None

    def arrival(self, peer: str, nbytes: int, flow: Flow) -> float | None:
        """When a message of `nbytes` sent now on `flow` to `peer` arrives (on `now()`'s
        clock); None when nothing holds it back (no shaping, nothing ahead of it)."""
        now = self._clock()
        found = self.toward(peer)
        if found is None:
            if flow.last_arrival <= now:
                return None
            return flow.last_arrival  # behind a message still on its way
        scope, spec = found
        sent = now
        if spec.rate_kbit:
            sent = max(now, self._free_at.get(scope, now)) + nbytes * 8 / (spec.rate_kbit * 1e3)
            self._free_at[scope] = sent
        delay_ms = spec.delay_ms
        if spec.jitter_ms:
            delay_ms = max(0.0, delay_ms + self._rng.uniform(-spec.jitter_ms, spec.jitter_ms))
        arrival = max(sent + delay_ms / 1e3 + self._retransmissions(spec), flow.last_arrival)
        flow.last_arrival = arrival
        return arrival

    def _retransmissions(self, spec: Shaping) -> float:
        """Seconds lost to retransmission timeouts: one RTO per loss, doubling each time."""
        loss = spec.loss_percent / 100
        waited = 0.0
        rto = spec.rto_s
        for _ in range(MAX_RETRANSMISSIONS):
            if not loss or self._rng.random() >= loss:
                break
            waited += rto
            rto = min(2 * rto, MAX_RTO_S)
        return waited

    async def hold(self, peer: str, nbytes: int, flow: Flow) -> None:
        """Wait until a message of `nbytes` sent now to `peer` on `flow` would arrive (for a
        call that waits for its answer anyway)."""
        arrival = self.arrival(peer, nbytes, flow)
        if arrival is not None:
            delay = arrival - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)


class ShapedStream:
    """A gRPC stream (either side) whose writes reach the peer when `ChannelShaping` says:
    a write returns at once and the message goes out at its arrival time, in order, so that
    messages in flight overlap as they would on a real path. Reads pass through.

    `close()` drops what is still on its way (the session is over). A write that failed in the
    background is raised by the next write."""

    def __init__(self, stream: Any, shaping: ChannelShaping, peer: str, flow: Flow) -> None:
        self._stream = stream
        self._shaping = shaping
        self._peer = peer
        self._flow = flow
        self._queue: deque[tuple[float, Any]] = deque()
        self._ready = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def read(self) -> Any:
        return await self._stream.read()

    async def write(self, message: Any) -> None:
        if self._error is not None:
            raise self._error
        arrival = self._shaping.arrival(self._peer, int(message.ByteSize()), self._flow)
        if arrival is None and self._pump is None:
            await self._stream.write(message)  # never shaped yet: no task, no hop
            return
        self._queue.append((arrival if arrival is not None else -math.inf, message))
        self._ready.set()
        if self._pump is None:
            self._pump = asyncio.create_task(self._deliver(), name=f"shaped to {self._peer}")

    async def _deliver(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                arrival, message = self._queue[0]
                delay = arrival - self._shaping.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._queue.popleft()
                await self._stream.write(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: the session sees it on its next write
            self._error = exc

    def close(self) -> None:
        """Stop delivering (what is still queued is dropped with the session)."""
        if self._pump is not None:
            self._pump.cancel()
        self._queue.clear()
