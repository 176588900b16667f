"""Analytic channel model against hand-computed GYS numbers and the literature's cutoffs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from qkdnet.node.core import channel_model as cm
from qkdnet.node.core.channel_model import (
    GYS_RECONCILIATION_EFFICIENCY,
    ChannelParameters,
    binary_entropy,
    error_rate,
    gain,
    max_distance,
    model_figures,
    optimal_gllp_mu,
    qber_with_eavesdropper,
    single_photon_error,
    single_photon_gain,
    single_photon_yield,
    transmittance,
)

F = GYS_RECONCILIATION_EFFICIENCY


def _h2(x: float) -> float:
    return -x * math.log2(x) - (1 - x) * math.log2(1 - x)


# Hand computation with the GYS set (alpha 0.21 dB/km, eta_Bob 0.045, Y0 1.7e-6, e_det 0.033,
# mu 0.48):
#   0 km:  eta = 0.045; eta*mu = 0.0216; 1 - e^-0.0216 = 0.0213684;
#          Q_mu = 1.7e-6 + 0.0213684 = 0.0213701; E_mu = (0.85e-6 + 0.033*0.0213684)/Q = 0.033038
#   50 km: eta = 0.045 * 10^-1.05 = 0.045 * 0.0891251 = 0.00401063; eta*mu = 0.00192510;
#          1 - e^-x = 0.00192325; Q_mu = 0.00192495; E_mu = (0.85e-6 + 6.34673e-5)/Q = 0.033413
GYS_POINTS = [
    (0.0, 0.045, 0.0213701, 0.033038),
    (50.0, 0.00401063, 0.00192495, 0.033413),
]


@pytest.mark.parametrize(("length", "eta", "q_mu", "e_mu"), GYS_POINTS)
def test_gys_hand_computed_values(length: float, eta: float, q_mu: float, e_mu: float) -> None:
    p = ChannelParameters(length_km=length)
    assert transmittance(p) == pytest.approx(eta, rel=1e-5)
    fig = model_figures(p, F)
    assert fig.q_mu == pytest.approx(q_mu, rel=1e-5)
    assert fig.e_mu == pytest.approx(e_mu, rel=1e-4)
    assert gain(0.48, eta, 1.7e-6) == pytest.approx(q_mu, rel=1e-5)
    assert error_rate(0.48, eta, 1.7e-6, 0.033) == pytest.approx(e_mu, rel=1e-4)


def test_single_photon_formulas() -> None:
    eta, y0, e_det, mu = 0.01, 1.7e-6, 0.033, 0.48
    y1 = y0 + eta - y0 * eta
    assert single_photon_yield(eta, y0) == pytest.approx(y1, rel=1e-12)
    assert single_photon_gain(mu, eta, y0) == pytest.approx(y1 * mu * math.exp(-mu), rel=1e-12)
    assert single_photon_error(eta, y0, e_det) == pytest.approx((0.5 * y0 + e_det * eta) / y1)
    # Vacuum: the gain is Y0 and the error rate 1/2.
    assert gain(0.0, eta, y0) == pytest.approx(y0)
    assert error_rate(0.0, eta, y0, e_det) == pytest.approx(0.5)
    # Never detected: e0 by convention, no division by zero.
    assert error_rate(0.5, 0.0, 0.0, e_det) == 0.5
    assert single_photon_error(0.0, 0.0, e_det) == 0.5


def test_functions_vectorise() -> None:
    etas = np.array([0.045, 0.01, 1e-4])
    q = gain(0.48, etas, 1.7e-6)
    e = error_rate(0.48, etas, 1.7e-6, 0.033)
    assert isinstance(q, np.ndarray)
    assert q.shape == (3,)
    for i, eta in enumerate(etas):
        assert q[i] == pytest.approx(gain(0.48, float(eta), 1.7e-6))
        assert e[i] == pytest.approx(error_rate(0.48, float(eta), 1.7e-6, 0.033))
    assert isinstance(gain(0.48, 0.01, 1.7e-6), float)
    mus = np.array([0.1, 0.48])
    assert np.allclose(single_photon_gain(mus, 0.01, 0.0), 0.01 * mus * np.exp(-mus))


def test_binary_entropy() -> None:
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.11) == pytest.approx(_h2(0.11))
    h = binary_entropy(np.array([0.0, 0.25, 0.5, 1.0]))
    assert np.allclose(h, [0.0, _h2(0.25), 1.0, 0.0])
    assert np.all(np.isfinite(h))
    with pytest.raises(ValueError, match="x must be in"):
        binary_entropy(1.5)
    with pytest.raises(ValueError, match="x must be in"):
        binary_entropy(np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="x must be in"):
        binary_entropy(math.nan)


def test_qber_with_eavesdropper() -> None:
    assert qber_with_eavesdropper(0.0, 1.0) == pytest.approx(0.25)
    assert qber_with_eavesdropper(0.033, 0.0) == pytest.approx(0.033)
    assert qber_with_eavesdropper(0.033, 0.5) == pytest.approx(0.033 + 0.5 * (0.25 - 0.0165))
    assert qber_with_eavesdropper(0.5, 0.7) == pytest.approx(0.5)  # dark counts stay random
    with pytest.raises(ValueError, match="p must be in"):
        qber_with_eavesdropper(0.03, 1.2)


def test_rates_decrease_with_distance() -> None:
    lengths = np.arange(0.0, 150.0, 5.0)
    figs = [model_figures(ChannelParameters(length_km=float(x)), F) for x in lengths]
    for name in ("r_textbook_decoy", "r_protocol_infinite", "r_protocol_practical", "q_mu"):
        values = np.array([getattr(f, name) for f in figs])
        positive = values[values > 0]
        assert np.all(np.diff(positive) < 0), name
        assert np.all(values[len(positive) :] == 0.0), name
    # The practical bound stays below the infinite-decoy rate and near it with the defaults.
    for fig in figs:
        assert fig.r_protocol_practical <= fig.r_protocol_infinite
        assert fig.y1_lower <= fig.y1 * (1 + 1e-12)
        assert fig.e1_upper >= fig.e1 * (1 - 1e-12) or fig.y1_lower <= 0
    fig50 = figs[10]
    assert fig50.length_km == 50.0
    assert fig50.r_protocol_practical / fig50.r_protocol_infinite > 0.85


def test_protocol_and_textbook_factors() -> None:
    p = ChannelParameters(length_km=40.0)
    fig = model_figures(p, F, pe_sample_fraction=0.1)
    bracket = fig.q1 * (1 - _h2(fig.e1)) - F * fig.q_mu * _h2(fig.e_mu)
    assert fig.r_textbook_decoy == pytest.approx(0.5 * bracket)
    assert fig.r_protocol_infinite == pytest.approx(0.8 * 0.5 * 0.9 * bracket)
    practical = fig.q1_lower * (1 - _h2(fig.e1_upper)) - F * fig.q_mu * _h2(fig.e_mu)
    assert fig.r_protocol_practical == pytest.approx(0.8 * 0.5 * 0.9 * practical)
    assert fig.secret_per_pulse == fig.r_protocol_practical
    assert fig.secret_bits_per_second == pytest.approx(fig.secret_per_pulse * 1e9)
    assert fig.sifted_signal_per_pulse == pytest.approx(0.8 * fig.q_mu / 2)
    assert fig.key_candidate_per_pulse == pytest.approx(0.9 * fig.sifted_signal_per_pulse)
    expected_detections = 0.8 * fig.gains[0] + 0.15 * fig.gains[1] + 0.05 * fig.gains[2]
    assert fig.detections_per_pulse == pytest.approx(expected_detections)
    assert fig.gains[2] == pytest.approx(1.7e-6)


def test_practical_bounds_match_hand_formula() -> None:
    fig = model_figures(ChannelParameters(length_km=60.0), F)
    mu, nu, y0 = 0.48, 0.1, 1.7e-6
    q_mu, q_nu, e_nu = fig.gains[0], fig.gains[1], fig.qbers[1]
    y1l = (
        mu
        / (mu * nu - nu**2)
        * (q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu**2 / mu**2 - (mu**2 - nu**2) / mu**2 * y0)
    )
    e1u = (e_nu * q_nu * math.exp(nu) - 0.5 * y0) / (y1l * nu)
    assert fig.y1_lower == pytest.approx(y1l, rel=1e-12)
    assert fig.e1_upper == pytest.approx(e1u, rel=1e-12)
    assert fig.q1_lower == pytest.approx(y1l * mu * math.exp(-mu), rel=1e-12)


def test_decoy_cutoff_matches_literature() -> None:
    p = ChannelParameters(length_km=0.0)
    textbook = max_distance(p, F, decoy=True, practical=False)
    practical = max_distance(p, F, decoy=True, practical=True)
    assert 130.0 < textbook < 160.0
    assert textbook > 140.0  # "a little over 140 km"
    assert 130.0 < practical <= textbook
    # The rate is positive just before and zero just after the cutoff.
    before = model_figures(dataclasses.replace(p, length_km=textbook - 0.5), F)
    after = model_figures(dataclasses.replace(p, length_km=textbook + 0.5), F)
    assert before.r_textbook_decoy > 0.0
    assert after.r_textbook_decoy == 0.0


def test_gllp_cutoff_well_below_decoy() -> None:
    p = ChannelParameters(length_km=0.0)
    decoy = max_distance(p, F, decoy=True, practical=False)
    # At mu = 0.48 the multi-photon probability exceeds the gain even at 0 km: no key at all.
    assert max_distance(p, F, decoy=False, practical=False) == 0.0
    assert model_figures(p, F).r_textbook_gllp == 0.0
    optimal = max_distance(p, F, decoy=False, practical=False, optimize_mu=True)
    assert 25.0 < optimal < 50.0  # literature: roughly 30-45 km
    assert optimal < decoy / 2


def test_optimal_gllp_mu() -> None:
    p = ChannelParameters(length_km=20.0, decoy=False)
    mu = optimal_gllp_mu(p, F)
    assert 1e-3 < mu < 0.1
    best = model_figures(dataclasses.replace(p, mu=mu), F).r_textbook_gllp
    assert best > 0.0
    for other in (mu * 0.7, mu * 1.4):
        assert model_figures(dataclasses.replace(p, mu=other), F).r_textbook_gllp <= best


def test_decoy_off_uses_gllp() -> None:
    p = ChannelParameters(length_km=10.0, decoy=False, mu=0.02)
    assert p.probabilities() == (1.0, 0.0, 0.0)
    assert p.intensities() == (0.02, 0.1, 0.0)  # nu need not be below mu without decoys
    fig = model_figures(p, F)
    assert fig.secret_per_pulse == fig.r_protocol_gllp > 0.0
    assert fig.sifted_signal_per_pulse == pytest.approx(fig.q_mu / 2)
    assert fig.gllp_delta == pytest.approx((1 - 1.02 * math.exp(-0.02)) / fig.q_mu)


def test_eavesdropper_raises_errors_and_kills_key() -> None:
    base = model_figures(ChannelParameters(length_km=20.0), F)
    half = model_figures(ChannelParameters(length_km=20.0, eavesdrop_fraction=0.5), F)
    full = model_figures(ChannelParameters(length_km=20.0, eavesdrop_fraction=1.0), F)
    assert half.gains == base.gains
    assert half.qbers_without_eavesdropper == base.qbers
    for c in range(3):
        assert half.qbers[c] == pytest.approx(qber_with_eavesdropper(base.qbers[c], 0.5))
    assert half.e1 == pytest.approx(qber_with_eavesdropper(base.e1, 0.5))
    assert full.e_mu > 0.25
    assert half.secret_per_pulse == 0.0
    assert full.secret_per_pulse == 0.0
    assert full.r_protocol_infinite == 0.0
    assert (
        max_distance(ChannelParameters(0.0, eavesdrop_fraction=1.0), F, decoy=True, practical=False)
        == 0.0
    )
    small = model_figures(ChannelParameters(length_km=20.0, eavesdrop_fraction=0.05), F)
    assert 0.0 < small.secret_per_pulse < base.secret_per_pulse


def test_no_vacuum_class_uses_weak_bound() -> None:
    with_vacuum = model_figures(ChannelParameters(length_km=50.0), F)
    without = model_figures(
        ChannelParameters(length_km=50.0, p_signal=0.8, p_decoy=0.2, p_vacuum=0.0), F
    )
    assert without.y0_estimate > 1.7e-6  # an upper bound on Y0
    assert 0.0 < without.y1_lower < with_vacuum.y1_lower
    assert 0.0 < without.r_textbook_practical < with_vacuum.r_textbook_practical


def test_lossless_fibre_never_cuts_off() -> None:
    p = ChannelParameters(length_km=0.0, fiber_loss_db_per_km=0.0)
    assert max_distance(p, F, decoy=True, practical=True) == math.inf


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("length_km", -1.0),
        ("length_km", math.nan),
        ("fiber_loss_db_per_km", -0.1),
        ("detector_efficiency", 0.0),
        ("detector_efficiency", 1.5),
        ("dark_count_yield", -1e-6),
        ("misalignment_error", 0.6),
        ("pulse_rate_hz", 0.0),
        ("mu", 0.0),
        ("nu", 0.6),
        ("p_signal", 1.5),
        ("eavesdrop_fraction", 1.1),
        ("length_km", "10"),
    ],
)
def test_parameter_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ChannelParameters(**{"length_km": 10.0, field: value})  # type: ignore[arg-type]


def test_probability_validation() -> None:
    with pytest.raises(ValueError, match="p_signal \\+ p_decoy \\+ p_vacuum"):
        ChannelParameters(length_km=1.0, p_signal=0.9)
    with pytest.raises(ValueError, match="p_decoy"):
        ChannelParameters(length_km=1.0, p_signal=0.9, p_decoy=0.0, p_vacuum=0.1)
    with pytest.raises(ValueError, match="p_signal"):
        ChannelParameters(length_km=1.0, p_signal=0.0, p_decoy=0.9, p_vacuum=0.1)
    # Without decoys the class probabilities are not used (each must still be a probability).
    assert ChannelParameters(
        length_km=1.0, decoy=False, p_signal=1.0, p_decoy=0.15, p_vacuum=0.05
    ).probabilities() == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="p_vacuum"):
        ChannelParameters(length_km=1.0, decoy=False, p_vacuum=-0.1)


def test_function_argument_validation() -> None:
    p = ChannelParameters(length_km=1.0)
    with pytest.raises(ValueError, match=r"^f must be"):
        model_figures(p, 0.0)
    with pytest.raises(ValueError, match="pe_sample_fraction"):
        model_figures(p, F, pe_sample_fraction=1.0)
    with pytest.raises(ValueError, match="nu"):
        cm.vacuum_weak_decoy_bounds(0.1, 0.2, 1e-3, 1e-4, 0.03, 1e-6)
