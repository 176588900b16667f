"""Decoy-state estimation from counts: expected counts reproduce the model, emulated counts are
within statistical tolerance, and no key comes out where the model has none."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest

from qkdnet.node.core.channel_model import (
    ChannelParameters,
    ModelFigures,
    binary_entropy,
    model_figures,
)
from qkdnet.node.core.decoy import (
    ClassCounts,
    DecoyEstimate,
    count_classes,
    estimate,
    gllp_estimate,
    secret_key_length,
)
from qkdnet.node.core.quantum_channel import measure, transmit

F = 1.22
PE = 0.05


def expected_counts(
    fig: ModelFigures, n_pulses: float
) -> tuple[ClassCounts, ClassCounts, ClassCounts]:
    """Counts at their expected values (every sifted bit of every class counted for errors)."""
    counts = []
    for c in range(3):
        pulses = round(n_pulses * fig.probabilities[c])
        detections = round(pulses * fig.gains[c])
        sifted = round(detections / 2)
        counts.append(ClassCounts(pulses, detections, sifted, round(sifted * fig.qbers[c])))
    return counts[0], counts[1], counts[2]


def estimate_from(fig: ModelFigures, n_pulses: float) -> DecoyEstimate:
    signal, decoy, vacuum = expected_counts(fig, n_pulses)
    return estimate(
        signal, decoy, vacuum, fig.intensities[0], fig.intensities[1], signal_qber=fig.e_mu
    )


def key_length_from(fig: ModelFigures, n_pulses: float) -> tuple[int, int]:
    """(secret key length, key bits) for a round at expected counts."""
    signal, _, _ = expected_counts(fig, n_pulses)
    est = estimate_from(fig, n_pulses)
    n_key = round(signal.sifted * (1 - PE))
    leaked = math.ceil(F * binary_entropy(fig.e_mu) * n_key)
    return secret_key_length(n_key, est, leaked), n_key


@pytest.mark.parametrize("length", [0.0, 10.0, 50.0, 100.0, 130.0])
@pytest.mark.parametrize("eve", [0.0, 0.02])
def test_expected_counts_reproduce_analytic_bounds(length: float, eve: float) -> None:
    fig = model_figures(ChannelParameters(length_km=length, eavesdrop_fraction=eve), F)
    est = estimate_from(fig, 1e16)
    assert est.valid
    assert est.method == "vacuum+weak"
    assert est.q_mu == pytest.approx(fig.q_mu, rel=1e-9)
    assert est.y0 == pytest.approx(1.7e-6, rel=1e-6)
    assert est.y1_lower == pytest.approx(fig.y1_lower, rel=1e-5)
    assert est.e1_upper == pytest.approx(fig.e1_upper, rel=1e-5)
    assert est.q1_lower == pytest.approx(fig.q1_lower, rel=1e-5)
    assert est.single_photon_fraction == pytest.approx(fig.q1_lower / fig.q_mu, rel=1e-5)


@pytest.mark.parametrize("length", [10.0, 50.0, 100.0])
def test_key_length_at_expected_counts_matches_protocol_rate(length: float) -> None:
    fig = model_figures(ChannelParameters(length_km=length), F, pe_sample_fraction=PE)
    n_pulses = 1e15
    m, _ = key_length_from(fig, n_pulses)
    assert m / n_pulses == pytest.approx(fig.r_protocol_practical, rel=1e-5)


@pytest.mark.parametrize("length", [145.0, 160.0, 200.0])
def test_no_key_beyond_the_cutoff(length: float) -> None:
    fig = model_figures(ChannelParameters(length_km=length), F)
    m, n_key = key_length_from(fig, 1e15)
    assert n_key > 0
    assert m == 0


def test_no_key_at_15_percent_qber() -> None:
    # An eavesdropper on half the pulses raises every QBER to ~15 %.
    fig = model_figures(ChannelParameters(length_km=10.0, eavesdrop_fraction=0.5), F)
    assert fig.e_mu == pytest.approx(0.15, abs=0.002)
    m, n_key = key_length_from(fig, 1e12)
    assert n_key > 10**8
    assert m == 0
    # Same with clean decoy statistics and only the signal QBER at 15 %.
    clean = model_figures(ChannelParameters(length_km=10.0), F)
    signal, decoy, vacuum = expected_counts(clean, 1e12)
    est = estimate(signal, decoy, vacuum, 0.48, 0.1, signal_qber=0.15)
    n_key = round(signal.sifted * (1 - PE))
    leaked = math.ceil(F * binary_entropy(0.15) * n_key)
    assert secret_key_length(n_key, est, leaked) == 0


def _delta_sigma(
    func: Callable[[dict[str, float]], float], counts: dict[str, float], variances: dict[str, float]
) -> float:
    """Standard deviation of ``func(counts)`` by linear error propagation (central differences
    of one standard deviation, the inputs taken as independent)."""
    total = 0.0
    for name, var in variances.items():
        sigma = math.sqrt(var)
        up = func(dict(counts, **{name: counts[name] + sigma}))
        down = func(dict(counts, **{name: counts[name] - sigma}))
        total += ((up - down) / 2) ** 2
    return math.sqrt(total)


@pytest.mark.parametrize(("length", "seed"), [(25.0, 1), (80.0, 2)])
def test_emulated_counts_within_statistical_tolerance(length: float, seed: int) -> None:
    p = ChannelParameters(length_km=length)
    fig = model_figures(p, F)
    rng = np.random.default_rng(seed)
    n_pulses = int(2e6 / fig.detections_per_pulse)
    alice, out, totals = transmit(rng, p, 0, n_pulses)
    bob_basis, bob_bit = measure(rng, out)
    sifted = bob_basis == alice.basis
    errors = sifted & (bob_bit != alice.bit)
    is_signal = alice.intensity_class == 0
    sample = sifted & is_signal & (rng.random(len(alice)) < PE)
    disclosed_errors = errors & (sample | ~is_signal)
    signal, decoy, vacuum = count_classes(
        totals.pulses, alice.intensity_class, sifted, disclosed_errors
    )
    n_sample = int(np.count_nonzero(sample))
    signal_qber = int(np.count_nonzero(errors & sample)) / n_sample
    sigma_qber = math.sqrt(fig.e_mu * (1 - fig.e_mu) / n_sample)
    assert abs(signal_qber - fig.e_mu) <= 5 * sigma_qber

    est = estimate(signal, decoy, vacuum, p.mu, p.nu, signal_qber=signal_qber)
    assert est.valid

    # Error propagation around the expected counts (pulses per class taken as observed).
    pulses = [float(signal.pulses), float(decoy.pulses), float(vacuum.pulses)]
    mean = {
        "det_s": pulses[0] * fig.gains[0],
        "det_d": pulses[1] * fig.gains[1],
        "sift_d": pulses[1] * fig.gains[1] / 2,
        "err_d": pulses[1] * fig.gains[1] / 2 * fig.qbers[1],
        "det_v": pulses[2] * fig.gains[2],
        "qber": fig.e_mu,
    }
    variances = {
        "det_s": mean["det_s"],
        "det_d": mean["det_d"],
        "sift_d": mean["sift_d"] / 2,
        "err_d": mean["err_d"] * (1 - fig.qbers[1]),
        "det_v": mean["det_v"],
        "qber": sigma_qber**2,
    }

    def from_counts(c: dict[str, float]) -> DecoyEstimate:
        return estimate(
            ClassCounts(int(pulses[0]), round(c["det_s"]), 0, 0),
            ClassCounts(int(pulses[1]), round(c["det_d"]), round(c["sift_d"]), round(c["err_d"])),
            ClassCounts(int(pulses[2]), round(c["det_v"]), 0, 0),
            p.mu,
            p.nu,
            signal_qber=c["qber"],
        )

    for name in ("y1_lower", "e1_upper", "key_fraction"):
        expected = getattr(from_counts(mean), name)

        def value(c: dict[str, float], name: str = name) -> float:
            return float(getattr(from_counts(c), name))

        sigma = _delta_sigma(value, mean, variances)
        observed = getattr(est, name)
        assert abs(observed - expected) <= 5 * sigma, f"{name}: {observed} vs {expected} +- {sigma}"
    assert from_counts(mean).y1_lower == pytest.approx(fig.y1_lower, rel=1e-4)


def test_gllp_estimate() -> None:
    p = ChannelParameters(length_km=20.0, decoy=False, mu=0.01)
    fig = model_figures(p, F)
    signal, _, _ = expected_counts(fig, 1e15)
    est = gllp_estimate(signal, 0.01, signal_qber=fig.e_mu)
    assert est.valid
    assert est.method == "gllp"
    assert est.single_photon_fraction == pytest.approx(1 - fig.gllp_delta, rel=1e-6)
    assert est.e1_upper == pytest.approx(fig.e_mu / (1 - fig.gllp_delta), rel=1e-6)
    n_key = round(signal.sifted * (1 - PE))
    leaked = math.ceil(F * binary_entropy(fig.e_mu) * n_key)
    m = secret_key_length(n_key, est, leaked)
    assert m / 1e15 == pytest.approx(fig.r_protocol_gllp, rel=1e-5)
    # Without a decoy class, estimate() falls back to GLLP.
    same = estimate(signal, None, None, 0.01, 0.1, signal_qber=fig.e_mu)
    assert same == est


def test_gllp_without_key_at_gys_mu() -> None:
    fig = model_figures(ChannelParameters(length_km=0.0, decoy=False), F)
    signal, _, _ = expected_counts(fig, 1e12)
    est = gllp_estimate(signal, 0.48, signal_qber=fig.e_mu)
    assert not est.valid
    assert "Delta" in est.reason
    assert est.single_photon_fraction == 0.0
    assert secret_key_length(10**9, est, 0) == 0


def test_weak_decoy_without_vacuum() -> None:
    fig = model_figures(ChannelParameters(length_km=50.0), F)
    signal, decoy, vacuum = expected_counts(fig, 1e15)
    with_vacuum = estimate(signal, decoy, vacuum, 0.48, 0.1, signal_qber=fig.e_mu)
    without = estimate(signal, decoy, None, 0.48, 0.1, signal_qber=fig.e_mu)
    empty_vacuum = estimate(signal, decoy, ClassCounts(0, 0, 0, 0), 0.48, 0.1, signal_qber=fig.e_mu)
    assert without.method == empty_vacuum.method == "weak"
    assert without == empty_vacuum
    assert without.valid
    assert without.y0 >= with_vacuum.y0
    assert 0 < without.q1_lower < with_vacuum.q1_lower
    assert without.key_fraction < with_vacuum.key_fraction


def test_nonsense_statistics_give_no_key_and_no_exception() -> None:
    signal = ClassCounts(10**9, 10**6, 5 * 10**5, 0)
    # No decoy detections at all: Y1^L < 0.
    est = estimate(
        signal,
        ClassCounts(10**8, 0, 0, 0),
        ClassCounts(10**7, 10, 5, 2),
        0.48,
        0.1,
        signal_qber=0.03,
    )
    assert not est.valid
    assert est.reason
    assert secret_key_length(10**6, est, 0) == 0
    # Decoy errors at 50 %: e1^U > 1/2.
    est = estimate(
        signal,
        ClassCounts(10**8, 2 * 10**4, 10**4, 5 * 10**3),
        ClassCounts(10**7, 10, 5, 2),
        0.48,
        0.1,
        signal_qber=0.03,
    )
    assert not est.valid
    assert est.e1_upper == 0.5
    # No signal detections.
    est = estimate(
        ClassCounts(10**9, 0, 0, 0),
        ClassCounts(10**8, 2 * 10**4, 10**4, 300),
        ClassCounts(10**7, 10, 5, 2),
        0.48,
        0.1,
        signal_qber=0.0,
    )
    assert not est.valid
    # Zero pulses everywhere.
    zero = ClassCounts(0, 0, 0, 0)
    assert not estimate(zero, zero, zero, 0.48, 0.1, signal_qber=0.0).valid
    assert not gllp_estimate(zero, 0.1, signal_qber=0.0).valid
    # Bounds of an invalid estimate are finite for reporting.
    for value in dataclasses.astuple(est)[:7]:
        assert math.isfinite(value)


def test_secret_key_length_formula() -> None:
    est = DecoyEstimate(
        q_mu=1e-3,
        e_mu=0.03,
        y0=1e-6,
        y1_lower=1e-3,
        e1_upper=0.04,
        q1_lower=6e-4,
        single_photon_fraction=0.6,
        valid=True,
        method="vacuum+weak",
    )
    n, leaked = 1_000_000, 200_000
    expected = math.floor(n * 0.6 * (1 - binary_entropy(0.04)) - leaked - 2 * math.log2(1e10))
    assert secret_key_length(n, est, leaked) == expected
    assert secret_key_length(n, est, leaked, epsilon_pa=1e-20) == math.floor(
        n * 0.6 * (1 - binary_entropy(0.04)) - leaked - 2 * math.log2(1e20)
    )
    assert secret_key_length(n, est, n) == 0
    assert secret_key_length(0, est, 0) == 0
    assert secret_key_length(n, dataclasses.replace(est, valid=False), 0) == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_key_bits": -1}, "n_key_bits"),
        ({"leaked_bits": -3}, "leaked_bits"),
        ({"epsilon_pa": 0.0}, "epsilon_pa"),
        ({"epsilon_pa": 1.0}, "epsilon_pa"),
        ({"n_key_bits": 1.5}, "n_key_bits"),
    ],
)
def test_secret_key_length_validation(kwargs: dict[str, object], name: str) -> None:
    est = gllp_estimate(ClassCounts(10**9, 10**5, 5 * 10**4, 0), 0.01, signal_qber=0.03)
    args: dict[str, object] = {"n_key_bits": 1000, "est": est, "leaked_bits": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        secret_key_length(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("counts", "name"),
    [
        ((-1, 0, 0, 0), "pulses"),
        ((10, -1, 0, 0), "detections"),
        ((10, 11, 0, 0), "detections"),
        ((10, 5, 6, 0), "sifted"),
        ((10, 5, 3, 4), "sifted_errors"),
        ((10, 5, 3, 1.0), "sifted_errors"),
        ((10, True, 0, 0), "detections"),
    ],
)
def test_class_counts_validation(counts: tuple[object, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ClassCounts(*counts)  # type: ignore[arg-type]


def test_estimate_argument_validation() -> None:
    c = ClassCounts(10**6, 10**3, 500, 10)
    with pytest.raises(ValueError, match="mu"):
        estimate(c, c, c, 0.0, 0.1, signal_qber=0.03)
    with pytest.raises(ValueError, match="nu"):
        estimate(c, c, c, 0.48, 0.5, signal_qber=0.03)
    with pytest.raises(ValueError, match="signal_qber"):
        estimate(c, c, c, 0.48, 0.1, signal_qber=1.5)
    with pytest.raises(ValueError, match="signal_qber"):
        gllp_estimate(c, 0.1, signal_qber=-0.1)


def test_class_counts_accepts_numpy_integers() -> None:
    c = ClassCounts(np.int64(10), np.uint32(5), np.int8(2), np.int64(1))  # type: ignore[arg-type]
    assert type(c.pulses) is int
    assert c.gain == 0.5
    assert c.error_rate == 0.5


def test_count_classes() -> None:
    cls = np.array([0, 0, 1, 2, 0, 1, 1], dtype=np.uint8)
    sifted = np.array([1, 0, 1, 1, 1, 1, 0], dtype=bool)
    errors = np.array([1, 0, 0, 1, 0, 1, 0], dtype=bool)
    signal, decoy, vacuum = count_classes([100, 50, 20], cls, sifted, errors)
    assert signal == ClassCounts(100, 3, 2, 1)
    assert decoy == ClassCounts(50, 3, 2, 1)
    assert vacuum == ClassCounts(20, 1, 1, 1)
    with pytest.raises(ValueError, match="disclosed_errors"):
        count_classes([100, 50, 20], cls, sifted, np.ones(7, dtype=bool))
    with pytest.raises(ValueError, match="pulses_per_class"):
        count_classes([100, 50], cls, sifted, errors)
    with pytest.raises(ValueError, match="intensity_class"):
        count_classes([100, 50, 20], cls + 1, sifted, errors)
    with pytest.raises(ValueError, match="same shape"):
        count_classes([100, 50, 20], cls, sifted[:3], errors)
