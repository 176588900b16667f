"""Faults in a container deployment: pause, cut and restore a link (relay goes round the ring),
a cut that outlives a restart of one end, shaping (kernel netem where the host has it, the
nodes' own where not) and a live change of a link's quantum channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest

from qkdnet.node.core.channel_model import ChannelChange
from qkdnet.orchestrator.cli.main import main
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.faults import FaultRecord, Impairment
from qkdnet.orchestrator.runtime.images import ImageResult
from qkdnet.orchestrator.runtime.seam import Runtime
from tests.integration.sae import Sae, deployed, ring_topology

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

TOPOLOGY = ring_topology("fault-ring", 100_000)
NO_POOL = {"qkdnet_pool": False}


@pytest.fixture(scope="module")
def ring(
    docker_engine: Any,
    built_images: dict[str, ImageResult],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[NetworkPlan, Runtime]]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("faults"), runtime="docker") as plan:
        yield plan, runtime_for(plan)


def _topology_args(plan: NetworkPlan) -> list[str]:
    path = plan.state_dir.parent / "fault-ring.yaml"
    return ["-t", str(path), "--state-dir", str(plan.state_dir)]


async def _frames(plan: NetworkPlan, node_id: str) -> dict[str, int] | None:
    """link ID -> last frame stored, as `node_id` reports it (None when it does not answer)."""
    node = plan.nodes[node_id]
    client = NodeClient(node_id, node.address, plan.controller_credentials)
    try:
        status = await client.status(2.0)
    except (grpc.aio.AioRpcError, TimeoutError):  # a paused node never answers
        return None
    finally:
        await client.close()
    return {link.link_id: link.last_frame for link in status.links}


async def _link_status(plan: NetworkPlan, node_id: str, link_id: str) -> Any:
    """A link's status at one end."""
    client = NodeClient(node_id, plan.nodes[node_id].address, plan.controller_credentials)
    try:
        status = await client.status()
    finally:
        await client.close()
    return next(link for link in status.links if link.link_id == link_id)


def _stands_still(plan: NetworkPlan, node_id: str, link_id: str) -> bool:
    """Whether `link_id` stores no new frame at `node_id` over three seconds (after two to let
    what was in flight land)."""
    time.sleep(2)
    first = asyncio.run(_frames(plan, node_id))
    time.sleep(3)
    second = asyncio.run(_frames(plan, node_id))
    assert first is not None
    assert second is not None
    return first[link_id] == second[link_id]


def _wait_frames_after(plan: NetworkPlan, link_id: str, frame: int, timeout: float = 90) -> None:
    """Until `link_id` stored a frame newer than `frame` at both ends."""

    async def wait() -> None:
        deadline = time.monotonic() + timeout
        async with NetworkStatus(plan) as status:
            while True:
                snapshot = await status.snapshot()
                view = next(v for v in snapshot.links if v.link_id == link_id)
                if view.tx and view.rx and min(view.tx.last_frame, view.rx.last_frame) > frame:
                    return
                assert time.monotonic() < deadline, f"{link_id} did not resume: {view}"
                await asyncio.sleep(0.5)

    asyncio.run(wait())


def _blackholes(docker_engine: Any, plan: NetworkPlan, node_id: str) -> list[str]:
    container = docker_engine.containers.get(f"qkdnet-{plan.name}-{node_id}")
    result = container.exec_run(["ip", "route", "show", "type", "blackhole"], user="root")
    assert result.exit_code == 0, result.output
    return [line.split()[1] for line in result.output.decode().splitlines() if line.strip()]


def test_a_paused_node_stands_still_until_unpaused(ring: tuple[NetworkPlan, Runtime]) -> None:
    plan, runtime = ring
    runtime.pause("r2")
    try:
        assert runtime.inspect().nodes["r2"].state == "paused"
        assert runtime.faults().paused == ["r2"]
        assert asyncio.run(_frames(plan, "r2")) is None  # it answers nothing
        assert _stands_still(plan, "a", "a--r2")
        frame = asyncio.run(_frames(plan, "a"))["a--r2"]  # type: ignore[index]
    finally:
        runtime.unpause("r2")
    assert runtime.inspect().nodes["r2"].state == "running"
    assert runtime.faults().paused == []
    _wait_frames_after(plan, "a--r2", frame)


