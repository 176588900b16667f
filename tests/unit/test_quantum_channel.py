"""Emulated quantum channel: statistics against the analytic model (seeded, 5-sigma tolerances)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from qkdnet.node.core.channel_model import (
    ChannelParameters,
    model_figures,
    qber_with_eavesdropper,
)
from qkdnet.node.core.quantum_channel import (
    AliceRecords,
    ChannelOutput,
    ClassTotals,
    _bernoulli_slots,
    measure,
    transmit,
)

SIGMAS = 5.0


def assert_binomial(k: int, n: int, prob: float, what: str = "") -> None:
    """``k`` is a plausible draw of Binomial(n, prob): within 5 sigma (plus 1 for rounding)."""
    mean = n * prob
    sigma = math.sqrt(n * prob * (1.0 - prob))
    assert abs(k - mean) <= SIGMAS * sigma + 1.0, f"{what}: {k} vs {mean:.1f} +- {sigma:.1f}"


def run(
    p: ChannelParameters, n_pulses: int, seed: int, first_slot: int = 0
) -> tuple[AliceRecords, ChannelOutput, ClassTotals, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    alice, out, totals = transmit(rng, p, first_slot, n_pulses)
    bob_basis, bob_bit = measure(rng, out)
    return alice, out, totals, bob_basis, bob_bit


def pulses_for(p: ChannelParameters, detections: float) -> int:
    return int(detections / model_figures(p, 1.22).detections_per_pulse)


def test_records_shapes_and_slots() -> None:
    p = ChannelParameters(length_km=10.0)
    n = 10_000_000
    first = 2**40 + 17
    alice, out, totals, bob_basis, bob_bit = run(p, n, seed=1, first_slot=first)
    count = len(alice)
    assert count > 0
    assert len(out) == count
    checks: list[tuple[npt.NDArray[Any], type[np.generic]]] = [
        (alice.slots, np.uint64),
        (alice.intensity_class, np.uint8),
        (alice.basis, np.uint8),
        (alice.bit, np.uint8),
        (out.slots, np.uint64),
        (out.basis, np.uint8),
        (out.value, np.uint8),
        (bob_basis, np.uint8),
        (bob_bit, np.uint8),
    ]
    for array, dtype in checks:
        assert array.dtype == dtype
        assert array.shape == (count,)
    assert np.array_equal(alice.slots, out.slots)
    assert np.all(alice.slots[1:] > alice.slots[:-1])  # sorted and unique
    assert int(alice.slots[0]) >= first
    assert int(alice.slots[-1]) < first + n
    assert set(np.unique(alice.intensity_class)) <= {0, 1, 2}
    for bits in (alice.basis, alice.bit, out.basis, out.value, bob_basis, bob_bit):
        assert int(bits.max()) <= 1
    assert totals.pulses.shape == (3,)
    assert int(totals.pulses.sum()) == n
    assert np.array_equal(totals.detections, np.bincount(alice.intensity_class, minlength=3))
    assert np.all(totals.detections <= totals.pulses)


def test_slots_at_the_end_of_the_slot_space() -> None:
    p = ChannelParameters(length_km=0.0)
    n = 1_000_000
    first = 2**64 - n
    alice, _, _, _, _ = run(p, n, seed=2, first_slot=first)
    assert len(alice) > 0
    assert int(alice.slots[0]) >= first
    assert int(alice.slots[-1]) <= 2**64 - 1
    with pytest.raises(ValueError, match="first_slot \\+ n_pulses"):
        transmit(np.random.default_rng(0), p, first + 1, n)


def test_zero_pulses() -> None:
    alice, out, totals, bob_basis, _ = run(ChannelParameters(length_km=5.0), 0, seed=3)
    assert len(alice) == len(out) == bob_basis.size == 0
    assert totals.pulses.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("first_slot", "n_pulses", "name"),
    [(0, -1, "n_pulses"), (-5, 10, "first_slot"), (0, 1.5, "n_pulses"), (0, True, "n_pulses")],
)
def test_argument_validation(first_slot: object, n_pulses: object, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        transmit(np.random.default_rng(0), ChannelParameters(length_km=1.0), first_slot, n_pulses)  # type: ignore[arg-type]


@pytest.mark.parametrize(("length", "seed"), [(10.0, 10), (80.0, 80)])
def test_class_statistics_match_model(length: float, seed: int) -> None:
    p = ChannelParameters(length_km=length)
    fig = model_figures(p, 1.22)
    n = pulses_for(p, 1.5e6)
    alice, _, totals, bob_basis, bob_bit = run(p, n, seed=seed)
    sifted = bob_basis == alice.basis
    errors = sifted & (bob_bit != alice.bit)
    for c in range(3):
        pulses = int(totals.pulses[c])
        detections = int(totals.detections[c])
        assert_binomial(pulses, n, fig.probabilities[c], f"pulses of class {c}")
        assert_binomial(detections, pulses, fig.gains[c], f"detections of class {c}")
        in_class = alice.intensity_class == c
        n_sifted = int(np.count_nonzero(sifted & in_class))
        assert_binomial(n_sifted, detections, 0.5, f"sifted of class {c}")
        n_errors = int(np.count_nonzero(errors & in_class))
        assert_binomial(n_errors, n_sifted, fig.qbers[c], f"sifted errors of class {c}")
    # The signal class carries most detections; its QBER is tight at this sample size.
    signal_sifted = int(np.count_nonzero(sifted & (alice.intensity_class == 0)))
    assert signal_sifted > 400_000


def test_vacuum_class_with_strong_background() -> None:
    p = ChannelParameters(length_km=30.0, dark_count_yield=1e-3)
    fig = model_figures(p, 1.22)
    alice, _, totals, bob_basis, bob_bit = run(p, 5_000_000, seed=4)
    vacuum = alice.intensity_class == 2
    assert_binomial(int(totals.detections[2]), int(totals.pulses[2]), 1e-3, "vacuum detections")
    sifted = vacuum & (bob_basis == alice.basis)
    n_errors = int(np.count_nonzero(sifted & (bob_bit != alice.bit)))
    assert_binomial(n_errors, int(np.count_nonzero(sifted)), 0.5, "vacuum errors")
    assert fig.qbers[2] == pytest.approx(0.5)


@pytest.mark.parametrize("eve", [0.5, 1.0])
def test_eavesdropper_qber(eve: float) -> None:
    p = ChannelParameters(length_km=10.0, eavesdrop_fraction=eve)
    clean = model_figures(dataclasses.replace(p, eavesdrop_fraction=0.0), 1.22)
    n = pulses_for(p, 1e6)
    alice, _, totals, bob_basis, bob_bit = run(p, n, seed=int(eve * 100))
    sifted = bob_basis == alice.basis
    for c in (0, 1):
        in_class = sifted & (alice.intensity_class == c)
        n_sifted = int(np.count_nonzero(in_class))
        n_errors = int(np.count_nonzero(in_class & (bob_bit != alice.bit)))
        expected = qber_with_eavesdropper(clean.qbers[c], eve)
        assert_binomial(n_errors, n_sifted, expected, f"class {c} with Eve {eve}")
    # Eve does not change the gains.
    assert_binomial(int(totals.detections[0]), int(totals.pulses[0]), clean.gains[0], "gain")


def test_full_intercept_resend_on_a_noiseless_channel() -> None:
    p = ChannelParameters(length_km=0.0, dark_count_yield=0.0, misalignment_error=0.0)
    alice, _, _, bob_basis, bob_bit = run(p, 20_000_000, seed=5)
    sifted = bob_basis == alice.basis
    assert int(np.count_nonzero(sifted & (bob_bit != alice.bit))) == 0
    p_eve = dataclasses.replace(p, eavesdrop_fraction=1.0)
    alice, out, _, bob_basis, bob_bit = run(p_eve, 20_000_000, seed=6)
    sifted = bob_basis == alice.basis
    n_errors = int(np.count_nonzero(sifted & (bob_bit != alice.bit)))
    assert_binomial(n_errors, int(np.count_nonzero(sifted)), 0.25, "full intercept-resend")
    # Eve's resent basis is hers: it differs from Alice's half of the time.
    assert_binomial(int(np.count_nonzero(out.basis != alice.basis)), len(alice), 0.5, "basis")


def test_decoys_off() -> None:
    p = ChannelParameters(length_km=10.0, decoy=False, mu=0.02, nu=0.1)
    n = 50_000_000
    alice, _, totals, _, _ = run(p, n, seed=7)
    assert totals.pulses.tolist() == [n, 0, 0]
    assert not np.any(alice.intensity_class)
    assert_binomial(int(totals.detections[0]), n, model_figures(p, 1.22).q_mu, "signal gain")


def test_choices_are_uniform_and_measurement_is_consistent() -> None:
    p = ChannelParameters(length_km=20.0)
    alice, out, _, bob_basis, bob_bit = run(p, pulses_for(p, 4e5), seed=8)
    count = len(alice)
    for bits, what in [
        (alice.basis, "Alice basis"),
        (alice.bit, "Alice bit"),
        (bob_basis, "Bob basis"),
    ]:
        assert_binomial(int(bits.sum()), count, 0.5, what)
    match = bob_basis == out.basis
    assert np.array_equal(bob_bit[match], out.value[match])
    mismatch = ~match
    assert_binomial(
        int(np.count_nonzero(bob_bit[mismatch] != out.value[mismatch])),
        int(np.count_nonzero(mismatch)),
        0.5,
        "random outcome in the wrong basis",
    )
    # Non-sifted bits carry no information about Alice's bit.
    not_sifted = bob_basis != alice.basis
    assert_binomial(
        int(np.count_nonzero(bob_bit[not_sifted] != alice.bit[not_sifted])),
        int(np.count_nonzero(not_sifted)),
        0.5,
        "non-sifted agreement",
    )


def test_seeded_runs_are_reproducible() -> None:
    p = ChannelParameters(length_km=25.0, eavesdrop_fraction=0.3)
    a1, o1, t1, b1, v1 = run(p, 3_000_000, seed=9)
    a2, o2, t2, b2, v2 = run(p, 3_000_000, seed=9)
    pairs: list[tuple[npt.NDArray[Any], npt.NDArray[Any]]] = [
        (a1.slots, a2.slots),
        (a1.intensity_class, a2.intensity_class),
        (a1.bit, a2.bit),
        (o1.value, o2.value),
        (t1.pulses, t2.pulses),
        (b1, b2),
        (v1, v2),
    ]
    for x, y in pairs:
        assert np.array_equal(x, y)


def test_detections_form_a_bernoulli_process() -> None:
    """Slots are uniform over the range and adjacent slots are independent."""
    rng = np.random.default_rng(10)
    n, prob = 50_000_000, 0.02
    offsets = _bernoulli_slots(rng, n, prob).astype(np.int64)
    count = offsets.size
    assert_binomial(count, n, prob, "detections")
    histogram = np.bincount(offsets * 10 // n, minlength=10)
    for k in histogram:
        assert_binomial(int(k), count, 0.1, "decile")
    # P(next slot detected | this one detected) = prob.
    assert_binomial(int(np.count_nonzero(np.diff(offsets) == 1)), count - 1, prob, "gap of 1")


def test_bernoulli_slots_in_small_batches() -> None:
    """The continuation over several batches gives the same statistics."""
    rng = np.random.default_rng(11)
    n, prob, reps = 10_000, 0.05, 300
    total = 0
    position_sum = 0
    for _ in range(reps):
        offsets = _bernoulli_slots(rng, n, prob, batch=7).astype(np.int64)
        assert np.all(np.diff(offsets) > 0)
        assert offsets.size == 0 or (offsets[0] >= 0 and offsets[-1] < n)
        total += offsets.size
        position_sum += int(offsets.sum())
    assert_binomial(total, n * reps, prob, "detections over batches")
    mean_position = position_sum / total
    sigma = n / math.sqrt(12 * total)
    assert abs(mean_position - (n - 1) / 2) <= SIGMAS * sigma


def test_bernoulli_slots_edge_cases() -> None:
    rng = np.random.default_rng(12)
    assert _bernoulli_slots(rng, 100, 0.0).size == 0
    assert _bernoulli_slots(rng, 0, 0.5).size == 0
    assert _bernoulli_slots(rng, 5, 1.0).tolist() == [0, 1, 2, 3, 4]
    offsets = _bernoulli_slots(rng, 10**13, 1e-9)  # huge range, few detections
    assert_binomial(offsets.size, 10**13, 1e-9, "sparse")
    assert int(offsets.max()) < 10**13
