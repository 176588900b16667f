"""Key rate reserved on the links of the network by what this node set up: its ETSI 004
streams (as their origin) and the virtual links an SDN controller created here (ETSI 015).

A reservation holds a rate (bit/s) on every hop (a, b) of a route; what is left on a hop is
what the link advertises (`Router.rate_out`), plus the key it holds spread over the
reservation's lifetime, less what is reserved. Only this node's reservations are known here:
two nodes reserving over one link each see only their own (the 015 controller sees both).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .routing import Router

__all__ = ["Hop", "RateBook"]

Hop = tuple[str, str]


class RateBook:
    """Reservations per hop, and what a hop has left."""

    def __init__(self, router: Router) -> None:
        self._router = router
        self._reserved: Counter[Hop] = Counter()

    def reserve(self, hops: Iterable[Hop], rate_bps: int) -> None:
        """Add `rate_bps` on every hop (a negative rate releases)."""
        for hop in hops:
            self._reserved[hop] += rate_bps
            if self._reserved[hop] <= 0:
                del self._reserved[hop]

    def reserved(self, hop: Hop) -> int:
        return self._reserved[hop]

    def left(self, hops: Iterable[Hop], lifetime_s: float) -> int:
        """The rate a reservation living `lifetime_s` may still take on all of `hops`."""

        def hop_left(a: str, b: str) -> int:
            _, stored = self._router.link(a, b)
            added = self._router.rate_out(a, b) + int(stored // max(1.0, lifetime_s))
            return added - self._reserved[(a, b)]

        return max(0, min((hop_left(a, b) for a, b in hops), default=0))
