"""Whole networks on the process runtime: deploy, key on every link, telemetry, destroy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.client.telemetry_watch import TelemetryWatch
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.process_runtime import labelled_processes, process_start_time
from qkdnet.orchestrator.runtime.seam import BROKER, Runtime

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"


def _listening(subnet: int) -> list[str]:
    """Listening TCP sockets on 127.<subnet>.x.x (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        octets = [int(address[i : i + 2], 16) for i in (6, 4, 2, 0)]
        if state == "0A" and octets[:2] == [127, subnet]:
            found.append(f"{'.'.join(map(str, octets))}:{int(port, 16)}")
    return found


def _assert_nothing_left(plan: NetworkPlan, pids: list[int]) -> None:
    assert labelled_processes(plan.state_dir) == []
    assert [pid for pid in pids if process_start_time(pid) is not None] == []
    assert _listening(plan.subnet) == []


async def _frames(plan: NetworkPlan) -> int:
    """Frames stored so far over all links, as the transmitters report them."""
    async with NetworkStatus(plan) as status:
        snapshot = await status.snapshot()
        return sum(v.tx.frames_ok for v in snapshot.links if v.tx is not None)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, tuple[NetworkPlan, Runtime]]]:
    """deploy(name) through the runtime seam; everything is destroyed at teardown."""
    made: dict[str, tuple[NetworkPlan, Runtime]] = {}
    yield made
    for _plan, runtime in made.values():
        runtime.destroy()


def _deploy(made: dict[str, tuple[NetworkPlan, Runtime]], example: str, tmp: Path) -> NetworkPlan:
    plan = NetworkPlan.build(load_topology(EXAMPLES / f"{example}.yaml"), tmp / example)
    runtime = runtime_for(plan)
    made[example] = (plan, runtime)
    runtime.deploy(timeout=60)
    return plan


def _common_frames(
    plan: NetworkPlan, reports: dict[tuple[str, str], dict[int, int]]
) -> dict[str, set[int]]:
    """Link ID -> the frames (after the first) both ends reported as their newest."""
    common = {}
    for link in plan.links:
        a, b = sorted(link.endpoints)
        link_id = f"{a}--{b}"
        common[link_id] = set(reports[(link_id, a)]) & set(reports[(link_id, b)]) - {-1}
    return common


async def _store_reports(
    plan: NetworkPlan, seconds: float
) -> dict[tuple[str, str], dict[int, int]]:
    """(link, node) -> {last_frame: total_bits} from the MQTT store reports of up to `seconds`,
    until both ends of every link reported one frame alike (each end reports its newest frame
    once a second, so on a fast link the two may take a few reports to coincide)."""
    reports: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    watch = TelemetryWatch.for_plan(plan)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for state in watch.updates():
                for key, data in state.stores.items():
                    reports[key][int(data["last_frame"])] = int(data["total_bits"])
                if all(_common_frames(plan, reports).values()):
                    break
    return reports


