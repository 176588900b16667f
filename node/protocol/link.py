"""One end of a QKD link, whatever its role: what both ends share, and what they compute alike.

`LinkEnd` holds an end's configuration, key store, authenticator and statistics, and the live
faults the controller sets on it: a cut (`set_cut`) ends the session and starts none until
restored (state "cut"); a channel change (`change_channel`) applies to every frame the
transmitter starts emulating after it, and the model figures of both ends follow it at once,
while the parameters checked at Hello stay the configured ones. What stands between the ends
(delay, loss, tampering: `qkdnet.node.edge.channel_shaping` in the node,
`qkdnet.node.testing` under test) is the transport's business: an end only sees the messages
that arrive.

The two roles of decoy-state BB84 are `transmitter.TransmitterLink` and
`receiver.ReceiverLink`; the protocol they speak is described in `transmitter.py`. Both derive
the same sifting from the exchanged bases (`sift`), check the same parameter digest at Hello
(`params_digest`) and store a distilled block the same way (`store_block`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..config import LinkConfig
from ..core.channel_model import ChannelChange, ChannelParameters
from ..errors import LinkError, ProtocolError, RoundAborted
from ..link_names import link_id_for
from ..store.key_store import KeyStore, KeyStoreDb
from ..structured_log import log_event
from .authentication import LinkAuthenticator
from .clock import SYSTEM_CLOCK, Clock
from .conversation import Conversation
from .link_messages import Hello, HelloReply, PhotonChunk
from .link_stats import LinkStats
from .link_transport import Duplex, LinkConnector, PhotonSink

__all__ = ["LinkEnd", "Sifted", "link_id_for", "params_digest", "sift", "store_block"]

logger = logging.getLogger("qkdnet.node.protocol.link")
T = TypeVar("T")

_INLINE_ELEMENTS = 20_000  # Cascade steps up to this many ranges run on the event loop
_STORE_POLL_S = 1.0  # how often a transmitter whose store is full looks again
_UNWIND_S = 10.0  # how long a cut waits for the cancelled session to end (see _unless_cut)


def params_digest(link_id: str, params: ChannelParameters, cfg: LinkConfig) -> bytes:
    """What both ends must be configured alike in: the configured channel (live changes
    excluded: each end gets them from the controller, and a session must come up whatever
    order they arrive in) and the sampling both ends derive positions from."""
    text = f"{link_id}|{params!r}|{cfg.processing.pe_sample_fraction}"
    return hashlib.sha256(text.encode()).digest()


def _sample_mask(seed: int, count: int, fraction: float) -> NDArray[np.bool_]:
    """Which signal sifted positions go to parameter estimation (public, from the seed)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.random(count) < fraction


@dataclass
class Sifted:
    """What both ends derive from the sifting exchange."""

    key_idx: NDArray[np.intp]  # detections whose bits form the key
    disclosed_idx: NDArray[np.intp]  # detections whose bits are disclosed, in order
    groups: list[tuple[int, int]]  # (class, count) of the disclosed decoy/vacuum groups
    sample_count: int
    sifted_per_class: list[int]


def sift(
    alice_basis: NDArray[np.uint8],
    bob_basis: NDArray[np.uint8],
    classes: NDArray[np.uint8],
    sample_seed: int,
    sample_fraction: float,
) -> Sifted:
    match = alice_basis == bob_basis
    per_class = [np.flatnonzero(match & (classes == c)) for c in range(3)]
    signal = per_class[0]
    sample = _sample_mask(sample_seed, signal.size, sample_fraction)
    disclosed = np.concatenate([per_class[1], per_class[2], signal[sample]])
    return Sifted(
        key_idx=signal[~sample],
        disclosed_idx=disclosed,
        groups=[(1, per_class[1].size), (2, per_class[2].size)],
        sample_count=int(sample.sum()),
        sifted_per_class=[int(p.size) for p in per_class],
    )


