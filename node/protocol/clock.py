"""The clock port: what the protocols read the time from and wait on.

A link paces its photons, backs off between sessions and pauses after aborted rounds through
a `Clock`; the node's is `SYSTEM_CLOCK` (the monotonic clock and `asyncio.sleep`), tests give
`qkdnet.node.testing.FakeClock`, on which a pause of minutes passes at once and is recorded.
(Timeouts on a peer's answer stay on the event loop's own clock: they guard against a peer
that went silent, which no test wants to wait for in virtual time.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds since an arbitrary start, never going back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` have passed on this clock."""
        ...


class SystemClock:
    """Wall time: `time.monotonic` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
