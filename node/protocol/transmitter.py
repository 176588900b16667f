"""The transmitting end of a decoy-state BB84 link (Alice), and the protocol both ends speak.

The transmitter (Alice, the node whose ID sorts first) opens two streams to the receiver
through its `LinkConnector` (link_transport.py): the emulated quantum channel (photons of frame
after frame, paced in real time from the pulse rate and the speed-up factor) and the
authenticated classical channel. The messages are those of `link_messages.py`.
For every frame the classical conversation runs:

    T -> R  RoundStart            R -> T  SiftAnnouncement (detected slots, receiver's bases)
    T -> R  SiftReply (bases, intensity classes, sample seed)
    R -> T  EstimationData (decoy/vacuum bits, signal sample)
    T -> R  EstimationResult (abort above the QBER threshold or when no key is possible)
    R -> T  ParityRequest ...     T -> R  ParityReply ...        (Cascade, one pass level a trip)
    T -> R  Verification (hash key, tag)       R -> T  VerificationResult (match, errors)
    T -> R  Amplification (Toeplitz seed, length, block ID: the commit)
    R -> T  Stored

Every bit disclosed (parities, the verification tag, the error count) is subtracted in privacy
amplification. The transmitter stores a block as pending before sending Amplification and marks
it ready on Stored; a new session starts with Hello/HelloReply to settle pending blocks, so both
stores always hold the same blocks. Any authentication or protocol failure ends the session
(nothing of the frame in flight is stored); the transmitter reconnects with back-off.

A live channel change (`LinkEnd.change_channel`) applies to every frame the transmitter
starts emulating after it; those already emulated keep the channel they were made with.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..core.cascade import CascadeAlice, ParityQuery, binary_entropy
from ..core.channel_model import ChannelParameters, model_figures
from ..core.decoy import ClassCounts, DecoyEstimate, estimate, gllp_estimate, secret_key_length
from ..core.polynomial_hash import PolynomialHash
from ..core.quantum_channel import transmit
from ..core.toeplitz import toeplitz_hash
from ..core.wire import decode_bits, decode_slots, encode_bits, encode_slots
from ..errors import ProtocolError, RoundAborted
from ..store.key_store import KeyStoreDb
from ..structured_log import log_event
from .conversation import Conversation
from .link import SessionTransmitter, Sifted, sift, store_block
from .link_messages import (
    Abort,
    Amplification,
    EstimationData,
    EstimationResult,
    ParityReply,
    ParityRequest,
    PhotonChunk,
    RoundStart,
    SiftAnnouncement,
    SiftReply,
    Stored,
    Verification,
    VerificationResult,
)
from .link_transport import PhotonSink

__all__ = ["TransmitterLink"]

logger = logging.getLogger("qkdnet.node.protocol.transmitter")
T = TypeVar("T")

_CHUNK_DETECTIONS = 1 << 18  # expected detections per photon chunk
_CHUNK_SECONDS = 0.05  # at most this much emulated wall time per chunk, for smooth pacing
_EARLY_ABORT_F = 1.1  # reconciliation efficiency assumed when deciding to skip Cascade
_VERIFY_LEAK = 64 + 32  # verification tag + the disclosed error count
# Every round spends authentication pads and only a round with key refills them: after this
# many aborted rounds in a row (an eavesdropper, a channel too lossy), the transmitter waits
# before each next one, twice as long each time up to the cap, so that a link under attack
# lasts for hours on its pad reserve instead of seconds, and resumes once the channel is good.
_ABORTS_AT_FULL_SPEED = 3
_ABORT_PAUSE_S = 0.1
_ABORT_PAUSE_MAX_S = 10.0


@dataclass
class _TxFrame:
    frame: int
    pulses: int
    pulses_per_class: NDArray[np.int64]
    slots: NDArray[np.uint64]
    intensity_class: NDArray[np.uint8]
    basis: NDArray[np.uint8]
    bit: NDArray[np.uint8]


class TransmitterLink(SessionTransmitter):
    """Alice: drives photons and rounds (the sessions are `SessionTransmitter`'s)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._next_frame = 0

    async def run(self) -> None:
        self._next_frame = await self.store.run(lambda db: db.get_meta("next_frame"))
        await super().run()

    async def distil(self, conv: Conversation, photons: PhotonSink) -> None:
        """Emulate frames of photons and run a round on each, until the session ends."""
        frames: asyncio.Queue[_TxFrame] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._produce(conv, photons, frames))
            group.create_task(self._rounds(conv, frames))

    # -- the emulated quantum channel ---------------------------------------------------------
    def _frame_pulses(self, params: ChannelParameters) -> int:
        figures = model_figures(params, f=1.0, pe_sample_fraction=0.0)
        per_pulse = max(figures.sifted_signal_per_pulse, 1e-15)
        needed = math.ceil(self.processing.frame_bits / per_pulse)
        cap = int(self.processing.max_frame_seconds * params.pulse_rate_hz)
        return max(1, min(needed, cap))

    async def _produce(
        self, conv: Conversation, photons: PhotonSink, frames: asyncio.Queue[_TxFrame]
    ) -> None:
        rate = self.params.pulse_rate_hz * self.processing.speedup
        clock = self.clock.monotonic()
        while True:
            await self.while_store_full(conv)
            # A frame is emulated with the channel in force when it starts (a live change
            # applies from the next frame on).
            params = self.params
            figures = model_figures(params, f=1.0, pe_sample_fraction=0.0)
            detect_per_pulse = max(figures.detections_per_pulse, 1e-15)
            chunk_cap = max(
                1, min(int(_CHUNK_DETECTIONS / detect_per_pulse), int(rate * _CHUNK_SECONDS))
            )
            frame = self._next_frame
            self._next_frame += 1
            next_frame = self._next_frame
            await self.store.run(partial(KeyStoreDb.set_meta, name="next_frame", value=next_frame))
            total = self._frame_pulses(params)
            parts: list[tuple[Any, Any, NDArray[np.int64]]] = []
            sent = 0
            while sent < total:
                pulses = min(chunk_cap, total - sent)
                records, out, totals = await self._compute(
                    transmit, self._rng, params, sent, pulses
                )
                # Pace: these pulses take pulses / (rate * speed-up) of wall time to emit.
                clock += pulses / rate
                delay = clock - self.clock.monotonic()
                if delay > 0:
                    await self.clock.sleep(delay)
                else:
                    clock = self.clock.monotonic()  # running late: do not build up a debt
                await photons.write(
                    PhotonChunk(
                        link_id=self.link_id,
                        frame=frame,
                        first_slot=sent,
                        pulses=pulses,
                        slot_deltas=encode_slots(out.slots, sent),
                        detections=int(out.slots.size),
                        basis=encode_bits(out.basis),
                        value=encode_bits(out.value),
                        frame_end=sent + pulses >= total,
                    )
                )
                parts.append((records, out, totals.pulses))
                sent += pulses
            await frames.put(
                _TxFrame(
                    frame=frame,
                    pulses=total,
                    pulses_per_class=np.sum([p[2] for p in parts], axis=0),
                    slots=np.concatenate([p[0].slots for p in parts]),
                    intensity_class=np.concatenate([p[0].intensity_class for p in parts]),
                    basis=np.concatenate([p[0].basis for p in parts]),
                    bit=np.concatenate([p[0].bit for p in parts]),
                )
            )

    # -- the classical rounds --------------------------------------------------------------------
    async def _rounds(self, conv: Conversation, frames: asyncio.Queue[_TxFrame]) -> None:
        aborted = 0  # rounds in a row
        while True:
            frame = await frames.get()
            conv.frame = frame.frame
            self._frame_sifted = 0
            try:
                await self._round(conv, frame)
                aborted = 0
            except RoundAborted as exc:
                self._aborted(frame.frame, exc)
                aborted += 1
            # Counted once the frame's outcome is known (no await since), so that a status
            # never pairs the pulses of a frame in flight with the key of finished ones.
            self.stats.record_frame(frame.pulses, int(frame.slots.size), self._frame_sifted)
            if aborted > _ABORTS_AT_FULL_SPEED:
                slower = 2 ** min(aborted - _ABORTS_AT_FULL_SPEED - 1, 10)
                await self.clock.sleep(min(_ABORT_PAUSE_S * slower, _ABORT_PAUSE_MAX_S))

    async def _abort(self, conv: Conversation, reason: str) -> RoundAborted:
        await conv.send(Abort(reason=reason))
        return RoundAborted(reason, reason=reason)

    def _estimate(self, counts: list[ClassCounts], signal_qber: float) -> DecoyEstimate:
        p = self.params
        if p.decoy:
            return estimate(counts[0], counts[1], counts[2], p.mu, p.nu, signal_qber=signal_qber)
        return gllp_estimate(counts[0], p.mu, signal_qber=signal_qber)

    def _phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.stats.phase_seconds[name] += now - since
        return now

    async def _round(self, conv: Conversation, fr: _TxFrame) -> None:
        clock = time.perf_counter()
        n_det = int(fr.slots.size)
        await conv.send(RoundStart(pulses=fr.pulses, detections=n_det))
        announced = await conv.expect(SiftAnnouncement)
        if announced.detections != n_det:
            raise ProtocolError(
                f"receiver announced {announced.detections} detections, sent {n_det}"
            )
        slots = decode_slots(announced.slot_deltas, n_det, 0)
        if not np.array_equal(slots, fr.slots):
            raise ProtocolError("receiver announced detections in slots that were not sent")
        bob_basis = decode_bits(announced.basis, n_det, "receiver bases")
        sample_seed = secrets.randbits(63)
        fraction = self.processing.pe_sample_fraction
        await conv.send(
            SiftReply(
                basis=encode_bits(fr.basis),
                intensity_class=fr.intensity_class.tobytes(),
                sample_seed=sample_seed,
                sample_fraction=fraction,
            )
        )
        sifted = sift(fr.basis, bob_basis, fr.intensity_class, sample_seed, fraction)
        self._frame_sifted = sum(sifted.sifted_per_class)

        clock = self._phase("sifting", clock)
        est_msg = await conv.expect(EstimationData)
        n_disc = int(sifted.disclosed_idx.size)
        bob_bits = decode_bits(est_msg.bits, n_disc, "estimation bits")
        wrong = bob_bits != fr.bit[sifted.disclosed_idx]
        counts = self._class_counts(fr, sifted, wrong)
        sample_qber = counts[0].sifted_errors / max(sifted.sample_count, 1)
        self.stats.record_sample(sifted.sample_count, counts[0].sifted_errors)
        n_key = int(sifted.key_idx.size)
        if sifted.sample_count == 0 or n_key < 256:
            raise await self._abort(conv, "too_few_bits")
        if sample_qber > self.processing.qber_abort:
            raise await self._abort(conv, "qber")
        est = self._estimate(counts, sample_qber)
        expected_leak = int(_EARLY_ABORT_F * n_key * binary_entropy(sample_qber)) + _VERIFY_LEAK
        if secret_key_length(n_key, est, expected_leak, self.processing.epsilon_pa) <= 0:
            raise await self._abort(conv, "no_key")
        cascade_seed = secrets.randbits(63)
        # Cascade pays far more for an underestimate than for an overestimate: plan it for
        # the sample's upper bound (two standard deviations).
        sigma = math.sqrt(max(sample_qber, 1e-3) * (1 - sample_qber) / sifted.sample_count)
        cascade_qber = min(sample_qber + 2 * sigma, 0.25)
        await conv.send(
            EstimationResult(
                proceed=True,
                qber_estimate=cascade_qber,
                cascade_seed=cascade_seed,
                key_bits=n_key,
            )
        )
        key = np.ascontiguousarray(fr.bit[sifted.key_idx])
        clock = self._phase("estimation", clock)
        alice = await self._compute(CascadeAlice, key, cascade_qber, cascade_seed)
        disclosed = 0
        while True:
            request = await conv.expect(ParityRequest)
            if request.done:
                break
            try:
                query = ParityQuery.from_bytes(request.query)
                parities = await self._maybe_compute(query.start.size, alice.answer, query)
            except ValueError as exc:
                raise ProtocolError(f"parity request: {exc}") from None
            disclosed += int(parities.size)
            await conv.send(ParityReply(parities=encode_bits(parities), count=int(parities.size)))
        clock = self._phase("reconciliation", clock)
        hash_key = secrets.randbits(64)
        tag = await self._compute(PolynomialHash(hash_key).digest_bits, key)
        await conv.send(Verification(hash_key=hash_key, tag=tag))
        result = await conv.expect(VerificationResult)
        if not result.match:
            raise RoundAborted("keys differ after reconciliation", reason="verification")
        clock = self._phase("verification", clock)
        errors = int(result.corrected_bits)
        if errors > n_key:
            raise ProtocolError("receiver corrected more bits than the key has")
        qber = errors / n_key
        est = self._estimate(counts, qber)
        leaked = disclosed + _VERIFY_LEAK
        m = secret_key_length(n_key, est, leaked, self.processing.epsilon_pa)
        if m <= 0:
            raise await self._abort(conv, "no_key")
        refill = await self._refill_plan(m)
        if 64 * sum(refill) > m:
            raise await self._abort(conv, "no_key")
        seed_bits = np.unpackbits(
            np.frombuffer(secrets.token_bytes((n_key + m - 1 + 7) // 8), dtype=np.uint8),
            count=n_key + m - 1,
        )
        final = await self._compute(toeplitz_hash, key, seed_bits, m)
        block_id = f"{self.link_id}/{fr.frame:08d}-{uuid.uuid4().hex[:8]}"
        await store_block(self.store, block_id, fr.frame, final, refill, pending=True)
        await conv.send(
            Amplification(
                toeplitz_seed=encode_bits(seed_bits),
                output_bits=m,
                block_id=block_id,
                refill_pads_forward=refill[0],
                refill_pads_backward=refill[1],
            )
        )
        stored = await conv.expect(Stored)
        if stored.block_id != block_id:
            raise ProtocolError("receiver acknowledged another block")
        await self.store.run(lambda db: db.confirm_blocks([block_id]))
        self._phase("amplification", clock)
        await self.auth.persist()
        await self.refresh_store_level()
        secret = m - 64 * sum(refill)
        self.stats.record_key(
            reconciled=n_key,
            errors=errors,
            disclosed=disclosed,
            ideal_disclosed=n_key * binary_entropy(qber),
            secret=secret,
            auth=64 * sum(refill),
        )
        log_event(
            logger,
            logging.INFO,
            "frame_stored",
            link=self.link_id,
            frame=fr.frame,
            block=block_id,
            secret_bits=secret,
            auth_bits=64 * sum(refill),
            pulses=fr.pulses,
            key_bits=n_key,
            qber=round(qber, 5),
            disclosed=disclosed,
            single_photon_fraction=round(est.single_photon_fraction, 5),
            e1_upper=round(est.e1_upper, 5),
        )

    def _class_counts(
        self, fr: _TxFrame, sifted: Sifted, wrong: NDArray[np.bool_]
    ) -> list[ClassCounts]:
        detections = np.bincount(fr.intensity_class, minlength=3)
        errors = [0, 0, 0]
        offset = 0
        for cls, count in sifted.groups:
            errors[cls] = int(wrong[offset : offset + count].sum())
            offset += count
        errors[0] = int(wrong[offset:].sum())
        return [
            ClassCounts(
                pulses=int(fr.pulses_per_class[c]),
                detections=int(detections[c]),
                sifted=sifted.sample_count if c == 0 else sifted.sifted_per_class[c],
                sifted_errors=errors[c],
            )
            for c in range(3)
        ]

    async def _refill_plan(self, m: int) -> tuple[int, int]:
        """Pads to cut from this frame's key for each direction, to keep the reserve full."""
        forward, backward = await self.auth.available_pads()
        target = self.processing.auth_reserve_pads
        want = [max(0, target - forward), max(0, target - backward)]
        budget = m // 64 // 2  # never spend more than half a frame on authentication
        if sum(want) > budget:
            scale = budget / sum(want)
            want = [int(w * scale) for w in want]
        return want[0], want[1]
