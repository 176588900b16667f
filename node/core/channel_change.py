"""A live change of a link's quantum channel, and the range checks channel parameters share.

Kept apart from `channel_model` (which imports numpy) so that the orchestrator can describe,
record and send channel changes without loading the model.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel_model import ChannelParameters

__all__ = ["MAX_EXTRA_LOSS_DB", "ChannelChange", "check_range"]

MAX_EXTRA_LOSS_DB = 100.0
"""Largest extra loss a channel takes (dB): far past any key, still a finite transmittance."""


def _as_real(name: str, value: object) -> float:
    """``value`` as a finite float; ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    v = _as_real(name, value)
    too_low = v <= low if low_open else v < low
    too_high = v >= high if high_open else v > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


@dataclass(frozen=True)
class ChannelChange:
    """A live change of a link's quantum channel (a fault injected while the link runs).

    Attributes:
        eavesdrop_fraction: replaces the configured intercept-resend fraction (None: keep it).
        extra_loss_db: loss added to the configured channel's, in dB (0: none).
        misalignment_error: replaces the configured optical error probability ``e_det``, the
            chance that a photon hits the wrong detector (None: keep it).

    :meth:`apply` gives the parameters the link emulates and models with; the configured ones
    stay what both ends check against each other when a session starts.
    """

    eavesdrop_fraction: float | None = None
    extra_loss_db: float = 0.0
    misalignment_error: float | None = None

    def __post_init__(self) -> None:
        if self.eavesdrop_fraction is not None:
            check_range("eavesdrop_fraction", self.eavesdrop_fraction, 0.0, 1.0)
        check_range("extra_loss_db", self.extra_loss_db, 0.0, MAX_EXTRA_LOSS_DB)
        if self.misalignment_error is not None:
            check_range("misalignment_error", self.misalignment_error, 0.0, 0.5)

    @property
    def is_none(self) -> bool:
        """Whether this changes nothing."""
        return self == ChannelChange()

    def apply(self, configured: ChannelParameters) -> ChannelParameters:
        """The configured parameters with this change."""
        return replace(
            configured,
            eavesdrop_fraction=(
                configured.eavesdrop_fraction
                if self.eavesdrop_fraction is None
                else self.eavesdrop_fraction
            ),
            extra_loss_db=configured.extra_loss_db + self.extra_loss_db,
            misalignment_error=(
                configured.misalignment_error
                if self.misalignment_error is None
                else self.misalignment_error
            ),
        )