async def _relay_round_the_cut(plan: NetworkPlan, timeout: float = 90) -> list[str]:
    """Relay on demand from a to b until it works; the route it took. While a–r1 is cut, no
    relay can go that way: a success means the network routed round the cut."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        a, b = Sae(plan, "sae-a", session), Sae(plan, "sae-b", session)
        while True:
            status, body = await a.call(
                "POST",
                "sae-b/enc_keys",
                json={"number": 2, "extension_mandatory": [NO_POOL]},
            )
            if status == 200:
                keys = {k["key_ID"]: k["key"] for k in body["keys"]}
                assert await b.dec("sae-a", list(keys)) == keys
                (route,) = body["key_container_extension"]["qkdnet_relay"]["routes"]
                return [str(node) for node in route["route"]]
            assert status == 503, body
            assert time.monotonic() < deadline, f"no relay round the cut: {body}"
            await asyncio.sleep(1.0)


def test_a_cut_link_stops_and_relay_goes_round_until_restored(
    ring: tuple[NetworkPlan, Runtime], capsys: pytest.CaptureFixture[str]
) -> None:
    plan, runtime = ring
    assert main(["fault", "cut", *_topology_args(plan), "a", "r1"]) == 0
    try:
        assert runtime.faults().cuts == [("a", "r1")]
        assert main(["fault", "show", *_topology_args(plan)]) == 0
        assert "cut: a — r1" in capsys.readouterr().out
        assert _stands_still(plan, "a", "a--r1")
        assert _stands_still(plan, "r1", "a--r1")
        assert _stands_still(plan, "a", "a--r2") is False  # the rest goes on
        assert asyncio.run(_relay_round_the_cut(plan)) == ["a", "r2", "b"]
        frame = asyncio.run(_frames(plan, "a"))["a--r1"]  # type: ignore[index]
    finally:
        assert main(["fault", "restore", *_topology_args(plan), "--all"]) == 0
    assert runtime.faults().cuts == []
    _wait_frames_after(plan, "a--r1", frame)


def test_a_cut_outlives_a_restart_of_one_end(
    ring: tuple[NetworkPlan, Runtime], docker_engine: Any
) -> None:
    plan, runtime = ring
    runtime.cut_link("r1", "b")
    try:
        runtime.kill("r1")
        runtime.start("r1")  # a fresh network namespace: the cut is put back
        assert _blackholes(docker_engine, plan, "r1") == [plan.nodes["b"].host]
        assert _blackholes(docker_engine, plan, "b") == [plan.nodes["r1"].host]
        assert runtime.faults().cuts == [("b", "r1")]
    finally:
        runtime.restore_link("b", "r1")
    assert _blackholes(docker_engine, plan, "r1") == []
    assert _blackholes(docker_engine, plan, "b") == []


def test_cutting_what_is_not_a_link_says_so(
    ring: tuple[NetworkPlan, Runtime], capsys: pytest.CaptureFixture[str]
) -> None:
    plan, runtime = ring
    assert main(["fault", "cut", *_topology_args(plan), "a", "b"]) == 2  # a user error
    assert (
        "no link between a and b in fault-ring (a has links to r1, r2)" in capsys.readouterr().err
    )
    assert main(["fault", "cut", *_topology_args(plan), "a", "zz"]) == 2
    assert "no node 'zz'" in capsys.readouterr().err
    assert runtime.faults().cuts == []


def test_netem_set_replaces_show_reads_reset_clears(ring: tuple[NetworkPlan, Runtime]) -> None:
    plan, runtime = ring
    try:
        runtime.set_impairment("b", Impairment(loss_percent=1))
        # Kernel netem where the host has sch_netem; the node's own shaping where it has not.
        in_node = FaultRecord.load(plan.state_dir).kernel_netem is False
        mechanism = "in-node" if in_node else "netem"
        assert runtime.faults().mechanism == {"b": mechanism}
        runtime.set_impairment("b", Impairment(delay_ms=20, jitter_ms=5))
        assert runtime.faults().impairments == {"b": Impairment(20, 5, 0)}  # loss is gone
        frame = asyncio.run(_frames(plan, "b"))["b--r2"]  # type: ignore[index]
        _wait_frames_after(plan, "b--r2", frame)  # a shaped node still distils key
        runtime.restart("b")
        assert runtime.faults().impairments == {"b": Impairment(20, 5, 0)}
        assert runtime.faults().mechanism == {"b": mechanism}
    finally:
        runtime.set_impairment("b", Impairment())
    assert runtime.faults().impairments == {}


def test_a_link_s_quantum_channel_changes_live(ring: tuple[NetworkPlan, Runtime]) -> None:
    plan, runtime = ring
    change = ["a", "r2", "--extra-loss-db", "3", "--misalignment", "0.05"]
    assert main(["fault", "link", *_topology_args(plan), *change]) == 0
    try:
        assert runtime.faults().channels == {
            ("a", "r2"): ChannelChange(extra_loss_db=3, misalignment_error=0.05)
        }
        for node in ("a", "r2"):
            link = asyncio.run(_link_status(plan, node, "a--r2"))
            assert (link.extra_loss_db, link.misalignment_error) == (3, 0.05)
    finally:
        assert main(["fault", "link", *_topology_args(plan), "a", "r2", "--reset"]) == 0
    assert runtime.faults().channels == {}