@pytest.mark.parametrize("example", ["chain5", "secoqc", "backbone"])
def test_every_link_distils_identical_key_and_destroy_leaves_nothing(
    example: str, tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    plan = _deploy(deployment, example, tmp_path)
    pids = [n.pid for n in deployment[example][1].inspect().nodes.values() if n.pid]
    assert len(pids) == len(plan.nodes)
    asyncio.run(wait_for_key(plan, timeout=120))

    # Through MQTT: both ends report the same amount of key at the same newest frame.
    reports = asyncio.run(_store_reports(plan, seconds=30))
    for link_id, common in _common_frames(plan, reports).items():
        a, b = link_id.split("--")
        tx, rx = reports[(link_id, a)], reports[(link_id, b)]
        assert common, f"{link_id}: no frame reported by both ends ({tx}, {rx})"
        for frame in common:
            assert tx[frame] == rx[frame] > 0, f"{link_id} frame {frame}"

    # Through the nodes' own gRPC: keyed digests of every block are identical.
    async def compare() -> None:
        async with NetworkStatus(plan) as status:
            snapshot = await status.snapshot()
            assert all(node is not None for node in snapshot.nodes.values())
            for view in snapshot.links:
                result = await status.compare_stores(view)
                assert result.match, f"{view.link_id}: {result.detail}"
                assert result.common_blocks > 0

    asyncio.run(compare())
    broker_pid = deployment[example][1].inspect().broker.pid  # type: ignore[union-attr]
    assert broker_pid is not None
    report = deployment[example][1].destroy(keep_state=True)
    for node in plan.nodes.values():
        log = node.log_path.read_text()
        # A node that overruns its stop deadline dumps every thread's stack into its log.
        assert "node_stopped" in log, f"{node.node_id} did not stop cleanly:\n{log[-4000:]}"
    assert not report.killed
    _assert_nothing_left(plan, [*pids, broker_pid])
    assert deployment[example][1].destroy().state_removed
    assert not plan.state_dir.exists()


def test_nodes_outlive_a_killed_orchestrator_and_destroy_still_cleans_up(tmp_path: Path) -> None:
    topology = EXAMPLES / "chain5.yaml"
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
    deploy = subprocess.Popen(
        [*cli, "deploy", "-t", str(topology), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    plan = NetworkPlan.build(load_topology(topology), state)
    try:
        deadline = time.monotonic() + 60
        while not all((n.state_dir / "ready.json").exists() for n in plan.nodes.values()):
            assert time.monotonic() < deadline, "nodes did not come up"
            assert deploy.poll() is None, "deploy ended before it could be killed"
            time.sleep(0.05)
        deploy.send_signal(signal.SIGKILL)
        deploy.wait()
        info = runtime_for(plan).inspect()
        assert all(node.state == "running" for node in info.nodes.values())
        pids = [node.pid for node in info.nodes.values() if node.pid]

        before = asyncio.run(_frames(plan))
        time.sleep(3)
        assert asyncio.run(_frames(plan)) > before, "links keep distilling without the orchestrator"
        result = subprocess.run(
            [*cli, "destroy", "-t", str(topology), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        _assert_nothing_left(plan, pids)
    finally:
        if deploy.poll() is None:
            deploy.kill()
        runtime_for(plan).destroy()


def test_key_keeps_flowing_without_the_broker_and_telemetry_resumes(
    tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    plan = _deploy(deployment, "two-node", tmp_path)
    runtime = deployment["two-node"][1]
    asyncio.run(wait_for_key(plan, timeout=60))

    runtime.kill(BROKER)
    broker = runtime.inspect().broker
    assert broker is not None
    assert (broker.state, broker.detail) == ("crashed", "killed by SIGKILL")
    before = asyncio.run(_frames(plan))
    time.sleep(4)
    assert asyncio.run(_frames(plan)) > before, "key distillation goes on without the broker"

    runtime.start(BROKER)
    restarted = time.time()

    async def fresh_reports() -> set[str]:
        fresh: set[str] = set()
        watch = TelemetryWatch.for_plan(plan)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                async for state in watch.updates():
                    fresh = {
                        node
                        for node, data in state.nodes.items()
                        if data["state"] == "up" and data["ts"] > restarted
                    }
                    stats_fresh = all(
                        s.get("ts", 0) > restarted for s in state.links.values()
                    ) and len(state.links) == len(plan.links)
                    if fresh == set(plan.nodes) and stats_fresh:
                        return fresh
        return fresh

    assert asyncio.run(fresh_reports()) == set(plan.nodes), "every node reconnected"


def test_watch_shows_live_link_figures_from_mqtt(
    tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    plan = _deploy(deployment, "two-node", tmp_path)
    asyncio.run(wait_for_key(plan, timeout=60))
    cli = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
    result = subprocess.run(
        [
            *cli,
            "watch",
            "-t",
            str(EXAMPLES / "two-node.yaml"),
            "--state-dir",
            str(plan.state_dir),
            "--duration",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stderr
    # Piped, one line per update: the runtime's states first, then every telemetry message.
    lines = result.stdout.splitlines()
    assert any(line.endswith("state alice: running") for line in lines), result.stdout
    assert any(" node bob up " in line for line in lines), result.stdout
    # The newest update: the first may be the broker's retained message from before the first
    # frame (telemetry is published once a second).
    row = [line for line in lines if " link alice--bob " in line][-1]
    fields = dict(part.split("=", 1) for part in row.split() if "=" in part)
    assert " running " in row, row
    assert int(fields["frames"]) > 0, f"frames: {row}"
    qber = float(fields["qber"].rstrip("%"))
    assert 1.0 < qber < 6.0, f"QBER: {row}"


def test_deploy_refuses_a_second_deployment_of_the_same_topology(
    tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    from qkdnet.orchestrator.cli.main import main

    plan = _deploy(deployment, "two-node", tmp_path)
    status = main(
        ["deploy", "-t", str(EXAMPLES / "two-node.yaml"), "--state-dir", str(plan.state_dir)]
    )
    assert status == 2
    # and the running deployment is untouched
    assert all(n.state == "running" for n in deployment["two-node"][1].inspect().nodes.values())


def test_stop_start_kill_restart_a_node_keeps_its_store(
    tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    plan = _deploy(deployment, "two-node", tmp_path)
    runtime = deployment["two-node"][1]
    asyncio.run(wait_for_key(plan, timeout=60))
    node = next(iter(plan.nodes))
    store = next((plan.nodes[node].state_dir / "links").glob("*.sqlite"))
    runtime.kill(node)
    assert runtime.inspect().nodes[node].describe() == "crashed (killed by SIGKILL)"
    runtime.start(node)
    runtime.restart(node)
    assert runtime.inspect().nodes[node].state == "running"
    assert store.exists()

    async def compare() -> bool:
        async with NetworkStatus(plan) as status:
            snapshot = await status.snapshot()
            return all([(await status.compare_stores(v)).match for v in snapshot.links])

    assert asyncio.run(compare())
    log = plan.nodes[node].log_path.read_text()
    assert log.count('"event":"node_started"') == 3
    assert json.loads((plan.state_dir / "runtime.json").read_text())["nodes"][node]["pid"] == (
        runtime.inspect().nodes[node].pid
    )
    assert os.path.exists(plan.pki_dir / "ca.pem")


def test_pause_and_unpause_a_node_process(
    tmp_path: Path, deployment: dict[str, tuple[NetworkPlan, Runtime]]
) -> None:
    plan = _deploy(deployment, "two-node", tmp_path)
    runtime = deployment["two-node"][1]
    node = next(iter(plan.nodes))
    runtime.pause(node)
    try:
        assert runtime.inspect().nodes[node].state == "paused"
        assert runtime.faults().paused == [node]
    finally:
        runtime.unpause(node)
    assert runtime.inspect().nodes[node].state == "running"
    assert runtime.faults().paused == []
