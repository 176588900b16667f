"""The receiving end of a decoy-state BB84 link (Bob): measures the photons that arrive and
answers the transmitter's rounds (the protocol is described in `transmitter.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.cascade import CascadeBob, binary_entropy
from ..core.polynomial_hash import PolynomialHash
from ..core.quantum_channel import ChannelOutput, measure
from ..core.toeplitz import toeplitz_hash
from ..core.wire import decode_bits, decode_classes, decode_slots, encode_bits, encode_slots
from ..errors import LinkError, ProtocolError, Reason, RoundAborted
from .conversation import Conversation
from .link import SessionReceiver, sift, store_block
from .link_messages import (
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

__all__ = ["ReceiverLink"]


_FRAMES_BUFFERED = 4


@dataclass
class _RxFrame:
    frame: int
    pulses: int = 0
    slots: list[NDArray[np.uint64]] = field(default_factory=list)
    basis: list[NDArray[np.uint8]] = field(default_factory=list)
    bit: list[NDArray[np.uint8]] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)


class ReceiverLink(SessionReceiver):
    """Bob: measures arriving photons and answers the transmitter's rounds (the sessions are
    `SessionReceiver`'s)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._frames: dict[int, _RxFrame] = {}

    # -- the emulated quantum channel ------------------------------------------------------------
    async def receive_photons(self, chunks: AsyncIterator[PhotonChunk]) -> int:
        """Measure every arriving chunk; returns the number of frames completed."""
        if self.cut:
            raise LinkError("the link is cut", reason="cut")
        completed = 0
        async for chunk in chunks:
            if chunk.link_id != self.link_id:
                raise ProtocolError(f"photons for link {chunk.link_id!r}")
            slots = decode_slots(chunk.slot_deltas, chunk.detections, chunk.first_slot)
            states_basis = decode_bits(chunk.basis, chunk.detections, "photon bases")
            states_value = decode_bits(chunk.value, chunk.detections, "photon values")
            frame = self._frames.get(chunk.frame)
            if frame is None:
                frame = self._frames[chunk.frame] = _RxFrame(chunk.frame)
                for old in sorted(self._frames)[:-_FRAMES_BUFFERED]:
                    del self._frames[old]
            basis, bit = await self._compute(
                measure, self._rng, ChannelOutput(slots, states_basis, states_value)
            )
            frame.pulses += chunk.pulses
            frame.slots.append(slots)
            frame.basis.append(basis)
            frame.bit.append(bit)
            if chunk.frame_end:
                frame.complete.set()
                completed += 1
        return completed

    async def _frame(self, number: int) -> tuple[_RxFrame, NDArray[np.uint64]]:
        frame = self._frames.get(number)
        if frame is None:
            frame = self._frames[number] = _RxFrame(number)
        try:
            async with asyncio.timeout(60):  # not wait_for: see Conversation.receive
                await frame.complete.wait()
        except TimeoutError:
            raise LinkError(f"photons of frame {number} never arrived", reason="timeout") from None
        return frame, np.concatenate(frame.slots) if frame.slots else np.zeros(0, np.uint64)

    # -- the classical side ------------------------------------------------------------------
    async def answer(self, conv: Conversation) -> None:
        """Answer the transmitter's rounds, one frame after the other."""
        while True:
            start = await conv.receive(idle=True)  # the transmitter may pause (store full)
            r = start.payload
            if not isinstance(r, RoundStart):
                raise ProtocolError(f"expected RoundStart, got {type(r).__name__}")
            conv.frame = start.frame
            self._frame_sifted = 0
            try:
                await self._round(conv, start.frame, r)
            except RoundAborted as exc:
                self._aborted(start.frame, exc)
            finally:
                self._frames.pop(start.frame, None)
            self.stats.record_frame(r.pulses, r.detections, self._frame_sifted)

    async def _round(self, conv: Conversation, number: int, start: RoundStart) -> None:
        frame, slots = await self._frame(number)
        n_det = int(slots.size)
        if n_det != start.detections or frame.pulses != start.pulses:
            raise ProtocolError("round_start does not match the photons received")
        basis = np.concatenate(frame.basis) if frame.basis else np.zeros(0, np.uint8)
        bits = np.concatenate(frame.bit) if frame.bit else np.zeros(0, np.uint8)
        await conv.send(
            SiftAnnouncement(
                slot_deltas=encode_slots(slots, 0), basis=encode_bits(basis), detections=n_det
            )
        )
        reply = await conv.expect(SiftReply)
        alice_basis = decode_bits(reply.basis, n_det, "transmitter bases")
        classes = decode_classes(reply.intensity_class, n_det)
        if not 0.0 < reply.sample_fraction < 0.5:
            raise ProtocolError("sample fraction out of range")
        sifted = sift(alice_basis, basis, classes, reply.sample_seed, reply.sample_fraction)
        self._frame_sifted = sum(sifted.sifted_per_class)
        disclosed = bits[sifted.disclosed_idx]
        await conv.send(EstimationData(bits=encode_bits(disclosed), count=int(disclosed.size)))
        result = await conv.expect(EstimationResult)
        if not result.proceed:
            raise RoundAborted(
                result.abort_reason or "aborted",
                reason=Reason.of(result.abort_reason, Reason.ABORTED),
            )
        if result.key_bits != sifted.key_idx.size:
            raise ProtocolError("key length differs between the two ends")
        if not 0.0 <= result.qber_estimate < 0.5:
            raise ProtocolError("QBER estimate out of range")
        key = np.ascontiguousarray(bits[sifted.key_idx])
        bob = await self._compute(CascadeBob, key, result.qber_estimate, result.cascade_seed)
        first = True
        while True:
            # The first query holds every top-level block; later ones are small.
            query = await self._compute(bob.next_query) if first else bob.next_query()
            first = False
            if query is None:
                await conv.send(ParityRequest(done=True))
                break
            await conv.send(ParityRequest(query=query.to_bytes()))
            reply_parities = await conv.expect(ParityReply)
            count = int(query.start.size)
            if reply_parities.count != count:
                raise ProtocolError("parity reply does not answer the query")
            parities = decode_bits(reply_parities.parities, count, "parities")
            try:
                await self._maybe_compute(count, bob.receive, parities)
            except ValueError as exc:
                raise ProtocolError(f"parity reply: {exc}") from None
        verification = await conv.expect(Verification)
        n_key = int(key.size)
        corrected = bob.key
        tag = await self._compute(PolynomialHash(verification.hash_key).digest_bits, corrected)
        match = tag == verification.tag
        await conv.send(
            VerificationResult(match=match, corrected_bits=min(bob.corrected_bits, n_key))
        )
        if not match:
            raise RoundAborted("keys differ after reconciliation", reason="verification")
        amp = await conv.expect(Amplification)
        m = int(amp.output_bits)
        refill = (int(amp.refill_pads_forward), int(amp.refill_pads_backward))
        if not 0 < m <= n_key or 64 * sum(refill) > m:
            raise ProtocolError("amplification sizes out of range")
        seed_bits = decode_bits(amp.toeplitz_seed, n_key + m - 1, "Toeplitz seed")
        final = await self._compute(toeplitz_hash, corrected, seed_bits, m)
        if not amp.block_id.startswith(f"{self.link_id}/"):
            raise ProtocolError("block ID of another link")
        await store_block(self.store, amp.block_id, number, final, refill, pending=False)
        await conv.send(Stored(block_id=amp.block_id))
        await self.auth.persist()
        await self.refresh_store_level()
        errors = min(bob.corrected_bits, n_key)
        qber = errors / n_key
        self.stats.record_key(
            reconciled=n_key,
            errors=errors,
            disclosed=bob.disclosed_bits,
            ideal_disclosed=n_key * binary_entropy(qber),
            secret=m - 64 * sum(refill),
            auth=64 * sum(refill),
        )