class LinkEnd:
    """What both ends share: configuration, store, authenticator, statistics."""

    role = ""

    def __init__(
        self,
        *,
        node_id: str,
        config: LinkConfig,
        store: KeyStore,
        auth: LinkAuthenticator,
        executor: Executor,
        clock: Clock = SYSTEM_CLOCK,
        message_timeout_s: float = 120.0,
    ) -> None:
        """`clock` paces photons and times back-off and pauses; `message_timeout_s` is how long
        a session waits for the peer's next message in a round before it ends."""
        self.node_id = node_id
        self.clock = clock
        self.message_timeout_s = message_timeout_s
        self.peer = config.peer
        self.link_id = link_id_for(node_id, config.peer)
        self.config = config
        # The configured channel, and what it is with a live change (faults) applied: what the
        # next frames are emulated with and the model figures follow.
        self.configured = config.channel.parameters()
        self.change = ChannelChange()
        self.params = self.configured
        self._cut = False
        self._cut_now = asyncio.Event()  # set while the link is cut
        self._uncut = asyncio.Event()  # set while it is not
        self._unwinding: set[asyncio.Future[Any]] = set()  # cancelled sessions still ending
        self._uncut.set()
        self.processing = config.processing
        self.store = store
        self.auth = auth
        self._executor = executor
        self.stats = LinkStats(
            link_id=self.link_id,
            peer=self.peer,
            role=self.role,
            params=self.params,
            pe_sample_fraction=self.processing.pe_sample_fraction,
            kind=config.kind,
        )
        self._frame_sifted = 0
        seed = self.processing.seed
        self._rng = np.random.default_rng(
            None if seed is None else [seed, 0 if self.role == "transmitter" else 1]
        )

    @property
    def cut(self) -> bool:
        """Whether the link is cut (no session runs until it is restored)."""
        return self._cut

    def set_cut(self, cut: bool) -> None:
        """Cut the link (the session in progress ends, none starts; state "cut") or restore it.

        Only the session is this object's business: the agent refuses the peer's calls too."""
        if cut == self._cut:
            return
        self._cut = cut
        if cut:
            self._uncut.clear()
            self._cut_now.set()
            self.stats.state = "cut"
        else:
            self._cut_now.clear()
            self._uncut.set()
        self._cut_changed()
        log_event(
            logger,
            logging.WARNING if cut else logging.INFO,
            "link_cut" if cut else "link_restored",
            link=self.link_id,
        )

    def _cut_changed(self) -> None:
        """What an end does when the link is cut or restored."""

    def change_channel(self, change: ChannelChange) -> None:
        """Emulate and model the next frames with `change` applied to the configured channel
        (replacing any earlier change). ValueError when the result is not a valid channel."""
        params = change.apply(self.configured)
        self.change = change
        self.params = params
        self.stats.params = params
        log_event(
            logger,
            logging.WARNING if not change.is_none else logging.INFO,
            "channel_changed",
            link=self.link_id,
            eavesdrop_fraction=params.eavesdrop_fraction,
            extra_loss_db=params.extra_loss_db,
            misalignment_error=params.misalignment_error,
        )

    def _conversation_for(self, stream: Duplex) -> Conversation:
        return Conversation(
            stream,
            self.auth,
            link_id=self.link_id,
            sender=self.node_id,
            timeout=self.message_timeout_s,
        )

    async def _compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run numpy-heavy work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _maybe_compute(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Small steps (about a millisecond) run in place: a thread hop would cost as much."""
        if size > _INLINE_ELEMENTS:
            return await self._compute(fn, *args)
        return fn(*args)

    async def refresh_store_level(self) -> None:
        self.stats.store = await self.store.run(lambda db: db.level())

    def _reject(self, exc: LinkError) -> None:
        self.stats.rejected[exc.reason] += 1
        log_event(
            logger,
            logging.WARNING,
            "message_rejected",
            link=self.link_id,
            reason=exc.reason,
            detail=str(exc),
        )

    def _aborted(self, frame: int, exc: RoundAborted) -> None:
        self.stats.record_abort(exc.reason)
        log_event(
            logger, logging.INFO, "frame_aborted", link=self.link_id, frame=frame, reason=exc.reason
        )

    async def close(self) -> None:
        """Release what the end holds (its store; a kind's own resources too)."""
        await self.store.close()


async def store_block(
    store: KeyStore,
    block_id: str,
    frame: int,
    final: NDArray[np.uint8],
    refill: tuple[int, int],
    *,
    pending: bool,
) -> None:
    """Split the distilled bits into pad refills and the key block; store them in one go."""
    forward_bits = 64 * refill[0]
    backward_bits = 64 * refill[1]
    forward = np.packbits(final[:forward_bits]).tobytes()
    backward = np.packbits(final[forward_bits : forward_bits + backward_bits]).tobytes()
    block = final[forward_bits + backward_bits :]
    packed = np.packbits(block).tobytes()
    nbits = int(block.size)

    def write(db: KeyStoreDb) -> None:
        refills = {0: forward, 1: backward}
        db.add_block(block_id, frame, packed, nbits, pending=pending, refill=refills)

    await store.run(write)


class SessionTransmitter(LinkEnd):
    """The transmitting end of a link of any kind: it opens each session through its
    `LinkConnector`, settles the blocks it holds as pending with the receiver (Hello), then
    distils key (`distil`, the kind's protocol) until the session ends, and connects again with
    back-off; a cut ends the session and holds the next until the link is restored."""

    role = "transmitter"

    def __init__(self, *, connector: LinkConnector, **kwargs: Any) -> None:
        """`connector` opens each session's streams to the receiver (link_transport.py)."""
        super().__init__(**kwargs)
        self._connect = connector

    async def distil(self, conv: Conversation, photons: PhotonSink) -> None:
        """The kind's protocol for one session, after Hello: returns or raises when the
        session is over."""
        raise NotImplementedError

    async def while_store_full(self, conv: Conversation | None = None) -> None:
        """Start no frame while the store holds `store_max_bits` of unconsumed key; go on once
        applications have taken an eighth of it (the frames in flight still land: the store
        may pass the cap by three frames).

        Key is never discarded to make room: a block both ends hold may be in use at the other
        end by a relay. The session stays up and silent meanwhile (no message, so no
        authentication pad is spent; the receiver waits for the next round without a timeout),
        so the link stays up for routing and relays draw on its store as usual."""
        cap = self.processing.store_max_bits
        await self.refresh_store_level()
        if self.stats.store.bits < cap:
            return
        log_event(
            logger,
            logging.INFO,
            "distilling_paused",
            link=self.link_id,
            store_bits=self.stats.store.bits,
            store_max_bits=cap,
        )
        self.stats.state = "full"
        # A silent session may have died (the receiver restarted): then end it, so that a new
        # one starts and the receiver serves, and so reports, the link again.
        ended = asyncio.ensure_future(conv.wait_closed()) if conv is not None else None
        try:
            while self.stats.store.bits > cap - cap // 8:
                await self.clock.sleep(_STORE_POLL_S)
                if ended is not None and ended.done():
                    raise LinkError("the session ended while the store was full", reason="closed")
                await self.refresh_store_level()
        finally:
            if ended is not None:
                ended.cancel()
            if self.stats.state == "full":  # not cut meanwhile
                self.stats.state = "running"
        log_event(
            logger,
            logging.INFO,
            "distilling_resumed",
            link=self.link_id,
            store_bits=self.stats.store.bits,
        )

    async def run(self) -> None:
        """Run sessions forever (until cancelled)."""
        backoff = 0.2
        await self.refresh_store_level()
        while True:
            if not self._uncut.is_set():
                self.stats.state = "cut"
                await self._uncut.wait()
                backoff = 0.2
                continue
            self.stats.state = "connecting"
            started = self.clock.monotonic()
            try:
                await self._unless_cut(self._session())
            except* Exception as group:
                for exc in group.exceptions:
                    self._session_failed(exc)
            if not self._uncut.is_set():  # cut: the session was ended for it
                continue
            if self.clock.monotonic() - started > 10:
                backoff = 0.2
            self.stats.state = "backoff"
            await self._unless_cut(self.clock.sleep(backoff))
            backoff = min(backoff * 2, 5.0)

    async def _unless_cut(self, work: Coroutine[Any, Any, Any]) -> None:
        """Await `work`, cancelling it as soon as the link is cut (its exception propagates).

        A cancelled session gets `_UNWIND_S` to end; one that does not (a write its peer no
        longer reads) is left to finish in the background, so that a restore is never kept
        waiting behind it."""
        task = asyncio.ensure_future(work)
        cut = asyncio.ensure_future(self._cut_now.wait())
        try:
            await asyncio.wait({task, cut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=_UNWIND_S)
        if not task.done():
            self._unwinding.add(task)
            task.add_done_callback(self._unwound)
            log_event(logger, logging.WARNING, "session_unwinding", link=self.link_id)
            return
        if not task.cancelled():
            task.result()

    def _unwound(self, task: asyncio.Future[Any]) -> None:
        self._unwinding.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._session_failed(task.exception())  # type: ignore[arg-type]

    def _session_failed(self, exc: BaseException) -> None:
        if isinstance(exc, LinkError) and exc.reason in (
            "bad_tag",
            "replay",
            "malformed",
            "no_pad",
        ):
            self._reject(exc)
        if isinstance(exc, LinkError | OSError):
            detail = str(exc) or type(exc).__name__
        else:  # a bug: keep the traceback in the log
            fields = {"link": self.link_id}
            logger.error("link session crashed", exc_info=exc, extra={"fields": fields})
            detail = repr(exc)
        self.stats.last_fault = detail
        log_event(logger, logging.WARNING, "session_ended", link=self.link_id, detail=detail)

    async def _session(self) -> None:
        async with self._connect() as (classical, photons):
            conv = self._conversation_for(classical)
            await self._hello(conv)
            self.stats.state = "running"
            log_event(logger, logging.INFO, "session_started", link=self.link_id)
            await self.distil(conv, photons)

    async def _hello(self, conv: Conversation) -> None:
        pending = await self.store.run(lambda db: db.pending_blocks())
        conv.frame = 0
        await conv.send(
            Hello(
                pending_blocks=tuple(pending),
                parameters_digest=params_digest(self.link_id, self.configured, self.config),
            )
        )
        reply = await conv.expect(HelloReply)
        held = set(reply.held_blocks)
        if not held <= set(pending):
            raise ProtocolError("receiver claims blocks that were never pending here")
        await self.store.run(lambda db: db.confirm_blocks(held))
        await self.store.run(lambda db: db.discard_pending([b for b in pending if b not in held]))
        await self.auth.reload_pads()
        if pending:
            log_event(
                logger,
                logging.INFO,
                "pending_settled",
                link=self.link_id,
                confirmed=len(held),
                discarded=len(pending) - len(held),
            )
        await self.refresh_store_level()


class SessionReceiver(LinkEnd):
    """The receiving end of a link of any kind: it serves the sessions the transmitter opens
    (a newer one replaces an older), settles pending blocks (Hello), then answers (`answer`,
    the kind's protocol); a cut ends the session in progress."""

    role = "receiver"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._session_task: asyncio.Task[Any] | None = None
        self.stats.state = "waiting"

    def _cut_changed(self) -> None:
        if self.cut and self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
        elif not self.cut:
            self.stats.state = "waiting"

    async def answer(self, conv: Conversation) -> None:
        """The kind's protocol for one session, after Hello: returns or raises when the
        session is over."""
        raise NotImplementedError

    async def receive_photons(self, chunks: AsyncIterator[PhotonChunk]) -> int:
        """What arrives on the quantum channel; a kind without one refuses it."""
        async for _ in chunks:
            raise ProtocolError("this link kind has no quantum channel")
        return 0

    async def serve(self, stream: Duplex) -> None:
        """Serve one classical session; replaces any session still running for this link."""
        if self.cut:
            raise LinkError("the link is cut", reason="cut")
        if self._session_task is not None and not self._session_task.done():
            self._session_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkError):
                await self._session_task
        self._session_task = asyncio.current_task()
        conv = self._conversation_for(stream)
        self.stats.state = "running"
        try:
            await self._hello(conv)
            await self.answer(conv)
        except LinkError as exc:
            if exc.reason in ("bad_tag", "replay", "malformed", "no_pad"):
                self._reject(exc)
            self.stats.last_fault = str(exc) or type(exc).__name__
            raise
        finally:
            self.stats.state = "cut" if self.cut else "waiting"

    async def _hello(self, conv: Conversation) -> None:
        hello = await conv.expect(Hello)
        if hello.parameters_digest != params_digest(self.link_id, self.configured, self.config):
            raise ProtocolError("the two ends of the link are configured differently")
        pending = list(hello.pending_blocks)
        held = await self.store.run(lambda db: db.held_blocks(pending))
        await conv.send(HelloReply(held_blocks=tuple(held)))
        await self.refresh_store_level()
