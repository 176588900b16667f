"""Flooding of link-state advertisements between neighbouring nodes.

Every `interval` seconds, and at once when one of its links goes up or down or stores its first
key in either direction, a node advertises its links (up, key left in each direction) and its
SAEs to its neighbours, with a sequence number taken from the wall clock. A node that receives
an advertisement newer than the one it holds stores it in its `Router` and passes it on to its
other neighbours; an older or repeated one stops there, so each advertisement crosses every
link at most twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from functools import partial

from ..errors import RelayError
from ..store.key_store import KeyStoreDb
from ..structured_log import log_event
from .link import LinkEnd
from .link_stats import UP_STATES
from .relay_messages import LinkState, LinkStateAdvert
from .relay_peers import RelayPeers
from .routing import Router

__all__ = ["MAX_CLOCK_AHEAD_NS", "LinkStateFlooder"]

logger = logging.getLogger("qkdnet.node.protocol.link_state")

# Clocks of the nodes may disagree by this much (sequences are wall-clock nanoseconds).
MAX_CLOCK_AHEAD_NS = 60 * 10**9


def _levels(db: KeyStoreDb, out_dir: int) -> tuple[int, int]:
    return db.available(out_dir), db.available(1 - out_dir)


class LinkStateFlooder:
    """Advertises this node's links and floods what neighbours advertise."""

    def __init__(
        self,
        node_id: str,
        saes: list[str],
        links: Mapping[str, LinkEnd],
        router: Router,
        peers: RelayPeers,
        interval: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self._saes = saes
        self._links = links
        self._router = router
        self._peers = peers
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._last_seen: dict[str, tuple[bool, int]] = {}
        self.refused_from_future = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="link-state")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _own_advert(self) -> LinkStateAdvert:
        states = []
        for peer, link in self._links.items():
            out_dir = 0 if self.node_id < peer else 1
            bits_out, bits_in = await link.store.run(partial(_levels, out_dir=out_dir))
            states.append(
                LinkState(
                    peer=peer,
                    up=link.stats.state in UP_STATES,
                    bits_out=bits_out,
                    bits_in=bits_in,
                    kind=link.config.kind,
                    # Blocks alternate between the two directions (key_store: frame parity).
                    rate_out_bps=int(link.stats.rates()[1] / 2),
                )
            )
        return LinkStateAdvert(
            origin=self.node_id,
            sequence=time.time_ns(),
            links=tuple(states),
            saes=tuple(self._saes),
        )

    async def _run(self) -> None:
        next_full = 0.0
        while True:
            # (up, frames stored up to 2): a link's first key in each direction is news as
            # much as its coming up, or a key request right after it would find no route until
            # the next full advert. Frames alternate between the directions (key_store: frame
            # parity), so the first two frames give each direction its first key.
            seen = {
                peer: (link.stats.state in UP_STATES, min(link.stats.frames_ok, 2))
                for peer, link in self._links.items()
            }
            now = time.monotonic()
            if now >= next_full or seen != self._last_seen:
                self._last_seen = seen
                next_full = now + self.interval
                try:
                    advert = await self._own_advert()
                except Exception:  # a store being closed at shutdown, say: try next time
                    logger.debug("could not build the link-state advertisement", exc_info=True)
                else:
                    self._router.accept(advert)
                    self._flood(advert, exclude=None)
            await asyncio.sleep(0.2)

    async def received(self, advert: LinkStateAdvert, sender: str) -> None:
        """An advertisement from neighbour `sender`: keep and pass on what is new.

        One whose sequence lies more than `MAX_CLOCK_AHEAD_NS` ahead of this node's clock is
        dropped: accepted, it would shadow every later advertisement of its origin (a sequence of
        2^64 - 1 would freeze that node's links in every router for good)."""
        if advert.origin == self.node_id or sender not in self._links:
            return
        if advert.sequence > time.time_ns() + MAX_CLOCK_AHEAD_NS:
            self.refused_from_future += 1
            if self.refused_from_future in (1, 10, 100) or self.refused_from_future % 1000 == 0:
                log_event(
                    logger,
                    logging.WARNING,
                    "advert_from_future_refused",
                    origin=advert.origin[:64],
                    sender=sender,
                    refused=self.refused_from_future,
                )
            return
        if self._router.accept(advert):
            self._flood(advert, exclude=sender)

    def _flood(self, advert: LinkStateAdvert, exclude: str | None) -> None:
        for peer in self._links:
            if peer != exclude and peer != advert.origin:
                task = asyncio.create_task(self._send(peer, advert))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _send(self, peer: str, advert: LinkStateAdvert) -> None:
        with contextlib.suppress(RelayError):  # the next advert goes the same way soon
            await self._peers.advertise(peer, advert)
