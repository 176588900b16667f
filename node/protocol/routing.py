"""Link-state routing among trusted nodes.

Every node advertises its own links (session up or not, and how much key each direction of the
link has left) with an increasing sequence number; neighbours flood what is new to their other
neighbours, so every node holds the whole network's link states (the link-state database). An
advertisement not refreshed within `max_age` seconds is dropped: a dead node disappears from
the graph even when no neighbour could report it.

A route is a least-cost path (Dijkstra) over links that both ends report up and whose sending
side has enough key for the relay: each hop costs 1 plus a penalty that grows as the link's key
runs low, so relays drift away from links that are being exhausted before they fail on them.
An operator's policy may add a cost to links of a kind, or exclude them (`kind_costs`: the
pqc-bridge links, whose key is not information-theoretically secure, are avoided, preferred or
left out that way).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .relay_messages import LinkStateAdvert

__all__ = ["KIND_POLICIES", "LinkView", "Router", "hop_cost", "kind_costs"]

# Key below this many bits on a hop adds up to LOW_KEY_PENALTY to its cost.
COMFORT_BITS = 1 << 20
LOW_KEY_PENALTY = 4.0


@dataclass(frozen=True)
class LinkView:
    """One link as its origin sees it."""

    up: bool
    bits_out: int
    bits_in: int
    kind: str = ""
    rate_out_bps: int = 0


# What a policy for a link kind adds to each hop of that kind (None: never used).
KIND_POLICIES: dict[str, float | None] = {
    "allow": 0.0,
    "prefer": -0.5,  # a hop still costs at least 0.5: Dijkstra needs positive costs
    "avoid": 100.0,  # used only where no route without it exists
    "exclude": None,
}


def kind_costs(policies: Mapping[str, str]) -> dict[str, float | None]:
    """Link kind -> extra cost per hop, from kind -> policy name (ValueError when unknown)."""
    out: dict[str, float | None] = {}
    for kind, policy in policies.items():
        if policy not in KIND_POLICIES:
            raise ValueError(f"routing policy {policy!r} (known: {', '.join(KIND_POLICIES)})")
        out[kind] = KIND_POLICIES[policy]
    return out


@dataclass
class _Entry:
    sequence: int
    links: dict[str, LinkView]
    saes: tuple[str, ...]
    received: float = field(default_factory=time.monotonic)


def hop_cost(bits: int) -> float:
    """Cost of one hop with `bits` of key available to send on it."""
    return 1.0 + LOW_KEY_PENALTY * max(0.0, 1.0 - bits / COMFORT_BITS)


class Router:
    """The link-state database of one node and the routes it implies."""

    def __init__(
        self,
        node_id: str,
        *,
        max_age: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        kind_costs: dict[str, float | None] | None = None,
    ) -> None:
        """`kind_costs`: extra cost per hop of links of a kind (None: never used)."""
        self.node_id = node_id
        self.kind_costs = dict(kind_costs or {})
        self.max_age = max_age
        self._clock = clock
        self._db: dict[str, _Entry] = {}
        self._pins: dict[str, list[str]] = {}

    # -- the database ------------------------------------------------------------------------
    def accept(self, advert: LinkStateAdvert) -> bool:
        """Store an advertisement if it is newer than what is known; True when it was."""
        known = self._db.get(advert.origin)
        if known is not None and advert.sequence <= known.sequence and not self._stale(known):
            return False
        self._db[advert.origin] = _Entry(
            sequence=advert.sequence,
            links={
                s.peer: LinkView(s.up, int(s.bits_out), int(s.bits_in), s.kind, int(s.rate_out_bps))
                for s in advert.links
            },
            saes=tuple(advert.saes),
            received=self._clock(),
        )
        return True

    def _stale(self, entry: _Entry) -> bool:
        return self._clock() - entry.received > self.max_age

    def _fresh(self) -> dict[str, _Entry]:
        for origin in [o for o, e in self._db.items() if self._stale(e) and o != self.node_id]:
            del self._db[origin]
        return self._db

    def nodes(self) -> list[str]:
        """Nodes with a live advertisement (this node included once it advertised)."""
        return sorted(self._fresh())

    def node_of_sae(self, sae: str) -> str | None:
        """The node that advertises `sae`, if any live one does."""
        for origin, entry in self._fresh().items():
            if sae in entry.saes:
                return origin
        return None

    def kind_cost(self, a: str, b: str) -> float | None:
        """What the policy adds to the hop a -> b for its link kind (None: excluded)."""
        entry = self._db.get(a)
        view = entry.links.get(b) if entry is not None else None
        return self.kind_costs.get(view.kind, 0.0) if view is not None else 0.0

    def link(self, a: str, b: str) -> tuple[bool, int]:
        """(usable, bits a can send to b): both ends live and reporting the link up."""
        db = self._fresh()
        ea, eb = db.get(a), db.get(b)
        if ea is None or eb is None:
            return False, 0
        va, vb = ea.links.get(b), eb.links.get(a)
        if va is None or vb is None or not (va.up and vb.up):
            return False, 0
        return True, va.bits_out

    def rate_out(self, a: str, b: str) -> int:
        """Secret key per second the link a -> b adds for a to send to b, as a advertises it
        (0 when the link is not usable)."""
        usable, _ = self.link(a, b)
        if not usable:
            return 0
        return self._db[a].links[b].rate_out_bps

    # -- routes ------------------------------------------------------------------------------
    def route(
        self,
        target: str,
        need_bits: int = 0,
        *,
        avoid_nodes: Iterable[str] = (),
        avoid_links: Iterable[tuple[str, str]] = (),
        usable_only: bool = True,
        start: str | None = None,
    ) -> list[str] | None:
        """Least-cost route from this node (or `start`) to `target` (both included), or None.

        With `usable_only` False the route may cross links that are down or short of key and
        nodes that are gone, as long as a live neighbour still advertises the link: whether
        the network has such a route at all, not whether a relay could take it now. A route
        pinned to `target` (`pin`: an SDN controller's virtual link) is taken while every hop
        of it is usable and not avoided.
        """
        source = start or self.node_id
        if target == source:
            return [target]
        pinned = self._pins.get(target) if source == self.node_id else None
        if (
            pinned is not None
            and usable_only
            and self._usable_path(
                pinned, need_bits, set(avoid_nodes), {frozenset(p) for p in avoid_links}
            )
        ):
            return list(pinned)
        db = self._fresh()
        neighbours = self._neighbours(db, usable_only)
        banned = set(avoid_nodes) - {source, target}
        banned_links = {frozenset(pair) for pair in avoid_links}
        dist: dict[str, float] = {source: 0.0}
        prev: dict[str, str] = {}
        queue = [(0.0, source)]
        while queue:
            cost, node = heapq.heappop(queue)
            if node == target:
                break
            if cost > dist.get(node, float("inf")):
                continue
            for peer in neighbours.get(node, ()):
                if peer in banned or frozenset((node, peer)) in banned_links:
                    continue
                extra = self.kind_cost(node, peer)
                if extra is None:
                    continue
                if usable_only:
                    usable, bits = self.link(node, peer)
                    if not usable or bits < need_bits:
                        continue
                    step = hop_cost(bits) + extra
                else:
                    step = 1.0 + extra
                candidate = cost + step
                if candidate < dist.get(peer, float("inf")):
                    dist[peer] = candidate
                    prev[peer] = node
                    heapq.heappush(queue, (candidate, peer))
        if target not in prev:
            return None
        path = [target]
        while path[-1] != source:
            path.append(prev[path[-1]])
        return path[::-1]

    # -- pinned routes (virtual links) -------------------------------------------------------
    def pin(self, target: str, path: list[str]) -> None:
        """Relays to `target` follow `path` (from this node) while it is usable."""
        self._pins[target] = list(path)

    def unpin(self, target: str) -> None:
        self._pins.pop(target, None)

    def pinned(self) -> dict[str, list[str]]:
        return {target: list(path) for target, path in self._pins.items()}

    def _usable_path(
        self, path: list[str], need_bits: int, avoid: set[str], avoid_links: set[frozenset[str]]
    ) -> bool:
        if set(path[1:-1]) & avoid:
            return False
        for a, b in itertools.pairwise(path):
            usable, bits = self.link(a, b)
            if not usable or bits < need_bits or frozenset((a, b)) in avoid_links:
                return False
            if self.kind_cost(a, b) is None:
                return False
        return True

    @staticmethod
    def _neighbours(db: dict[str, _Entry], usable_only: bool) -> dict[str, set[str]]:
        """Node -> the peers it may have a hop to: as it advertises them or, with
        `usable_only` False, as either end does (a node that is gone still has the links its
        neighbours list)."""
        neighbours: dict[str, set[str]] = {}
        for origin, entry in db.items():
            neighbours.setdefault(origin, set()).update(entry.links)
            if not usable_only:
                for peer in entry.links:
                    neighbours.setdefault(peer, set()).add(origin)
        return neighbours

    def disjoint_routes(
        self,
        target: str,
        count: int,
        need_bits: int = 0,
        *,
        avoid_nodes: Iterable[str] = (),
        usable_only: bool = True,
    ) -> list[list[str]]:
        """Up to `count` routes to `target` that share no intermediate node (greedy: each the
        least-cost route around the nodes of those before it); `usable_only` as for `route`."""
        routes: list[list[str]] = []
        used: set[str] = set(avoid_nodes)
        direct_used = False
        while len(routes) < count:
            avoid_links = [(self.node_id, target)] if direct_used else []
            route = self.route(
                target,
                need_bits,
                avoid_nodes=used,
                avoid_links=avoid_links,
                usable_only=usable_only,
            )
            if route is None:
                break
            if len(route) == 2:
                direct_used = True
            routes.append(route)
            used.update(route[1:-1])
        return routes
