"""Link-state routing: which routes a node sees, now and at all."""

from __future__ import annotations

import pytest

from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import COMFORT_BITS, Router, kind_costs

# a - r1 - b and a - r2 - b: two node-disjoint routes between a and b; c hangs off b.
RING = {"a": ["r1", "r2"], "r1": ["a", "b"], "r2": ["a", "b"], "b": ["r1", "r2", "c"], "c": ["b"]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def advert(
    origin: str, peers: list[str], *, sequence: int = 1, down: tuple[str, ...] = (), bits: int = 0
) -> LinkStateAdvert:
    return LinkStateAdvert(
        origin=origin,
        sequence=sequence,
        links=tuple(
            LinkState(peer=p, up=p not in down, bits_out=bits, bits_in=bits) for p in peers
        ),
        saes=(),
    )


def ring_router(
    *, down: dict[str, tuple[str, ...]] | None = None, gone: tuple[str, ...] = ()
) -> tuple[Router, Clock]:
    clock = Clock()
    router = Router("a", max_age=15.0, clock=clock)
    for origin, peers in RING.items():
        if origin not in gone:
            router.accept(advert(origin, peers, down=(down or {}).get(origin, ()), bits=1 << 20))
    return router, clock


def test_least_cost_route_and_two_disjoint_ones() -> None:
    router, _ = ring_router()
    assert router.route("c") in (["a", "r1", "b", "c"], ["a", "r2", "b", "c"])
    routes = router.disjoint_routes("b", 2)
    assert sorted(route[1] for route in routes) == ["r1", "r2"]
    assert router.disjoint_routes("c", 2) == [router.route("c")]  # every route crosses b


def test_a_link_down_at_either_end_is_not_usable_but_still_known() -> None:
    router, _ = ring_router(down={"b": ("r1",)})
    assert router.link("r1", "b") == (False, 0)
    assert router.route("b") == ["a", "r2", "b"]
    assert len(router.disjoint_routes("b", 2)) == 1
    known = router.disjoint_routes("b", 2, usable_only=False)
    assert sorted(route[1] for route in known) == ["r1", "r2"]


def test_a_node_that_is_gone_keeps_the_links_its_neighbours_list() -> None:
    router, clock = ring_router()
    clock.now += 20  # nothing refreshed: every other advertisement is stale now
    for origin in ("a", "r2", "b", "c"):
        router.accept(advert(origin, RING[origin], sequence=2, bits=1 << 20))
    assert "r1" not in router.nodes()
    assert len(router.disjoint_routes("b", 2)) == 1
    assert len(router.disjoint_routes("b", 2, usable_only=False)) == 2
    # Both relays gone: a and b still list their links to them, so the routes are known (a
    # relay has to wait for them), but none can be used.
    router, _ = ring_router(gone=("r1", "r2"))
    assert router.disjoint_routes("b", 2) == []
    assert len(router.disjoint_routes("b", 2, usable_only=False)) == 2
    # A node nobody lists is not on any route.
    assert router.route("z", usable_only=False) is None


def test_short_key_is_skipped_when_routing_and_raises_the_cost() -> None:
    clock = Clock()
    router = Router("a", clock=clock)
    for origin, peers in RING.items():
        bits = COMFORT_BITS // 8 if origin in ("r1",) else COMFORT_BITS
        router.accept(advert(origin, peers, bits=bits))
    assert router.route("b") == ["a", "r2", "b"]  # a-r1 costs more: r1 runs low toward b
    assert router.route("b", need_bits=COMFORT_BITS // 4, avoid_nodes=["r2"]) is None
    assert router.route("b", avoid_nodes=["r2"]) == ["a", "r1", "b"]


@pytest.mark.parametrize("sequence", [1, 0])
def test_an_older_or_equal_advertisement_is_ignored(sequence: int) -> None:
    router, _ = ring_router()
    assert not router.accept(advert("r1", ["a", "b"], sequence=sequence, down=("b",)))
    assert router.link("r1", "b")[0]


async def test_an_advert_from_the_future_is_dropped_by_the_flooder() -> None:
    """A sequence far ahead of the clock (2^64 - 1, say) would shadow every later advert of its
    origin for good: the flooder drops it before the router sees it."""
    import time

    from qkdnet.node.protocol.link_state import MAX_CLOCK_AHEAD_NS, LinkStateFlooder

    router = Router("b")
    flooder = LinkStateFlooder("b", [], {"r": object()}, router, peers=None)  # type: ignore[dict-item,arg-type]
    flooder._flood = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no peers here
    router.accept(advert("r", ["a", "b"], sequence=time.time_ns()))
    await flooder.received(advert("a", ["r"], sequence=time.time_ns()), "r")
    assert router.link("a", "r")[0]
    await flooder.received(advert("a", [], sequence=2**64 - 1), "r")  # "a has no links"
    assert flooder.refused_from_future == 1
    assert router.link("a", "r")[0]  # still believed: the forgery never reached the router
    # Within the clock skew allowed an advert is taken as usual.
    soon = time.time_ns() + MAX_CLOCK_AHEAD_NS // 2
    await flooder.received(advert("a", [], sequence=soon), "r")
    assert flooder.refused_from_future == 1
    assert not router.link("a", "r")[0]


@pytest.mark.parametrize(
    ("policy", "route"),
    [
        ("avoid", ["a", "b", "c"]),  # two QKD hops rather than the bridge
        ("allow", ["a", "c"]),
        ("prefer", ["a", "c"]),
        ("exclude", ["a", "b", "c"]),
    ],
)
def test_routes_treat_pqc_bridges_as_the_policy_says(policy: str, route: list[str]) -> None:
    """a - c is a pqc-bridge link; a - b - c are QKD links."""
    router = Router("a", kind_costs=kind_costs({"pqc-bridge": policy}))

    def state(peer: str, kind: str) -> LinkState:
        return LinkState(peer=peer, up=True, bits_out=1 << 20, bits_in=1 << 20, kind=kind)

    kinds = {("a", "b"): "bb84", ("b", "c"): "bb84", ("a", "c"): "pqc-bridge"}
    for node in "abc":
        links = tuple(
            state(other, kind)
            for (x, y), kind in kinds.items()
            for end, other in ((x, y), (y, x))
            if end == node
        )
        router.accept(LinkStateAdvert(origin=node, sequence=1, links=links, saes=()))
    assert router.route("c") == route
    # Without the QKD path, an avoided bridge still carries relays; an excluded one never.
    assert router.route("c", avoid_nodes=["b"]) == (None if policy == "exclude" else ["a", "c"])
    with pytest.raises(ValueError, match="routing policy 'sometimes'"):
        kind_costs({"pqc-bridge": "sometimes"})
