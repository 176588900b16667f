"""Key pools relayed ahead of demand and multi-path relay, on a ring of four nodes and a spur.

    r1
  /    \\
a        b -- c
  \\    /
    r2

sae-a (node a) and sae-b (node b) are not neighbours: their keys cross r1 or r2, and a multi-path
relay sends one XOR share each way. sae-c (node c) is reached only through b, so a and c have no
two node-disjoint routes. The last test kills the trusted node a's keys go through.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.runtime import runtime_for

from .sae import Sae, deployed, sae_clients

pytestmark = pytest.mark.integration

POOL = 200
TOPOLOGY = {
    "name": "kme-ring",
    "defaults": {"speedup": 20, "frame_bits": 100_000},
    "nodes": {
        "a": {"saes": ["sae-a"]},
        "r1": {},
        "r2": {},
        "b": {"saes": ["sae-b"]},
        "c": {"saes": ["sae-c"]},
    },
    "links": [
        {"endpoints": ["a", "r1"], "length_km": 5},
        {"endpoints": ["r1", "b"], "length_km": 6},
        {"endpoints": ["a", "r2"], "length_km": 4},
        {"endpoints": ["r2", "b"], "length_km": 7},
        {"endpoints": ["b", "c"], "length_km": 3},
    ],
    "key_delivery": {"pool_keys": POOL},
}
NO_POOL = {"qkdnet_pool": False}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("ring")) as plan:
        yield plan


@pytest.fixture
async def saes(plan: NetworkPlan) -> AsyncIterator[dict[str, Sae]]:
    async with sae_clients(plan) as clients:
        yield clients


async def _stored(sae: Sae, slave: str) -> int:
    status, body = await sae.call("GET", f"{slave}/status")
    assert status == 200, body
    count: int = body["stored_key_count"]
    return count


async def _full_pool(sae: Sae, slave: str) -> None:
    for _ in range(120):
        count = await _stored(sae, slave)
        assert count <= POOL, "a pool never exceeds its bound"
        if count == POOL:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the pool for {slave} holds {count} keys after 60 s")


async def _check_at_slave(slave: Sae, master: str, container: dict[str, Any]) -> None:
    issued = {k["key_ID"]: k["key"] for k in container["keys"]}
    assert await slave.dec(master, list(issued)) == issued


async def test_status_counts_the_pool_and_enc_keys_draws_on_it(saes: dict[str, Sae]) -> None:
    a, b = saes["sae-a"], saes["sae-b"]
    await _full_pool(a, "sae-b")
    container = await a.enc_container("sae-b", number=150)
    relay = container["key_container_extension"]["qkdnet_relay"]
    assert relay["source"] == "pool"
    assert (relay["pooled"], relay["relayed"], relay["routes"]) == (150, 0, [])
    assert await _stored(a, "sae-b") <= POOL
    await _check_at_slave(b, "sae-a", container)


async def test_more_than_the_pool_holds_is_topped_up_by_an_on_demand_relay(
    saes: dict[str, Sae],
) -> None:
    b, a = saes["sae-b"], saes["sae-a"]
    await _full_pool(b, "sae-a")
    container = await b.enc_container("sae-a", number=POOL + 50)
    relay = container["key_container_extension"]["qkdnet_relay"]
    assert relay["source"] == "pool+relay"
    assert relay["pooled"] + relay["relayed"] == POOL + 50
    assert relay["relayed"] >= 50
    await _check_at_slave(a, "sae-b", container)


async def test_on_demand_relay_reports_its_route_and_hop_times(saes: dict[str, Sae]) -> None:
    container = await saes["sae-a"].enc_container("sae-c", number=4, extension_optional=[NO_POOL])
    relay = container["key_container_extension"]["qkdnet_relay"]
    assert (relay["source"], relay["pooled"], relay["relayed"]) == ("relay", 0, 4)
    (route,) = relay["routes"]
    assert route["route"][0] == "a"
    assert route["route"][-2:] == ["b", "c"]
    assert route["route"][1] in ("r1", "r2")
    assert len(route["route"]) == 4
    hops = route["hop_ms"]
    assert len(hops) == 4
    assert all(x > y > 0 for x, y in itertools.pairwise(hops)), hops
    assert relay["ms"] >= hops[0]
    await _check_at_slave(saes["sae-c"], "sae-a", container)


async def test_multipath_sends_one_share_round_each_side_of_the_ring(
    saes: dict[str, Sae],
) -> None:
    container = await saes["sae-a"].enc_container(
        "sae-b",
        number=20,
        size=512,
        extension_mandatory=[{"qkdnet_multipath": True}, NO_POOL],
    )
    relay = container["key_container_extension"]["qkdnet_relay"]
    routes = relay["routes"]
    assert sorted(r["share"] for r in routes) == [0, 1]
    assert all(r["shares"] == 2 and r["target"] == "b" for r in routes)
    middles = [set(r["route"][1:-1]) for r in routes]
    assert not middles[0] & middles[1], routes
    assert {frozenset(m) for m in middles} == {frozenset({"r1"}), frozenset({"r2"})}
    keys = [base64.b64decode(k["key"]) for k in container["keys"]]
    assert all(len(k) == 64 for k in keys)
    assert len(set(keys)) == 20
    await _check_at_slave(saes["sae-b"], "sae-a", container)


async def test_multipath_that_cannot_be_met(saes: dict[str, Sae]) -> None:
    a = saes["sae-a"]
    # Every route from a to c crosses b: mandatory multipath is refused as the standard says...
    status, body = await a.call(
        "POST", "sae-c/enc_keys", json={"extension_mandatory": [{"qkdnet_multipath": True}]}
    )
    assert status == 400, body
    assert body["message"].startswith("not all extension_mandatory request options could be met")
    assert "node-disjoint" in body["message"]
    # ...and optional multipath falls back to a single route.
    container = await a.enc_container(
        "sae-c", number=2, extension_optional=[{"qkdnet_multipath": True}, NO_POOL]
    )
    (route,) = container["key_container_extension"]["qkdnet_relay"]["routes"]
    assert route["shares"] == 1
    await _check_at_slave(saes["sae-c"], "sae-a", container)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"extension_mandatory": [{"vendor_route": "direct"}]}, "parameters are supported"),
        ({"extension_mandatory": {"qkdnet_multipath": True}}, "shall be an array of objects"),
        ({"extension_optional": [{"qkdnet_pool": "no"}]}, "qkdnet_pool shall be a bool"),
        ({"extension_mandatory": [{"qkdnet_multipath": 1}]}, "qkdnet_multipath shall be a bool"),
    ],
)
async def test_bad_extensions(saes: dict[str, Sae], body: dict[str, Any], message: str) -> None:
    status, answer = await saes["sae-a"].call("POST", "sae-b/enc_keys", json=body)
    assert status == 400
    assert message in answer["message"]


def _delivered_rows(plan: NetworkPlan, node: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    path = plan.nodes[node].state_dir / "delivered_keys.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(sql, args).fetchall()


async def _stored_totals(plan: NetworkPlan, node: str) -> dict[str, int]:
    client = NodeClient(node, plan.nodes[node].address, plan.controller_credentials)
    try:
        status = await client.status()
    finally:
        await client.close()
    return {link.link_id: link.stored_bits_total for link in status.links}


async def test_a_killed_trusted_node_is_routed_around_and_restarts_with_its_stores(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    runtime = runtime_for(plan)
    a, b = saes["sae-a"], saes["sae-b"]
    probe = await a.enc_container("sae-b", number=1, extension_optional=[NO_POOL])
    await _check_at_slave(b, "sae-a", probe)
    victim = probe["key_container_extension"]["qkdnet_relay"]["routes"][0]["route"][1]
    totals = await _stored_totals(plan, victim)

    issued: dict[str, str] = {}
    refusals: list[str] = []

    async def keep_asking() -> None:
        for _ in range(40):
            status, body = await a.call(
                "POST", "sae-b/enc_keys", json={"number": 10, "extension_optional": [NO_POOL]}
            )
            if status == 200:
                issued.update({k["key_ID"]: k["key"] for k in body["keys"]})
            else:
                assert status == 503, body
                refusals.append(body["message"])
            await asyncio.sleep(0.05)

    asking = asyncio.create_task(keep_asking())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(runtime.kill, victim)
    killed = time.monotonic()
    # New requests go round the other side of the ring.
    rerouted: float | None = None
    for _ in range(100):
        status, body = await a.call(
            "POST", "sae-b/enc_keys", json={"number": 1, "extension_optional": [NO_POOL]}
        )
        if status == 200:
            issued.update({k["key_ID"]: k["key"] for k in body["keys"]})
            route = body["key_container_extension"]["qkdnet_relay"]["routes"][0]["route"]
            assert victim not in route
            rerouted = time.monotonic() - killed
            break
        await asyncio.sleep(0.1)
    assert rerouted is not None, "no request got through after the kill"
    print(f"first key over the other route {rerouted:.2f} s after killing {victim}")
    # Mandatory multi-path while one side of the ring is down: the network has two node-disjoint
    # routes, one is unusable for now, so the answer is "try later" (503), not "cannot be met".
    status, body = await a.call(
        "POST",
        "sae-b/enc_keys",
        json={"number": 1, "extension_mandatory": [{"qkdnet_multipath": True}, NO_POOL]},
    )
    assert status == 503, body
    await asyncio.wait_for(asking, 120)
    assert len(issued) >= 100, f"{len(issued)} keys, refusals: {refusals}"

    # No key at one end only: every key the master got is at the slave, once; once every pool
    # is settled, what is left at b for sae-a is exactly a's pool for sae-b, and nothing pends.
    assert await b.dec("sae-a", list(issued)) == issued
    await _full_pool(a, "sae-b")
    await _full_pool(a, "sae-c")
    at_b = _delivered_rows(plan, "b", "SELECT key_id, state FROM keys WHERE master='sae-a'")
    assert {state for _, state in at_b} <= {"ready"}, "a failed relay left keys pending"
    pool_at_a = _delivered_rows(plan, "a", "SELECT key_id FROM pool WHERE slave='sae-b'")
    assert {k for k, _ in at_b} == {k for (k,) in pool_at_a}

    # The trusted node comes back with every key it had stored.
    await asyncio.to_thread(runtime.start, victim)
    await asyncio.wait_for(wait_for_key(plan, timeout=60), 90)
    after = await _stored_totals(plan, victim)
    assert all(after[link] >= bits for link, bits in totals.items()), (totals, after)
    async with NetworkStatus(plan) as network:
        snapshot = await network.snapshot()
        for view in snapshot.links:
            result = await network.compare_stores(view)
            assert result.match, f"{view.link_id}: {result.detail}"
