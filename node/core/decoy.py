"""Decoy-state parameter estimation from observed counts, and the secret key length.

Each round the link counts, per intensity class (signal ``mu``, weak decoy ``nu``, vacuum), the
pulses Alice sent, the detections Bob announced, the sifted bits and the errors found among the
disclosed sifted bits. From these it bounds the single-photon contribution to the signal detections
and its error rate, and sizes privacy amplification.

* Vacuum + weak decoy bounds ``Y1^L``, ``e1^U``, ``Q1^L = Y1^L mu e^-mu``: X. Ma, B. Qi, Y. Zhao,
  H.-K. Lo, "Practical decoy state for quantum key distribution", PRA 72, 012326 (2005), section IV
  (formulas in :func:`qkdnet.node.core.channel_model.vacuum_weak_decoy_bounds`, shared with the
  analytic model); without a vacuum class, the one-decoy bound of the same section.
* Without decoys: GLLP tagging (D. Gottesman, H.-K. Lo, N. Lütkenhaus, J. Preskill, QIC 4, 325
  (2004)), ``Delta = (1 - (1 + mu) e^-mu) / Q_mu``, ``e1 = E_mu / (1 - Delta)``.
* Key length (asymptotic, with a privacy-amplification margin, cf. Tomamichel et al., Nat. Commun.
  3, 634 (2012)): ``m = n_key * Q1^L/Q_mu * (1 - H2(e1^U)) - leak - 2 log2(1/epsilon_pa)``.

The estimates are point estimates from the observed frequencies (no finite-size confidence
intervals), so over many rounds they average to the analytic practical bound of
:func:`qkdnet.node.core.channel_model.model_figures`. Statistics never raise: a bound that makes
no sense (``Y1^L <= 0``, ``e1^U >= 1/2``, no detections) gives ``valid=False`` and a zero key
length. Malformed arguments (negative counts, more detections than pulses, ...) raise
``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._arguments import as_count
from .channel_model import (
    DECOY,
    SIGNAL,
    VACUUM,
    binary_entropy,
    gllp_tagged_fraction,
    vacuum_weak_decoy_bounds,
    weak_decoy_bounds,
)

__all__ = [
    "ClassCounts",
    "DecoyEstimate",
    "EstimationMethod",
    "count_classes",
    "estimate",
    "gllp_estimate",
    "secret_key_length",
]

EstimationMethod = Literal["vacuum+weak", "weak", "gllp"]


def _as_fraction(name: str, value: object, *, upper_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not (0.0 <= result < 1.0 if upper_open else 0.0 <= result <= 1.0):
        bracket = ")" if upper_open else "]"
        raise ValueError(f"{name} must be in [0, 1{bracket}, got {value!r}")
    return result


def _as_open_interval(name: str, value: object, upper: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not (0.0 < result < upper):
        raise ValueError(f"{name} must be in (0, {upper}), got {value!r}")
    return result


@dataclass(frozen=True)
class ClassCounts:
    """Observed counts of one intensity class in one round.

    Attributes:
        pulses: pulses Alice sent in this class.
        detections: detections Bob announced in slots of this class.
        sifted: detections where Alice's and Bob's bases agree.
        sifted_errors: errors found among the *disclosed* sifted bits (all of them for decoy and
            vacuum classes; for the signal class only the sample, see ``signal_qber``).

    Raises:
        ValueError: negative or non-integer counts, or ``sifted_errors <= sifted <= detections <=
            pulses`` violated.
    """

    pulses: int
    detections: int
    sifted: int
    sifted_errors: int

    def __post_init__(self) -> None:
        for name in ("pulses", "detections", "sifted", "sifted_errors"):
            object.__setattr__(self, name, as_count(name, getattr(self, name)))
        if self.detections > self.pulses:
            raise ValueError(
                f"detections ({self.detections}) must not exceed pulses ({self.pulses})"
            )
        if self.sifted > self.detections:
            raise ValueError(
                f"sifted ({self.sifted}) must not exceed detections ({self.detections})"
            )
        if self.sifted_errors > self.sifted:
            raise ValueError(
                f"sifted_errors ({self.sifted_errors}) must not exceed sifted ({self.sifted})"
            )

    @property
    def gain(self) -> float:
        """Observed gain ``detections / pulses`` (0 without pulses)."""
        return self.detections / self.pulses if self.pulses else 0.0

    @property
    def error_rate(self) -> float:
        """Observed error rate among the counted sifted bits (0 without sifted bits)."""
        return self.sifted_errors / self.sifted if self.sifted else 0.0


@dataclass(frozen=True)
class DecoyEstimate:
    """Single-photon bounds of one round.

    Attributes:
        q_mu: observed signal gain.
        e_mu: signal QBER (the ``signal_qber`` given).
        y0: vacuum yield used (observed; the one-decoy upper bound without a vacuum class; 0 for
            GLLP, which does not estimate it).
        y1_lower: lower bound on the single-photon yield (GLLP: implied by the untagged gain).
        e1_upper: upper bound on the single-photon error rate, in [0, 1/2].
        q1_lower: lower bound on the single-photon gain of the signal class.
        single_photon_fraction: ``q1_lower / q_mu`` in [0, 1], lower bound on the fraction of
            signal detections due to single photons (GLLP: ``1 - Delta``).
        valid: ``False`` if the bounds are unusable (then no key is distilled); the bound fields are
            then clamped to finite values for reporting.
        method: which bound was used.
        reason: why the estimate is invalid ("" when valid).
    """

    q_mu: float
    e_mu: float
    y0: float
    y1_lower: float
    e1_upper: float
    q1_lower: float
    single_photon_fraction: float
    valid: bool
    method: EstimationMethod
    reason: str = ""

    @property
    def key_fraction(self) -> float:
        """Secret fraction of the key bits before error-correction leakage:
        ``single_photon_fraction * (1 - H2(e1_upper))`` (0 when invalid)."""
        if not self.valid:
            return 0.0
        return self.single_photon_fraction * (1.0 - binary_entropy(self.e1_upper))


def _finish(
    *,
    method: EstimationMethod,
    q_mu: float,
    e_mu: float,
    y0: float,
    y1_lower: float,
    e1_upper: float,
    mu: float,
    no_yield_reason: str = "single-photon yield bound Y1^L <= 0",
) -> DecoyEstimate:
    """Clamp the raw bounds and decide validity."""
    reason = ""
    if not (q_mu > 0.0):
        reason = "no signal detections"
    elif not (y1_lower > 0.0) or not math.isfinite(y1_lower):
        reason = no_yield_reason
    elif not (e1_upper < 0.5):
        reason = "single-photon error bound e1^U >= 1/2"
    elif not (e_mu < 0.5):
        reason = "signal QBER >= 1/2"
    if reason:
        y1_report = y1_lower if math.isfinite(y1_lower) and y1_lower > 0.0 else 0.0
        e1_report = min(max(e1_upper, 0.0), 0.5) if not math.isnan(e1_upper) else 0.5
        return DecoyEstimate(
            q_mu=q_mu,
            e_mu=e_mu,
            y0=y0,
            y1_lower=y1_report,
            e1_upper=e1_report,
            q1_lower=0.0,
            single_photon_fraction=0.0,
            valid=False,
            method=method,
            reason=reason,
        )
    q1_lower = y1_lower * mu * math.exp(-mu)
    return DecoyEstimate(
        q_mu=q_mu,
        e_mu=e_mu,
        y0=y0,
        y1_lower=y1_lower,
        e1_upper=max(e1_upper, 0.0),
        q1_lower=q1_lower,
        single_photon_fraction=min(1.0, q1_lower / q_mu),
        valid=True,
        method=method,
    )


def estimate(
    signal: ClassCounts,
    decoy: ClassCounts | None,
    vacuum: ClassCounts | None,
    mu: float,
    nu: float,
    *,
    signal_qber: float,
) -> DecoyEstimate:
    """Decoy-state bounds from the observed counts of one round (Ma et al. 2005, section IV).

    Args:
        signal: signal-class counts (its ``sifted_errors`` are not used: see ``signal_qber``).
        decoy: weak-decoy counts (all sifted decoy bits disclosed), or ``None`` without decoys:
            then GLLP is used (:func:`gllp_estimate`) and ``vacuum`` is ignored.
        vacuum: vacuum-class counts, or ``None`` (or zero pulses) for the one-decoy bound.
        mu: signal mean photon number.
        nu: decoy mean photon number, ``0 < nu < mu`` (ignored without a decoy class).
        signal_qber: the signal QBER ``E_mu`` (sampled, or measured after reconciliation).

    Returns:
        The estimate; ``valid=False`` when the statistics give no usable bound.

    Raises:
        ValueError: malformed arguments (not for statistics).
    """
    mu = _as_open_interval("mu", mu)
    e_mu = _as_fraction("signal_qber", signal_qber)
    if decoy is None:
        return gllp_estimate(signal, mu, signal_qber=e_mu)
    nu = _as_open_interval("nu", nu, mu)
    q_mu = signal.gain
    if decoy.pulses == 0 or decoy.sifted == 0:
        return _finish(
            method="vacuum+weak" if vacuum is not None and vacuum.pulses else "weak",
            q_mu=q_mu,
            e_mu=e_mu,
            y0=vacuum.gain if vacuum is not None else 0.0,
            y1_lower=0.0,
            e1_upper=0.5,
            mu=mu,
            no_yield_reason="no decoy pulses or no sifted decoy bits",
        )
    q_nu, e_nu = decoy.gain, decoy.error_rate
    method: EstimationMethod
    if vacuum is not None and vacuum.pulses > 0:
        method = "vacuum+weak"
        y0 = vacuum.gain
        y1_lower, e1_upper = vacuum_weak_decoy_bounds(mu, nu, q_mu, q_nu, e_nu, y0)
    else:
        method = "weak"
        y0, y1_lower, e1_upper = weak_decoy_bounds(mu, nu, q_mu, e_mu, q_nu, e_nu)
    return _finish(
        method=method, q_mu=q_mu, e_mu=e_mu, y0=y0, y1_lower=y1_lower, e1_upper=e1_upper, mu=mu
    )


def gllp_estimate(signal: ClassCounts, mu: float, *, signal_qber: float) -> DecoyEstimate:
    """Bounds without decoy states: every multi-photon pulse is tagged (GLLP).

    ``Delta = (1 - (1 + mu) e^-mu) / Q_mu``, ``e1 = E_mu / (1 - Delta)``,
    ``single_photon_fraction = 1 - Delta``.

    Raises:
        ValueError: malformed arguments.
    """
    mu = _as_open_interval("mu", mu)
    e_mu = _as_fraction("signal_qber", signal_qber)
    q_mu = signal.gain
    delta = gllp_tagged_fraction(mu, q_mu)
    untagged = 1.0 - delta
    if untagged > 0.0:
        q1_lower = q_mu * untagged
        y1_lower = q1_lower / (mu * math.exp(-mu))
        e1_upper = e_mu / untagged
    else:
        y1_lower, e1_upper = 0.0, math.inf
    return _finish(
        method="gllp",
        q_mu=q_mu,
        e_mu=e_mu,
        y0=0.0,
        y1_lower=y1_lower,
        e1_upper=e1_upper,
        mu=mu,
        no_yield_reason="multi-photon probability exceeds the signal gain (Delta >= 1)",
    )


def secret_key_length(
    n_key_bits: int, est: DecoyEstimate, leaked_bits: int, epsilon_pa: float = 1e-10
) -> int:
    """Length of the privacy-amplified key.

    ``m = floor(n_key_bits * single_photon_fraction * (1 - H2(e1_upper)) - leaked_bits
    - 2 log2(1/epsilon_pa))``, at least 0; 0 if ``est`` is not valid.

    Args:
        n_key_bits: reconciled signal-class bits entering privacy amplification.
        est: the round's estimate.
        leaked_bits: every bit disclosed about the key (reconciliation parities, verification tag).
        epsilon_pa: privacy-amplification failure probability, in (0, 1).

    Raises:
        ValueError: negative counts or ``epsilon_pa`` outside (0, 1).
    """
    n = as_count("n_key_bits", n_key_bits)
    leaked = as_count("leaked_bits", leaked_bits)
    epsilon = _as_open_interval("epsilon_pa", epsilon_pa, 1.0)
    if not est.valid or n == 0:
        return 0
    m = n * est.key_fraction - leaked - 2.0 * math.log2(1.0 / epsilon)
    return max(0, math.floor(m))


def count_classes(
    pulses_per_class: npt.ArrayLike,
    intensity_class: npt.NDArray[np.uint8],
    sifted: npt.NDArray[np.bool_],
    disclosed_errors: npt.NDArray[np.bool_],
) -> tuple[ClassCounts, ClassCounts, ClassCounts]:
    """Tally a round's :class:`ClassCounts` (signal, decoy, vacuum) from per-detection arrays.

    Args:
        pulses_per_class: pulses Alice sent per class (3 entries).
        intensity_class: class of every detected slot.
        sifted: per detected slot, whether the bases agreed.
        disclosed_errors: per detected slot, whether a disclosed sifted bit was found wrong.

    Raises:
        ValueError: shapes disagree, a class index is not 0, 1 or 2, or an error is not sifted.
    """
    pulses = np.asarray(pulses_per_class)
    if pulses.shape != (3,):
        raise ValueError(f"pulses_per_class must have 3 entries, got shape {pulses.shape}")
    cls = np.asarray(intensity_class)
    sift = np.asarray(sifted, dtype=bool)
    errs = np.asarray(disclosed_errors, dtype=bool)
    if sift.shape != cls.shape or errs.shape != cls.shape:
        raise ValueError(
            "intensity_class, sifted and disclosed_errors must have the same shape, got "
            f"{cls.shape}, {sift.shape}, {errs.shape}"
        )
    if cls.size and int(cls.max()) > VACUUM:
        raise ValueError(f"intensity_class must be 0, 1 or 2, found {int(cls.max())}")
    if np.any(errs & ~sift):
        raise ValueError("disclosed_errors must only mark sifted detections")
    detections = np.bincount(cls, minlength=3)
    sifted_counts = np.bincount(cls[sift], minlength=3)
    errors = np.bincount(cls[errs], minlength=3)
    counts = [
        ClassCounts(
            pulses=int(pulses[c]),
            detections=int(detections[c]),
            sifted=int(sifted_counts[c]),
            sifted_errors=int(errors[c]),
        )
        for c in (SIGNAL, DECOY, VACUUM)
    ]
    return counts[0], counts[1], counts[2]
