"""Emulated quantum channel of a decoy-state BB84 link: only the detected slots are generated.

A GHz source cannot be emulated pulse by pulse, so :func:`transmit` draws directly the slots Bob
detects, with exactly the statistics of independent pulses:

* every slot is independently of class ``c`` (signal ``mu``, weak decoy ``nu``, vacuum) with
  probability ``p_c`` and detected with the model gain ``Q_c`` of that class
  (:func:`qkdnet.node.core.channel_model.gain`; vacuum: ``Y0``) — Lo, Ma, Chen, PRL 94, 230504
  (2005); Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005);
* so detections form a Bernoulli process of rate ``P = sum_c p_c Q_c`` over the slots: the gaps
  between detected slots are geometric (drawn as ``floor(Exp(1) / -ln(1 - P)) + 1``, no sort, no
  duplicates), the class of a detected slot is ``c`` with probability ``p_c Q_c / P``, and the
  undetected pulses are split among the classes multinomially with weights ``p_c (1 - Q_c)``,
  which gives Alice's pulse totals per class;
* Alice's basis and bit are uniform; the state reaching Bob is hers, flipped with the class's model
  QBER ``E_c`` (misalignment and dark counts, :func:`qkdnet.node.core.channel_model.error_rate`);
* an intercept-resend eavesdropper attacks each detected pulse with probability ``p``: she measures
  in a random basis (a uniform bit when it differs from Alice's) and resends her basis and result,
  then the channel noise applies. Eve is loss-transparent (gains unchanged), so the sifted QBER of a
  class is ``E_c + p (1/4 - E_c / 2)``
  (:func:`qkdnet.node.core.channel_model.qber_with_eavesdropper`).

:func:`measure` is Bob's detector: a uniform basis; the state's value when it matches the state's
basis, a uniform bit otherwise.

Random numbers are drawn in bulk (one exponential and one 64-bit word per detection, the word split
into fields; one more 32-bit word with a partial eavesdropper), so 2 x 10^6 detections take a few
tens of milliseconds. Memory is about 20 bytes per detection: size
``n_pulses`` so that ``n_pulses * P`` fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._arguments import as_count
from .channel_model import (
    ChannelParameters,
    error_rate,
    gain,
    transmittance,
)

__all__ = [
    "BASIS_X",
    "BASIS_Z",
    "AliceRecords",
    "ChannelOutput",
    "ClassTotals",
    "measure",
    "transmit",
]

BASIS_Z = 0
"""Basis code of the rectilinear (Z) basis."""
BASIS_X = 1
"""Basis code of the diagonal (X) basis."""

_MAX_SLOT = 2**64
_MAX_PULSES = 2**53  # slot offsets are accumulated exactly in float64
_CLASS_BITS = 56  # class selection uses the top 56 bits of the first word
_U32 = 2**32


@dataclass(frozen=True, eq=False)
class AliceRecords:
    """What Alice keeps of a transmission: her choices for the detected slots only.

    All arrays have one entry per detected slot, in slot order. Treat them as read-only: ``slots``
    is shared with the :class:`ChannelOutput`.
    """

    slots: npt.NDArray[np.uint64]
    """Absolute slot numbers, sorted and unique."""
    intensity_class: npt.NDArray[np.uint8]
    """0 signal, 1 decoy, 2 vacuum."""
    basis: npt.NDArray[np.uint8]
    """:data:`BASIS_Z` or :data:`BASIS_X`."""
    bit: npt.NDArray[np.uint8]
    """0 or 1."""

    def __len__(self) -> int:
        return int(self.slots.shape[0])


@dataclass(frozen=True, eq=False)
class ChannelOutput:
    """The states reaching Bob's detector, one per detected slot (same order as Alice's records)."""

    slots: npt.NDArray[np.uint64]
    basis: npt.NDArray[np.uint8]
    """Basis the state is prepared in (Alice's, or Eve's for an intercepted pulse)."""
    value: npt.NDArray[np.uint8]
    """Bit a measurement in ``basis`` gives."""

    def __len__(self) -> int:
        return int(self.slots.shape[0])


@dataclass(frozen=True, eq=False)
class ClassTotals:
    """Per-class totals of one transmission (index 0 signal, 1 decoy, 2 vacuum)."""

    pulses: npt.NDArray[np.int64]
    """Pulses Alice sent per class (sums to ``n_pulses``)."""
    detections: npt.NDArray[np.int64]
    """Detected slots per class (ground truth; equals the bincount of Alice's classes)."""


def _bernoulli_slots(
    rng: np.random.Generator, n: int, prob: float, *, batch: int | None = None
) -> npt.NDArray[np.uint64]:
    """Sorted offsets in [0, n) of a Bernoulli(prob) process: geometric gaps, exact statistics.

    Gaps are drawn in batches (by default the expected count plus 6 sigma, so one batch almost
    always suffices); ``batch`` forces the batch size (tests of the continuation).
    """
    if n == 0 or prob <= 0.0:
        return np.empty(0, dtype=np.uint64)
    if prob >= 1.0:
        return np.arange(n, dtype=np.uint64)
    inv_rate = -1.0 / math.log1p(-prob)  # floor(Exp(1) * inv_rate) ~ Geometric(prob) - 1
    expected = n * prob
    parts: list[npt.NDArray[np.float64]] = []
    start = 0.0  # first slot not yet covered
    while True:
        k = batch if batch is not None else min(n, int(expected + 6.0 * math.sqrt(expected) + 16))
        x = rng.standard_exponential(k)
        x *= inv_rate
        np.floor(x, out=x)
        np.minimum(x, float(n), out=x)  # a gap past the end: keeps the sums exact
        x += 1.0
        np.cumsum(x, out=x)
        x += start - 1.0
        count = int(np.searchsorted(x, float(n)))
        parts.append(x[:count])
        if count < k:
            break
        start = float(x[-1]) + 1.0
        expected = max((n - start) * prob, 0.0)
    offsets = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return offsets.astype(np.uint64)


def _class_intervals(
    class_probs: npt.NDArray[np.float64], flip_probs: npt.NDArray[np.float64]
) -> tuple[list[int], list[int]]:
    """Integer cut points in [0, 2^56): class ``c`` is ``[starts[c], starts[c + 1])`` and its
    flipped part ``[starts[c], flip_ends[c])``."""
    total = 1 << _CLASS_BITS
    cumulative = np.cumsum(class_probs)
    starts = [0] + [min(max(round(float(c) * total), 0), total) for c in cumulative[:2]]
    ends = [*starts[1:], total]
    flip_ends = [
        a + min(round(float(e) * (b - a)), b - a)
        for a, b, e in zip(starts, ends, flip_probs, strict=True)
    ]
    return starts, flip_ends


def transmit(
    rng: np.random.Generator, p: ChannelParameters, first_slot: int, n_pulses: int
) -> tuple[AliceRecords, ChannelOutput, ClassTotals]:
    """Emulate ``n_pulses`` pulses sent in slots ``first_slot .. first_slot + n_pulses - 1``.

    Args:
        rng: the random generator (the only source of randomness).
        p: channel parameters (the length, losses, classes and eavesdropper are all used).
        first_slot: absolute number of the first slot.
        n_pulses: number of pulses (slots); ``first_slot + n_pulses <= 2**64`` and
            ``n_pulses < 2**53``.

    Returns:
        Alice's records and the states reaching Bob for the detected slots, and the class totals.

    Raises:
        ValueError: on a negative or out-of-range ``first_slot`` or ``n_pulses``.
    """
    first = as_count("first_slot", first_slot)
    n = as_count("n_pulses", n_pulses)
    if n >= _MAX_PULSES:
        raise ValueError(f"n_pulses must be < 2**53, got {n}")
    if first + n > _MAX_SLOT:
        raise ValueError(f"first_slot + n_pulses must be <= 2**64, got {first} + {n}")

    eta = transmittance(p)
    probs = np.array(p.probabilities(), dtype=np.float64)
    intensities = np.array(p.intensities(), dtype=np.float64)
    gains = np.clip(gain(intensities, eta, p.dark_count_yield), 0.0, 1.0)
    errors = error_rate(intensities, eta, p.dark_count_yield, p.misalignment_error)
    weights = probs * gains
    prob_detect = float(weights.sum())

    offsets = _bernoulli_slots(rng, n, prob_detect)
    count = int(offsets.shape[0])
    if first:
        offsets += np.uint64(first)
    slots = offsets

    # One 64-bit word per detection. Its top 56 bits u pick the class and the channel flip
    # together: [0, 2^56) is cut into one interval per class (length ~ p_c Q_c / P), and within
    # class c a leading sub-interval of relative length E_c means "flipped". The low byte gives
    # Alice's basis and bit and Eve's basis and bit.
    word = rng.integers(0, 2**64, size=count, dtype=np.uint64)
    u = word >> np.uint64(64 - _CLASS_BITS)
    starts, flip_ends = _class_intervals(weights / prob_detect if count else weights, errors)
    flip = u < np.uint64(flip_ends[0])
    if p.decoy:
        ge_decoy = u >= np.uint64(starts[1])
        ge_vacuum = u >= np.uint64(starts[2])
        flip |= ge_decoy & (u < np.uint64(flip_ends[1]))
        flip |= ge_vacuum & (u < np.uint64(flip_ends[2]))
        cls = ge_decoy.view(np.uint8) + ge_vacuum.view(np.uint8)
        n_ge_decoy = int(np.count_nonzero(ge_decoy))
        n_vacuum = int(np.count_nonzero(ge_vacuum))
        detections = np.array([count - n_ge_decoy, n_ge_decoy - n_vacuum, n_vacuum], dtype=np.int64)
    else:
        cls = np.zeros(count, dtype=np.uint8)
        detections = np.array([count, 0, 0], dtype=np.int64)
    del u

    low = word.astype(np.uint8)
    del word
    alice_basis = low & np.uint8(1)
    alice_bit = (low >> np.uint8(1)) & np.uint8(1)

    eve_p = p.eavesdrop_fraction
    if eve_p > 0.0 and count:
        eve_basis = (low >> np.uint8(2)) & np.uint8(1)
        eve_bit = (low >> np.uint8(3)) & np.uint8(1)
        wrong_basis = eve_basis ^ alice_basis
        if eve_p < 1.0:
            eve_u = rng.integers(0, _U32, size=count, dtype=np.uint32)
            wrong_basis &= (eve_u < np.uint32(min(round(eve_p * _U32), _U32 - 1))).view(np.uint8)
        # Eve resends in her basis; her result is Alice's bit unless she chose the other basis.
        basis = alice_basis ^ wrong_basis
        value = alice_bit ^ (wrong_basis & (eve_bit ^ alice_bit))
        value ^= flip.view(np.uint8)
    else:
        basis = alice_basis.copy()
        value = alice_bit ^ flip.view(np.uint8)

    undetected = probs * (1.0 - gains)
    undetected_total = float(undetected.sum())
    if n - count > 0 and undetected_total > 0.0:
        rest = rng.multinomial(n - count, undetected / undetected_total).astype(np.int64)
    else:
        rest = np.zeros(3, dtype=np.int64)

    alice = AliceRecords(slots=slots, intensity_class=cls, basis=alice_basis, bit=alice_bit)
    output = ChannelOutput(slots=slots, basis=basis, value=value)
    return alice, output, ClassTotals(pulses=detections + rest, detections=detections)


def measure(
    rng: np.random.Generator, out: ChannelOutput
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Bob's measurement of every detected state: a uniform basis each.

    Returns:
        ``(bob_basis, bob_bit)``: the state's value where Bob's basis matches the state's basis,
        a uniform random bit elsewhere.
    """
    count = len(out)
    r = rng.integers(0, 4, size=count, dtype=np.uint8)
    bob_basis = r & np.uint8(1)
    random_bit = r >> np.uint8(1)
    bob_bit = out.value ^ ((bob_basis ^ out.basis) & (out.value ^ random_bit))
    return bob_basis, bob_bit
