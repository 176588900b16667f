"""Argument checks shared by the physics modules (private)."""

from __future__ import annotations

import numbers

__all__ = ["as_count"]


def as_count(name: str, value: object) -> int:
    """`value` as a non-negative int (numpy integers accepted); ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    result = int(value)
    if result < 0:
        raise ValueError(f"{name} must be >= 0, got {result}")
    return result
