"""One end of a QKD link, whatever its role: what both ends share, and what they compute alike.

`LinkEnd` holds an end's configuration, key store, authenticator and statistics, and the live
faults the controller sets on it: a cut (`set_cut`) ends the session and starts none until
restored (state "cut"); a channel change (`change_channel`) applies to every frame the
transmitter starts emulating after it, and the model figures of both ends follow it at once,
while the parameters checked at Hello stay the configured ones. What stands between the ends
(delay, loss, tampering: `qkdnet.node.edge.channel_shaping` and `classical_faults` in the node,
`qkdnet.node.testing` under test) is the transport's business: an end only sees the messages
that arrive.

The two roles of decoy-state BB84 are `transmitter.TransmitterLink` and
`receiver.ReceiverLink`; the protocol they speak is described in `transmitter.py`. Both derive
the same sifting from the exchanged bases (`sift`), check the same parameter digest at Hello
(`params_digest`) and store a distilled block the same way (`store_block`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..config import LinkConfig
from ..core.channel_model import ChannelChange, ChannelParameters
from ..errors import LinkError, RoundAborted
from ..link_names import link_id_for
from ..store.key_store import KeyStore, KeyStoreDb
from ..structured_log import log_event
from .authentication import LinkAuthenticator
from .clock import SYSTEM_CLOCK, Clock
from .conversation import Conversation
from .link_stats import LinkStats
from .link_transport import Duplex

__all__ = ["LinkEnd", "Sifted", "link_id_for", "params_digest", "sift", "store_block"]

logger = logging.getLogger("qkdnet.node.protocol.link")
T = TypeVar("T")

_INLINE_ELEMENTS = 20_000  # Cascade steps up to this many ranges run on the event loop


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
