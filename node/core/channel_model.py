"""Analytic model of a decoy-state BB84 link over optical fibre.

Everything here is a plain function of the channel parameters: no I/O, no randomness. The
emulated quantum channel (:mod:`qkdnet.node.core.quantum_channel`) draws its statistics from these
formulas and the link's reported figures are checked against them.

Formulas (see ``qkd-physics.md``):

* Channel, yields, gains and error rates of a Poissonian source, the asymptotic ("infinite decoy")
  key rate: H.-K. Lo, X. Ma, K. Chen, "Decoy State Quantum Key Distribution", PRL 94, 230504 (2005);
  X. Ma, B. Qi, Y. Zhao, H.-K. Lo, "Practical decoy state for quantum key distribution",
  PRA 72, 012326 (2005), section II.
* Practical vacuum + weak decoy bounds ``Y1^L`` and ``e1^U`` and the one-decoy variant without a
  vacuum class: Ma, Qi, Zhao, Lo (2005), section IV.
* Key rate without decoy states (all multi-photon pulses tagged): D. Gottesman, H.-K. Lo,
  N. Lütkenhaus, J. Preskill (GLLP), Quantum Inf. Comput. 4, 325 (2004).
* Default parameter set: C. Gobby, Z. L. Yuan, A. J. Shields (GYS), APL 84, 3762 (2004), as used
  in the papers above: alpha = 0.21 dB/km, e_det = 3.3 %, Y0 = 1.7e-6, eta_Bob = 4.5 %, f = 1.22,
  mu = 0.48.

Three key rates are distinguished:

* *textbook* ``R = q (Q1 (1 - H2(e1)) - f Q_mu H2(E_mu))`` with ``q = 1/2``, directly comparable
  with the literature (GYS: a little over 140 km with decoys, a few tens of km without);
* *protocol* rate of the emulated protocol, secret bits per emitted pulse: only signal-class sifted
  bits become key and a fraction ``pe_sample_fraction`` of them is disclosed for the QBER estimate,
  ``R = p_signal * 1/2 * (1 - pe_sample_fraction) * max(0, Q1 (1 - H2(e1)) - f Q_mu H2(E_mu))``;
* each with the true ``Q1, e1`` (infinite decoy), the practical vacuum + weak bounds
  (``Q1^L, e1^U``) or the GLLP tagging (decoys off).

The bracket ``Q1 (1 - H2(e1)) - f Q_mu H2(E_mu)`` is the same in the textbook and the protocol rate,
so both vanish at the same distance.

Eavesdropper: intercept-resend on a fraction ``p`` of the detected pulses (random basis, resend of
her result). Eve is idealised as loss-transparent: gains are unchanged and every error rate ``E``
(per intensity class and per photon number) becomes ``E + p (1/4 - E/2)``. The key rates use these
raised, measured error rates in both ``E_mu`` and ``e1`` (what the decoy estimator observes), so an
eavesdropper lowers the key and a full intercept-resend (QBER >= 25 %) leaves none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import numpy.typing as npt

from .channel_change import MAX_EXTRA_LOSS_DB, ChannelChange
from .channel_change import check_range as _check_range

__all__ = [
    "DECOY",
    "E0",
    "GYS_RECONCILIATION_EFFICIENCY",
    "MAX_EXTRA_LOSS_DB",
    "SIFTING_FACTOR",
    "SIGNAL",
    "VACUUM",
    "ChannelChange",
    "ChannelParameters",
    "FloatArray",
    "ModelFigures",
    "binary_entropy",
    "error_rate",
    "gain",
    "gllp_tagged_fraction",
    "max_distance",
    "model_figures",
    "optimal_gllp_mu",
    "qber_with_eavesdropper",
    "single_photon_error",
    "single_photon_gain",
    "single_photon_yield",
    "transmittance",
    "vacuum_weak_decoy_bounds",
    "weak_decoy_bounds",
]

FloatArray = npt.NDArray[np.float64]

SIGNAL = 0
"""Index of the signal intensity class (mean photon number ``mu``)."""
DECOY = 1
"""Index of the weak decoy intensity class (mean photon number ``nu``)."""
VACUUM = 2
"""Index of the vacuum intensity class (no photon)."""

E0 = 0.5
"""Error rate of a background (dark count) detection: a random bit."""
SIFTING_FACTOR = 0.5
"""``q``: probability that Alice's and Bob's uniformly chosen bases agree."""
GYS_RECONCILIATION_EFFICIENCY = 1.22
"""Reconciliation efficiency ``f`` used with the GYS parameter set in the literature."""

_PROBABILITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ChannelParameters:
    """Physical parameters of one QKD link (GYS defaults) and the decoy protocol settings.

    Attributes:
        length_km: fibre length.
        fiber_loss_db_per_km: fibre attenuation ``alpha``.
        detector_efficiency: ``eta_Bob``, Bob's detection efficiency including his internal loss.
        dark_count_yield: ``Y0``, probability of a (dark/background) detection in an empty slot.
        misalignment_error: ``e_det``, probability that a photon hits the wrong detector.
        pulse_rate_hz: Alice's pulse rate (slots per second).
        mu: mean photon number of the signal class (GYS optimum 0.48).
        nu: mean photon number of the weak decoy class. Default 0.1: with the vacuum + weak bound
            the practical rate is ~88 % of the infinite-decoy rate up to 100 km (cutoff 139 km
            against 142 km); a smaller ``nu`` tightens the bound but makes the per-round estimate
            noisier (fewer decoy detections): 0.05 gives 94 % but ~1.5x the round-to-round spread.
            Must satisfy ``0 < nu < mu`` when ``decoy`` is set.
        p_signal, p_decoy, p_vacuum: class probabilities. Default 0.8 / 0.15 / 0.05: the secret rate
            scales with ``p_signal``; 15 % decoys and 5 % vacuum keep the round-to-round spread of
            the estimated key at ~2 % at 50 km and ~10 % at 100 km for 10^9-pulse (1 s) rounds.
        decoy: with ``False`` every pulse is a signal pulse and the key uses GLLP; the decoy
            fields are then ignored by :meth:`probabilities`.
        eavesdrop_fraction: fraction ``p`` of detected pulses an intercept-resend Eve attacks.
        extra_loss_db: loss in dB on top of the fibre's (a bad splice, a bent fibre, a fault
            injected live: :class:`ChannelChange`); it multiplies the transmittance by
            ``10^(-extra_loss_db / 10)``.
    """

    length_km: float
    fiber_loss_db_per_km: float = 0.21
    detector_efficiency: float = 0.045
    dark_count_yield: float = 1.7e-6
    misalignment_error: float = 0.033
    pulse_rate_hz: float = 1e9
    mu: float = 0.48
    nu: float = 0.1
    p_signal: float = 0.8
    p_decoy: float = 0.15
    p_vacuum: float = 0.05
    decoy: bool = True
    eavesdrop_fraction: float = 0.0
    extra_loss_db: float = 0.0

    def __post_init__(self) -> None:
        _check_range("length_km", self.length_km, 0.0, math.inf, high_open=True)
        _check_range(
            "fiber_loss_db_per_km", self.fiber_loss_db_per_km, 0.0, math.inf, high_open=True
        )
        _check_range("detector_efficiency", self.detector_efficiency, 0.0, 1.0, low_open=True)
        _check_range("dark_count_yield", self.dark_count_yield, 0.0, 1.0, high_open=True)
        _check_range("misalignment_error", self.misalignment_error, 0.0, 0.5)
        _check_range(
            "pulse_rate_hz", self.pulse_rate_hz, 0.0, math.inf, low_open=True, high_open=True
        )
        _check_range("mu", self.mu, 0.0, math.inf, low_open=True, high_open=True)
        _check_range(
            "nu", self.nu, 0.0, self.mu if self.decoy else math.inf, low_open=True, high_open=True
        )
        if not isinstance(self.decoy, bool):
            raise ValueError(f"decoy must be a bool, got {self.decoy!r}")
        _check_range("p_signal", self.p_signal, 0.0, 1.0)
        _check_range("p_decoy", self.p_decoy, 0.0, 1.0)
        _check_range("p_vacuum", self.p_vacuum, 0.0, 1.0)
        if self.decoy:  # without decoys the class probabilities are not used
            total = self.p_signal + self.p_decoy + self.p_vacuum
            if abs(total - 1.0) > _PROBABILITY_TOLERANCE:
                raise ValueError(
                    f"p_signal + p_decoy + p_vacuum must be 1, got {total!r} "
                    f"({self.p_signal!r} + {self.p_decoy!r} + {self.p_vacuum!r})"
                )
            if self.p_signal <= 0.0:
                raise ValueError("p_signal must be > 0 when decoy is True")
            if self.p_decoy <= 0.0:
                raise ValueError("p_decoy must be > 0 when decoy is True")
        _check_range("eavesdrop_fraction", self.eavesdrop_fraction, 0.0, 1.0)
        _check_range("extra_loss_db", self.extra_loss_db, 0.0, MAX_EXTRA_LOSS_DB)

    def intensities(self) -> tuple[float, float, float]:
        """Mean photon numbers of the classes (signal, decoy, vacuum).

        Always three entries, also with ``decoy=False`` (then only the signal class is ever sent,
        see :meth:`probabilities`), so class indices keep their meaning everywhere.
        """
        return (self.mu, self.nu, 0.0)

    def probabilities(self) -> tuple[float, float, float]:
        """Probabilities of the classes (signal, decoy, vacuum); ``(1, 0, 0)`` without decoys."""
        if not self.decoy:
            return (1.0, 0.0, 0.0)
        return (self.p_signal, self.p_decoy, self.p_vacuum)


# --------------------------------------------------------------------------------------------------
# Elementary formulas (vectorised: scalars give floats, any array argument gives an array)


def _result(value: FloatArray) -> float | FloatArray:
    if value.ndim == 0:
        return float(value)
    return value


def transmittance(p: ChannelParameters) -> float:
    """Overall transmittance ``eta = eta_Bob * 10^(-(alpha L + extra) / 10)`` (fibre, extra
    loss and detector)."""
    return _transmittance_at(p, p.length_km)


def _transmittance_at(p: ChannelParameters, length_km: float) -> float:
    loss_db = p.fiber_loss_db_per_km * length_km + p.extra_loss_db
    return p.detector_efficiency * math.pow(10.0, -loss_db / 10.0)


@overload
def gain(mu: float, eta: float, y0: float) -> float: ...  # type: ignore[overload-overlap]
@overload
def gain(mu: float | FloatArray, eta: float | FloatArray, y0: float | FloatArray) -> FloatArray: ...
def gain(
    mu: float | FloatArray, eta: float | FloatArray, y0: float | FloatArray
) -> float | FloatArray:
    """Gain of a Poissonian class of mean ``mu``: ``Q_mu = Y0 + 1 - exp(-eta mu)``."""
    mu_a, eta_a, y0_a = np.asarray(mu, float), np.asarray(eta, float), np.asarray(y0, float)
    return _result(y0_a - np.expm1(-eta_a * mu_a))


@overload
def error_rate(  # type: ignore[overload-overlap]
    mu: float, eta: float, y0: float, e_det: float, e0: float = E0
) -> float: ...
@overload
def error_rate(
    mu: float | FloatArray,
    eta: float | FloatArray,
    y0: float | FloatArray,
    e_det: float | FloatArray,
    e0: float | FloatArray = E0,
) -> FloatArray: ...
def error_rate(
    mu: float | FloatArray,
    eta: float | FloatArray,
    y0: float | FloatArray,
    e_det: float | FloatArray,
    e0: float | FloatArray = E0,
) -> float | FloatArray:
    """QBER of a Poissonian class: ``E_mu = (e0 Y0 + e_det (1 - exp(-eta mu))) / Q_mu``.

    A class that is never detected (``Q_mu = 0``) is given ``e0``.
    """
    mu_a, eta_a = np.asarray(mu, float), np.asarray(eta, float)
    y0_a, e_det_a, e0_a = np.asarray(y0, float), np.asarray(e_det, float), np.asarray(e0, float)
    signal = -np.expm1(-eta_a * mu_a)
    q = y0_a + signal
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(q > 0.0, (e0_a * y0_a + e_det_a * signal) / np.where(q > 0.0, q, 1.0), e0_a)
    return _result(np.asarray(e, float))


@overload
def binary_entropy(x: float) -> float: ...  # type: ignore[overload-overlap]
@overload
def binary_entropy(x: float | FloatArray) -> FloatArray: ...
def binary_entropy(x: float | FloatArray) -> float | FloatArray:
    """Binary entropy ``H2(x) = -x log2 x - (1 - x) log2 (1 - x)``, 0 at 0 and 1.

    Raises:
        ValueError: if any ``x`` is outside [0, 1] or NaN.
    """
    xa = np.asarray(x, float)
    if not np.all((xa >= 0.0) & (xa <= 1.0)):
        raise ValueError(f"x must be in [0, 1], got {x!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -xa * np.log2(xa) - (1.0 - xa) * np.log2(1.0 - xa)
    h = np.where((xa > 0.0) & (xa < 1.0), h, 0.0)
    return _result(np.asarray(h, float))


@overload
def single_photon_yield(eta: float, y0: float) -> float: ...  # type: ignore[overload-overlap]
@overload
def single_photon_yield(eta: float | FloatArray, y0: float | FloatArray) -> FloatArray: ...
def single_photon_yield(eta: float | FloatArray, y0: float | FloatArray) -> float | FloatArray:
    """Single-photon yield ``Y1 = Y0 + eta - Y0 eta``."""
    eta_a, y0_a = np.asarray(eta, float), np.asarray(y0, float)
    return _result(y0_a + eta_a - y0_a * eta_a)


@overload
def single_photon_gain(mu: float, eta: float, y0: float) -> float: ...  # type: ignore[overload-overlap]
@overload
def single_photon_gain(
    mu: float | FloatArray, eta: float | FloatArray, y0: float | FloatArray
) -> FloatArray: ...
def single_photon_gain(
    mu: float | FloatArray, eta: float | FloatArray, y0: float | FloatArray
) -> float | FloatArray:
    """Single-photon gain ``Q1 = Y1 mu exp(-mu)``."""
    mu_a = np.asarray(mu, float)
    y1 = np.asarray(single_photon_yield(eta, y0), float)
    return _result(y1 * mu_a * np.exp(-mu_a))


@overload
def single_photon_error(  # type: ignore[overload-overlap]
    eta: float, y0: float, e_det: float, e0: float = E0
) -> float: ...
@overload
def single_photon_error(
    eta: float | FloatArray,
    y0: float | FloatArray,
    e_det: float | FloatArray,
    e0: float | FloatArray = E0,
) -> FloatArray: ...
def single_photon_error(
    eta: float | FloatArray,
    y0: float | FloatArray,
    e_det: float | FloatArray,
    e0: float | FloatArray = E0,
) -> float | FloatArray:
    """Single-photon error rate ``e1 = (e0 Y0 + e_det eta) / Y1`` (``e0`` where ``Y1 = 0``)."""
    eta_a, y0_a = np.asarray(eta, float), np.asarray(y0, float)
    e_det_a, e0_a = np.asarray(e_det, float), np.asarray(e0, float)
    y1 = y0_a + eta_a - y0_a * eta_a
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(y1 > 0.0, (e0_a * y0_a + e_det_a * eta_a) / np.where(y1 > 0.0, y1, 1.0), e0_a)
    return _result(np.asarray(e1, float))


@overload
def qber_with_eavesdropper(e_base: float, p: float) -> float: ...  # type: ignore[overload-overlap]
@overload
def qber_with_eavesdropper(e_base: float | FloatArray, p: float | FloatArray) -> FloatArray: ...
def qber_with_eavesdropper(e_base: float | FloatArray, p: float | FloatArray) -> float | FloatArray:
    """QBER with intercept-resend on a fraction ``p`` of pulses: ``e_base + p (1/4 - e_base/2)``.

    An intercepted sifted bit is wrong with probability ``1/2 * e_base + 1/2 * 1/2`` (Eve guessed
    the basis right: only the channel noise; wrong: Bob's result is random).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
    """
    e_a, p_a = np.asarray(e_base, float), np.asarray(p, float)
    if not np.all((p_a >= 0.0) & (p_a <= 1.0)):
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return _result(e_a + p_a * (0.25 - e_a / 2.0))


def gllp_tagged_fraction(mu: float, q_mu: float) -> float:
    """GLLP tagged fraction ``Delta = (1 - (1 + mu) e^-mu) / Q_mu`` (``inf`` when ``Q_mu = 0``).

    All multi-photon pulses are assumed detected and insecure; ``Delta >= 1`` means no key.
    """
    multi_photon = -math.expm1(-mu) - mu * math.exp(-mu)
    if q_mu <= 0.0:
        return math.inf
    return multi_photon / q_mu


def _check_intensities(mu: float, nu: float) -> None:
    _check_range("mu", mu, 0.0, math.inf, low_open=True, high_open=True)
    _check_range("nu", nu, 0.0, mu, low_open=True, high_open=True)


def vacuum_weak_decoy_bounds(
    mu: float, nu: float, q_mu: float, q_nu: float, e_nu: float, y0: float, e0: float = E0
) -> tuple[float, float]:
    """Vacuum + weak decoy bounds of Ma, Qi, Zhao, Lo (2005), section IV.

    ``Y1^L = mu / (mu nu - nu^2) (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y0)`` and
    ``e1^U = (E_nu Q_nu e^nu - e0 Y0) / (Y1^L nu)``.

    Returns:
        ``(Y1^L, e1^U)`` as computed, unclamped: ``Y1^L`` may be negative (no bound), ``e1^U`` is
        ``inf`` when ``Y1^L <= 0``. The caller decides what is usable.

    Raises:
        ValueError: unless ``0 < nu < mu``.
    """
    _check_intensities(mu, nu)
    y1_lower = (
        mu
        / (mu * nu - nu * nu)
        * (
            q_nu * math.exp(nu)
            - q_mu * math.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0
        )
    )
    if y1_lower <= 0.0:
        return y1_lower, math.inf
    e1_upper = (e_nu * q_nu * math.exp(nu) - e0 * y0) / (y1_lower * nu)
    return y1_lower, e1_upper


def weak_decoy_bounds(
    mu: float, nu: float, q_mu: float, e_mu: float, q_nu: float, e_nu: float, e0: float = E0
) -> tuple[float, float, float]:
    """One weak decoy without a vacuum class (Ma, Qi, Zhao, Lo (2005), section IV.B).

    ``Y0`` is unknown: the ``Y1^L`` formula (decreasing in ``Y0``) takes the upper bound
    ``Y0^U = min(E_nu Q_nu e^nu, E_mu Q_mu e^mu) / e0`` and the ``e1^U`` formula (decreasing in
    ``Y0``) the lower bound ``Y0^L = max(0, (nu Q_mu e^mu - mu Q_nu e^nu) / (nu - mu))``.

    Returns:
        ``(Y0^U, Y1^L, e1^U)``, unclamped as in :func:`vacuum_weak_decoy_bounds`.

    Raises:
        ValueError: unless ``0 < nu < mu``.
    """
    _check_intensities(mu, nu)
    y0_upper = min(e_nu * q_nu * math.exp(nu), e_mu * q_mu * math.exp(mu)) / e0
    y0_lower = max(0.0, (nu * q_mu * math.exp(mu) - mu * q_nu * math.exp(nu)) / (nu - mu))
    y1_lower, _ = vacuum_weak_decoy_bounds(mu, nu, q_mu, q_nu, e_nu, y0_upper, e0)
    if y1_lower <= 0.0:
        return y0_upper, y1_lower, math.inf
    e1_upper = (e_nu * q_nu * math.exp(nu) - e0 * y0_lower) / (y1_lower * nu)
    return y0_upper, y1_lower, e1_upper


# --------------------------------------------------------------------------------------------------
# Key rates


def _privacy_term(q1: float, e1: float) -> float:
    """``Q1 (1 - H2(e1))``, zero when the bound is unusable (``Q1 <= 0`` or ``e1 >= 1/2``)."""
    if not (q1 > 0.0) or not (e1 < 0.5):
        return 0.0
    return q1 * (1.0 - binary_entropy(max(e1, 0.0)))


def _correction_cost(q_mu: float, e_mu: float, f: float) -> float:
    return f * q_mu * binary_entropy(min(max(e_mu, 0.0), 1.0))


_Mode = Literal["infinite", "practical", "gllp"]


@dataclass(frozen=True)
class _Point:
    """Everything the rates need at one (length, mu)."""

    eta: float
    gains: tuple[float, float, float]
    qbers: tuple[float, float, float]
    qbers_no_eve: tuple[float, float, float]
    y1: float
    q1: float
    e1: float
    y0_used: float
    y1_lower: float
    e1_upper: float
    q1_lower: float
    gllp_delta: float


def _point(p: ChannelParameters, length_km: float, mu: float) -> _Point:
    eta = _transmittance_at(p, length_km)
    y0, e_det, eve = p.dark_count_yield, p.misalignment_error, p.eavesdrop_fraction
    intensities = (mu, p.nu, 0.0)
    gains = tuple(gain(m, eta, y0) for m in intensities)
    base = tuple(error_rate(m, eta, y0, e_det) for m in intensities)
    qbers = tuple(qber_with_eavesdropper(e, eve) for e in base)
    y1 = single_photon_yield(eta, y0)
    q1 = single_photon_gain(mu, eta, y0)
    e1 = qber_with_eavesdropper(single_photon_error(eta, y0, e_det), eve)
    if mu <= p.nu:  # happens only while optimising mu: the decoy bound needs nu < mu
        y0_used, y1_lower, e1_upper = y0, 0.0, math.inf
    elif p.p_vacuum > 0.0 or not p.decoy:
        y0_used = y0
        y1_lower, e1_upper = vacuum_weak_decoy_bounds(
            mu, p.nu, gains[SIGNAL], gains[DECOY], qbers[DECOY], y0
        )
    else:
        y0_used, y1_lower, e1_upper = weak_decoy_bounds(
            mu, p.nu, gains[SIGNAL], qbers[SIGNAL], gains[DECOY], qbers[DECOY]
        )
    q1_lower = y1_lower * mu * math.exp(-mu) if y1_lower > 0.0 else 0.0
    return _Point(
        eta=eta,
        gains=(gains[0], gains[1], gains[2]),
        qbers=(qbers[0], qbers[1], qbers[2]),
        qbers_no_eve=(base[0], base[1], base[2]),
        y1=y1,
        q1=q1,
        e1=e1,
        y0_used=y0_used,
        y1_lower=y1_lower,
        e1_upper=e1_upper,
        q1_lower=q1_lower,
        gllp_delta=gllp_tagged_fraction(mu, gains[SIGNAL]),
    )


def _bracket(pt: _Point, f: float, mode: _Mode) -> float:
    """``Q1 (1 - H2(e1)) - f Q_mu H2(E_mu)`` for one estimator (may be negative)."""
    q_mu, e_mu = pt.gains[SIGNAL], pt.qbers[SIGNAL]
    if mode == "infinite":
        q1, e1 = pt.q1, pt.e1
    elif mode == "practical":
        q1, e1 = pt.q1_lower, pt.e1_upper
    else:
        untagged = 1.0 - pt.gllp_delta
        q1 = q_mu * untagged
        e1 = e_mu / untagged if untagged > 0.0 else math.inf
    return _privacy_term(q1, e1) - _correction_cost(q_mu, e_mu, f)


def _check_efficiency(f: float) -> None:
    # f >= 1 in the asymptotic limit, but a measured per-frame efficiency may dip below 1.
    _check_range("f", f, 0.0, math.inf, low_open=True, high_open=True)


@dataclass(frozen=True)
class ModelFigures:
    """Expected figures of a link, per emitted pulse unless stated otherwise.

    Class tuples are indexed by :data:`SIGNAL`, :data:`DECOY`, :data:`VACUUM`; error rates include
    the eavesdropper. Rates named ``r_textbook_*`` are the literature's ``R`` (``q = 1/2``, no class
    or sampling factors), ``r_protocol_*`` the secret bits per pulse of the emulated protocol.
    All rates are clamped at 0.
    """

    length_km: float
    transmittance: float
    reconciliation_efficiency: float
    pe_sample_fraction: float
    pulse_rate_hz: float
    intensities: tuple[float, float, float]
    probabilities: tuple[float, float, float]
    gains: tuple[float, float, float]
    """Expected gain ``Q`` per class (vacuum: ``Y0``)."""
    qbers: tuple[float, float, float]
    """Expected QBER per class, with the eavesdropper."""
    qbers_without_eavesdropper: tuple[float, float, float]
    """Expected QBER per class from the channel alone (what the emulator flips with)."""
    y1: float
    q1: float
    e1: float
    """True single-photon error rate, with the eavesdropper."""
    y0_estimate: float
    """``Y0`` used by the practical bound (true ``Y0``; its upper bound without a vacuum class)."""
    y1_lower: float
    """Practical (vacuum + weak) lower bound on ``Y1`` from the expected counts, 0 if none."""
    e1_upper: float
    """Practical upper bound on ``e1``, clamped to [0, 1/2] (1/2: no usable bound)."""
    q1_lower: float
    gllp_delta: float
    detections_per_pulse: float
    """Expected raw detections per pulse, all classes: ``sum_c p_c Q_c``."""
    sifted_signal_per_pulse: float
    """Expected sifted signal-class bits per pulse: ``p_signal Q_mu / 2``."""
    key_candidate_per_pulse: float
    """Sifted signal bits that are not sampled for the QBER (the reconciled frame), per pulse."""
    r_textbook_decoy: float
    r_textbook_practical: float
    r_textbook_gllp: float
    r_protocol_infinite: float
    r_protocol_practical: float
    r_protocol_gllp: float
    """Protocol rate of the same link with decoys off (every pulse a signal pulse, GLLP)."""
    secret_per_pulse: float
    """The rate the link should reach: practical decoy bound, or GLLP when decoys are off."""

    @property
    def q_mu(self) -> float:
        """Signal gain."""
        return self.gains[SIGNAL]

    @property
    def e_mu(self) -> float:
        """Signal QBER (with the eavesdropper)."""
        return self.qbers[SIGNAL]

    @property
    def secret_bits_per_second(self) -> float:
        """:attr:`secret_per_pulse` times the pulse rate."""
        return self.secret_per_pulse * self.pulse_rate_hz


def model_figures(
    p: ChannelParameters, f: float, *, pe_sample_fraction: float = 0.05
) -> ModelFigures:
    """Expected figures of the link described by ``p``.

    Args:
        p: channel and protocol parameters.
        f: reconciliation efficiency (normally >= 1; any positive value is accepted, as a
            measured efficiency may fluctuate below 1), e.g. :data:`GYS_RECONCILIATION_EFFICIENCY`.
        pe_sample_fraction: fraction of the signal sifted bits disclosed to estimate the QBER.

    Raises:
        ValueError: if ``f <= 0`` or ``pe_sample_fraction`` is outside [0, 1).
    """
    _check_efficiency(f)
    _check_range("pe_sample_fraction", pe_sample_fraction, 0.0, 1.0, high_open=True)
    pt = _point(p, p.length_km, p.mu)
    probs = p.probabilities()
    p_signal = probs[SIGNAL]
    sifted = p_signal * SIFTING_FACTOR * pt.gains[SIGNAL]
    protocol_factor = SIFTING_FACTOR * (1.0 - pe_sample_fraction)
    b_inf = max(0.0, _bracket(pt, f, "infinite"))
    b_prac = max(0.0, _bracket(pt, f, "practical"))
    b_gllp = max(0.0, _bracket(pt, f, "gllp"))
    r_prac = p_signal * protocol_factor * b_prac
    r_gllp = protocol_factor * b_gllp
    return ModelFigures(
        length_km=p.length_km,
        transmittance=pt.eta,
        reconciliation_efficiency=f,
        pe_sample_fraction=pe_sample_fraction,
        pulse_rate_hz=p.pulse_rate_hz,
        intensities=p.intensities(),
        probabilities=probs,
        gains=pt.gains,
        qbers=pt.qbers,
        qbers_without_eavesdropper=pt.qbers_no_eve,
        y1=pt.y1,
        q1=pt.q1,
        e1=pt.e1,
        y0_estimate=pt.y0_used,
        y1_lower=max(pt.y1_lower, 0.0),
        e1_upper=min(max(pt.e1_upper, 0.0), 0.5),
        q1_lower=pt.q1_lower,
        gllp_delta=pt.gllp_delta,
        detections_per_pulse=sum(pc * qc for pc, qc in zip(probs, pt.gains, strict=True)),
        sifted_signal_per_pulse=sifted,
        key_candidate_per_pulse=sifted * (1.0 - pe_sample_fraction),
        r_textbook_decoy=SIFTING_FACTOR * b_inf,
        r_textbook_practical=SIFTING_FACTOR * b_prac,
        r_textbook_gllp=SIFTING_FACTOR * b_gllp,
        r_protocol_infinite=p_signal * protocol_factor * b_inf,
        r_protocol_practical=r_prac,
        r_protocol_gllp=r_gllp,
        secret_per_pulse=r_prac if p.decoy else r_gllp,
    )


# --------------------------------------------------------------------------------------------------
# Optimisation over mu and cutoff distances

_MU_GRID = np.geomspace(1e-4, 1.0, 81)


def _best_bracket(
    p: ChannelParameters, f: float, mode: _Mode, length_km: float
) -> tuple[float, float]:
    """``(mu*, bracket(mu*))`` maximising the key bracket over ``mu`` at ``length_km``."""
    from scipy.optimize import minimize_scalar

    low = p.nu * (1.0 + 1e-6) if mode == "practical" else 0.0
    grid = [float(m) for m in _MU_GRID if m > low]

    def value(mu: float) -> float:
        return _bracket(_point(p, length_km, mu), f, mode)

    values = [value(m) for m in grid]
    best = int(np.argmax(values))
    lo = grid[best - 1] if best > 0 else max(low, grid[0] / 2.0)
    hi = grid[best + 1] if best + 1 < len(grid) else grid[best]
    if hi <= lo:
        return grid[best], values[best]
    res = minimize_scalar(
        lambda x: -value(math.exp(x)),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    mu_opt, v_opt = math.exp(float(res.x)), -float(res.fun)
    if v_opt >= values[best]:
        return mu_opt, v_opt
    return grid[best], values[best]


def optimal_gllp_mu(p: ChannelParameters, f: float) -> float:
    """Mean photon number in [1e-4, 1] maximising the GLLP (no decoy) key rate at ``p.length_km``.

    With GYS parameters GLLP needs ``mu`` of the order of the transmittance: at ``mu = 0.48`` the
    multi-photon fraction alone exceeds the gain and no key is possible at any distance.

    Raises:
        ValueError: if ``f <= 0``.
    """
    _check_efficiency(f)
    return _best_bracket(p, f, "gllp", p.length_km)[0]


_MAX_SEARCH_KM = 1e5


def max_distance(
    p: ChannelParameters,
    f: float,
    *,
    decoy: bool,
    practical: bool,
    optimize_mu: bool = False,
) -> float:
    """Length (km) at which the key rate vanishes, by bisection (to 1e-6 km).

    The length of ``p`` is ignored; every other parameter is used, including the eavesdropper.

    Args:
        p: channel parameters.
        f: reconciliation efficiency.
        decoy: ``True`` for a decoy-state key rate, ``False`` for GLLP.
        practical: with ``decoy``, the vacuum + weak bound (``p.nu``) instead of the infinite-decoy
            (true ``Q1, e1``) rate; ignored for GLLP.
        optimize_mu: maximise the rate over ``mu`` at every length instead of using ``p.mu``
            (for the literature's "optimal mu" cutoff, mostly relevant for GLLP).

    Returns:
        The cutoff length; 0.0 if there is no key even at 0 km; ``inf`` if the key never vanishes
        (e.g. lossless fibre).

    Raises:
        ValueError: if ``f <= 0``.
    """
    _check_efficiency(f)
    mode: _Mode = ("practical" if practical else "infinite") if decoy else "gllp"
    if mode == "practical" and not optimize_mu and not p.nu < p.mu:
        raise ValueError(f"nu must be < mu for the practical decoy bound, got {p.nu!r} >= {p.mu!r}")

    def positive(length_km: float) -> bool:
        if optimize_mu:
            return _best_bracket(p, f, mode, length_km)[1] > 0.0
        return _bracket(_point(p, length_km, p.mu), f, mode) > 0.0

    if not positive(0.0):
        return 0.0
    lo, hi = 0.0, 50.0
    while positive(hi):
        lo, hi = hi, hi * 2.0
        if hi > _MAX_SEARCH_KM:
            return math.inf
    while hi - lo > 1e-6:
        mid = 0.5 * (lo + hi)
        if positive(mid):
            lo = mid
        else:
            hi = mid
    return lo
