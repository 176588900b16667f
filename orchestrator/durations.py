"""Durations as people read them: how long ago something happened, how old a figure is."""

from __future__ import annotations

__all__ = ["format_age"]


def format_age(seconds: float) -> str:
    """'42 s', '5 min', '3 h 10 min', '2 d 4 h' (negative ages count as 0)."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours, whole_minutes = divmod(int(minutes), 60)
    if hours < 48:
        return f"{hours} h {whole_minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
