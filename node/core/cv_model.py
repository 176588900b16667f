"""The asymptotic secret key of GG02 continuous-variable QKD (Gaussian-modulated coherent
states), reverse reconciliation, collective attacks, trusted detector noise (`cv-qkd.md` §3).

All variances in shot-noise units. For a channel of transmittance T and input-referred excess
noise xi, a detector of efficiency eta and electronic noise v_el, modulation variance V_A and
reconciliation efficiency beta:

    K = beta·I_AB − chi_BE   (bits per symbol)

with I_AB the mutual information of homodyne (½·log2(1 + SNR)) or heterodyne (log2(1 + SNR))
detection, and chi_BE the Holevo bound on Eve's information about Bob's data, from the
symplectic eigenvalues of the Alice–Bob state (Lodewyck et al. 2007 for homodyne, Fossier et
al. 2009 for heterodyne). A noise that arises at Bob (`bob_noise`, phase noise left after carrier
recovery, say) does not shrink with T: it enters as xi + bob_noise/T. I/O-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["CvFigures", "CvParameters", "cv_figures", "transmittance"]

Detection = Literal["homodyne", "heterodyne"]


def transmittance(length_km: float, loss_db_per_km: float = 0.2) -> float:
    return 10 ** (-loss_db_per_km * length_km / 10)


@dataclass(frozen=True)
class CvParameters:
    """One CV-QKD link: fibre, modulation, detector, reconciliation."""

    length_km: float
    loss_db_per_km: float = 0.2
    modulation_variance: float = 4.0  # V_A
    excess_noise: float = 0.01  # xi, referred to the channel input
    bob_noise: float = 0.0  # noise arising at Bob (SNU), referred to his input
    detector_efficiency: float = 0.6
    electronic_noise: float = 0.05  # v_el
    detection: Detection = "homodyne"
    reconciliation_efficiency: float = 0.95  # beta

    def __post_init__(self) -> None:
        checks = (
            ("length_km", 0.0 <= self.length_km <= 1000.0),
            ("loss_db_per_km", 0.0 <= self.loss_db_per_km <= 10.0),
            ("modulation_variance", 0.0 < self.modulation_variance <= 1e6),
            ("excess_noise", 0.0 <= self.excess_noise <= 10.0),
            ("bob_noise", 0.0 <= self.bob_noise <= 10.0),
            ("detector_efficiency", 0.0 < self.detector_efficiency <= 1.0),
            ("electronic_noise", 0.0 <= self.electronic_noise <= 10.0),
            ("detection", self.detection in ("homodyne", "heterodyne")),
            ("reconciliation_efficiency", 0.0 < self.reconciliation_efficiency <= 1.0),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}: {getattr(self, name)!r} is out of range")


@dataclass(frozen=True)
class CvFigures:
    """What the model says of a link (bits per symbol, SNR per measured quadrature)."""

    transmittance: float
    snr: float
    mutual_information: float  # I_AB
    holevo_bound: float  # chi_BE
    key_per_symbol: float  # beta·I_AB − chi_BE, never below 0


def _g(x: float) -> float:
    """G(x) = (x+1)·log2(x+1) − x·log2(x), the entropy of a thermal state of mean x."""
    if x <= 0:
        return 0.0
    return (x + 1) * math.log2(x + 1) - x * math.log2(x)


def _eigen_pair(s: float, p: float) -> tuple[float, float]:
    """The two roots of λ² (sum s, product p), as λ."""
    root = math.sqrt(max(0.0, s * s - 4 * p))
    return math.sqrt(max(0.0, (s + root) / 2)), math.sqrt(max(0.0, (s - root) / 2))


def cv_figures(params: CvParameters) -> CvFigures:
    """The asymptotic figures of GG02 with reverse reconciliation over `params`."""
    t = transmittance(params.length_km, params.loss_db_per_km)
    eta, v_el = params.detector_efficiency, params.electronic_noise
    xi = params.excess_noise + params.bob_noise / t
    v = params.modulation_variance + 1
    chi_line = 1 / t - 1 + xi
    homodyne = params.detection == "homodyne"
    chi_det = (1 - eta + v_el) / eta if homodyne else (2 - eta + 2 * v_el) / eta
    chi_tot = chi_line + chi_det / t
    ratio = (v + chi_tot) / (1 + chi_tot)
    mutual = 0.5 * math.log2(ratio) if homodyne else math.log2(ratio)
    if homodyne:
        snr = eta * t * params.modulation_variance / (1 + v_el + eta * t * xi)
    else:
        snr = eta * t * params.modulation_variance / (2 + 2 * v_el + eta * t * xi)

    a = v * v * (1 - 2 * t) + 2 * t + t * t * (v + chi_line) ** 2
    b = t * t * (v * chi_line + 1) ** 2
    l1, l2 = _eigen_pair(a, b)
    sqrt_b = math.sqrt(b)
    scale = t * (v + chi_tot)
    if homodyne:
        c = (v * sqrt_b + t * (v + chi_line) + a * chi_det) / scale
        d = sqrt_b * (v + sqrt_b * chi_det) / scale
    else:
        c = (
            a * chi_det**2
            + b
            + 1
            + 2 * chi_det * (v * sqrt_b + t * (v + chi_line))
            + 2 * t * (v * v - 1)
        ) / scale**2
        d = ((v + sqrt_b * chi_det) / scale) ** 2
    l3, l4 = _eigen_pair(c, d)
    holevo = sum(_g((lam - 1) / 2) for lam in (l1, l2)) - sum(_g((lam - 1) / 2) for lam in (l3, l4))
    key = max(0.0, params.reconciliation_efficiency * mutual - holevo)
    return CvFigures(t, snr, mutual, holevo, key)
