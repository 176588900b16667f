"""The GG02 asymptotic key (reverse reconciliation, trusted detector) against cv-qkd.md's
computed oracles (1e-3 relative) and published checks."""

from __future__ import annotations

import math

import pytest

from qkdnet.node.core.cv_model import CvParameters, cv_figures

# (km, xi) -> (K homodyne, K heterodyne) at V_A = 4, eta 0.6, v_el 0.05, beta 0.95, 0.2 dB/km
ORACLES = {
    (10, 0.01): (2.453e-1, 2.634e-1),
    (25, 0.01): (8.831e-2, 8.932e-2),
    (50, 0.01): (2.200e-2, 2.189e-2),
    (100, 0.01): (1.893e-3, 1.890e-3),
    (10, 0.05): (1.718e-1, 1.843e-1),
    (25, 0.05): (5.630e-2, 5.659e-2),
    (50, 0.05): (1.141e-2, 1.125e-2),
    (150, 0.05): (3.465e-6, 3.437e-6),
}


@pytest.mark.parametrize(("point", "expected"), ORACLES.items())
def test_key_per_symbol_matches_the_computed_table(
    point: tuple[int, float], expected: tuple[float, float]
) -> None:
    km, xi = point
    for detection, value in zip(("homodyne", "heterodyne"), expected, strict=True):
        figures = cv_figures(CvParameters(km, excess_noise=xi, detection=detection))  # type: ignore[arg-type]
        assert figures.key_per_symbol == pytest.approx(value, rel=2e-3), (km, xi, detection)


def test_the_parts_at_25_km() -> None:
    for detection, mutual, holevo in (
        ("homodyne", 0.39183, 0.28393),
        ("heterodyne", 0.44475, 0.33319),
    ):
        f = cv_figures(CvParameters(25, detection=detection))  # type: ignore[arg-type]
        assert f.mutual_information == pytest.approx(mutual, rel=1e-4)
        assert f.holevo_bound == pytest.approx(holevo, rel=1e-4)
    assert cv_figures(CvParameters(25)).snr == pytest.approx(0.722, rel=1e-3)


def test_lodewyck_2007_and_pure_loss() -> None:
    lodewyck = CvParameters(
        25,
        modulation_variance=18.5,
        excess_noise=0.005,
        detector_efficiency=0.606,
        electronic_noise=0.041,
        reconciliation_efficiency=0.898,
        loss_db_per_km=-10 * math.log10(0.302) / 25,
    )
    f = cv_figures(lodewyck)
    assert f.mutual_information == pytest.approx(1.0436, rel=1e-3)
    assert f.holevo_bound == pytest.approx(0.9020, rel=1e-3)
    assert f.key_per_symbol == pytest.approx(0.0352, rel=5e-3)
    # Ideal homodyne RR on pure loss: half the repeaterless capacity, -1/2 log2(1 - T).
    for km, expected in ((50, 7.599e-2), (100, 7.249e-3), (200, 7.213e-5)):
        ideal = CvParameters(
            km, modulation_variance=1e4, excess_noise=0, detector_efficiency=1,
            electronic_noise=0, reconciliation_efficiency=1,
        )  # fmt: skip
        assert cv_figures(ideal).key_per_symbol == pytest.approx(expected, rel=2e-3)


def test_no_key_beyond_the_zero_with_noise_at_bob() -> None:
    # xi = 0.05 input-referred, 1e-3 SNU at Bob: the key ends near 74.2 km.
    near = CvParameters(73, excess_noise=0.05, bob_noise=1e-3)
    far = CvParameters(76, excess_noise=0.05, bob_noise=1e-3)
    assert cv_figures(near).key_per_symbol > 0
    assert cv_figures(far).key_per_symbol == 0.0
    # An eavesdropper raising xi to 0.2 at 50 km leaves no key either.
    assert cv_figures(CvParameters(50, excess_noise=0.2)).key_per_symbol == 0.0


def test_bad_parameters_say_which() -> None:
    with pytest.raises(ValueError, match="detector_efficiency"):
        CvParameters(10, detector_efficiency=0)
