"""Live faults on the process runtime (the default), on a ring of four nodes:

    r1
  /    \\
a        b
  \\    /
    r2

A cut of a--r1 stops key on that link (at both ends) while a relay from a to b goes round by r2,
and its restore brings key back; an intercept-resend eavesdropper on half the pulses of a--r2
raises the QBER of its next frames to what the channel model predicts; a scenario file shapes
traffic, changes a channel and pauses the broker, `fault show` reports it all (also for a node
that restarts, which gets its faults back), and `fault reset` clears it.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdnet.node.core.channel_model import ChannelChange, model_figures, qber_with_eavesdropper
from qkdnet.orchestrator.cli.main import main
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.faults import FaultRecord, Impairment
from qkdnet.orchestrator.runtime.node_faults import read
from qkdnet.orchestrator.runtime.seam import BROKER
from qkdnet.v1 import control_pb2

from .sae import deployed, ring_topology, sae_clients

pytestmark = pytest.mark.integration

TOPOLOGY = ring_topology("live-faults", 50_000, key_delivery={"pool_keys": 0})
NO_POOL = {"qkdnet_pool": False}
POLL_S = 0.25
ROUNDS = 240  # polls before giving up: a bound on waiting, not a time anything must take


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("live-faults")) as plan:
        yield plan


def _cli(plan: NetworkPlan, *args: str) -> list[str]:
    """`qkdnet fault ...` arguments aimed at the test's deployment."""
    where = ["-t", str(plan.state_dir.parent / "live-faults.yaml"), "--state-dir"]
    return ["fault", args[0], *where, str(plan.state_dir), *args[1:]]


async def _ends(plan: NetworkPlan, link_id: str) -> dict[str, control_pb2.LinkStatus]:
    """Both ends' status of a link, by node."""
    ends = {}
    async with NetworkStatus(plan) as status:
        snapshot = await status.snapshot()
        for node, answer in snapshot.nodes.items():
            assert answer is not None, f"{node} did not answer"
            for link in answer.links:
                if link.link_id == link_id:
                    ends[node] = link
    return ends


async def _wait(plan: NetworkPlan, link_id: str, done: object, what: str) -> None:
    """Poll until `done(ends)` holds (bounded)."""
    for _ in range(ROUNDS):
        if done(await _ends(plan, link_id)):  # type: ignore[operator]
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"{link_id}: {what}: {await _ends(plan, link_id)}")


def _frames(ends: dict[str, control_pb2.LinkStatus], node: str) -> int:
    return ends[node].frames_ok + ends[node].frames_aborted


async def test_a_cut_stops_key_on_the_link_relays_go_round_and_restore_brings_it_back(
    plan: NetworkPlan,
) -> None:
    runtime = runtime_for(plan)
    await asyncio.to_thread(runtime.cut_link, "a", "r1")  # the runtime runs its own loop
    await _wait(
        plan,
        "a--r1",
        lambda ends: all(e.state == "cut" for e in ends.values()),
        "both ends show the cut",
    )
    stored = {node: e.stored_bits_total for node, e in (await _ends(plan, "a--r1")).items()}
    assert (await asyncio.to_thread(runtime.faults)).cuts == [("a", "r1")]
    assert FaultRecord.load(plan.state_dir).cuts == {("a", "r1")}

    # While the other links go on distilling, the cut one stores nothing.
    other = await _ends(plan, "a--r2")
    await _wait(
        plan, "a--r2", lambda ends: _frames(ends, "a") >= _frames(other, "a") + 3, "key goes on"
    )
    after = await _ends(plan, "a--r1")
    assert {node: e.stored_bits_total for node, e in after.items()} == stored
    assert all(e.state == "cut" for e in after.values())

    # A relay from a to b cannot take r1: it goes round by r2.
    async with sae_clients(plan) as saes:
        container = await saes["sae-a"].enc_container(
            "sae-b", number=8, extension_optional=[NO_POOL]
        )
        (route,) = container["key_container_extension"]["qkdnet_relay"]["routes"]
        assert route["route"] == ["a", "r2", "b"]
        keys = {k["key_ID"]: k["key"] for k in container["keys"]}
        assert await saes["sae-b"].dec("sae-a", list(keys)) == keys

    await asyncio.to_thread(runtime.restore_link, "a", "r1")
    await _wait(
        plan,
        "a--r1",
        lambda ends: all(e.stored_bits_total > stored[node] for node, e in ends.items()),
        "key comes back at both ends",
    )
    assert (await asyncio.to_thread(runtime.faults)).cuts == []


async def test_an_eavesdropper_raises_the_qber_of_the_next_frames_to_the_model(
    plan: NetworkPlan,
) -> None:
    before = (await _ends(plan, "a--r2"))["a"]
    assert await asyncio.to_thread(main, _cli(plan, "link", "a", "r2", "--eavesdrop", "0.5")) == 0
    changed = await _ends(plan, "a--r2")
    # The model at both ends follows: intercept-resend adds 0.5 x (1/4 - E/2) to its QBER.
    expected = qber_with_eavesdropper(before.model_qber, 0.5)
    for end in changed.values():
        assert end.eavesdrop_fraction == 0.5
        assert end.model_qber == pytest.approx(expected, rel=1e-6)
        assert end.model_secret_rate_bps < before.model_secret_rate_bps
    # Frames already emulated before the change (at most three: in rounds, queued, in
    # production) keep the old channel; the frame after them shows the new one.
    start = _frames(changed, "a")
    await _wait(plan, "a--r2", lambda ends: _frames(ends, "a") >= start + 4, "frames go on")
    last = (await _ends(plan, "a--r2"))["a"]
    sigma = math.sqrt(expected * (1 - expected) / last.last_sample_bits)
    assert abs(last.last_sample_qber - expected) < 5 * sigma, (last.last_sample_qber, expected)
    assert last.last_sample_qber > before.model_qber + 5 * sigma
    assert last.aborts_by_reason["qber"] > 0  # above the 11 % threshold: no key

    assert await asyncio.to_thread(main, _cli(plan, "link", "a", "r2", "--reset")) == 0
    resumed = (await _ends(plan, "a--r2"))["a"]
    assert resumed.model_qber == pytest.approx(before.model_qber)
    await _wait(
        plan,
        "a--r2",
        lambda ends: ends["a"].frames_ok > resumed.frames_ok,
        "key resumes once the eavesdropper is gone",
    )


def test_a_scenario_applies_faults_that_show_survive_a_restart_and_reset(
    plan: NetworkPlan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "steps:\n"
        "  - {at: 0, action: shape, args: {node: b, delay: 5ms, jitter: 2ms, loss: 1%}}\n"
        "  - {at: 0, action: shape, args: {node: a, peer: r1, rate: 20mbit}}\n"
        "  - {at: 0.5, action: link, args: {link: [r1, b], extra_loss_db: 3}}\n"
        "  - {at: 1, action: pause, args: {broker: true}}\n"
    )
    assert main(_cli(plan, "run", str(scenario))) == 0
    runtime = runtime_for(plan)
    report = runtime.faults()
    assert report.paused == [BROKER]
    assert report.impairments == {"b": Impairment(5, 2, 1)}
    assert report.mechanism == {"b": "in-node"}
    assert report.peer_impairments == {"a": {"r1": Impairment(rate_kbit=20_000)}}
    assert report.channels == {("b", "r1"): ChannelChange(extra_loss_db=3)}
    ends = asyncio.run(_ends(plan, "b--r1"))
    links = plan.topology.resolved_links()
    configured = next(link for link in links if set(link.endpoints) == {"b", "r1"})
    changed = ChannelChange(extra_loss_db=3).apply(configured.channel.parameters())
    for end in ends.values():
        assert end.extra_loss_db == 3
        assert end.model_sifted_rate_bps == pytest.approx(
            model_figures(changed, 1.16).detections_per_pulse / 2 * changed.pulse_rate_hz
        )

    # A node that restarts gets its faults back, as a cut fibre stays cut.
    runtime.restart("b")
    held = read(plan, ["b"])["b"]
    assert held.shaping == {"*": Impairment(5, 2, 1)}
    assert held.channels == {("b", "r1"): ChannelChange(extra_loss_db=3)}

    capsys.readouterr()
    assert main([*_cli(plan, "show"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["paused"] == [BROKER]
    assert shown["channels"]["b--r1"]["extra_loss_db"] == 3
    assert (
        shown["channels"]["b--r1"]["model"]["changed_secret_rate_bps"]
        < (shown["channels"]["b--r1"]["model"]["secret_rate_bps"])
    )
    assert main([*_cli(plan, "reset"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reset"]["impairments"]["b"]["delay_ms"] == 5
    assert runtime.faults().is_empty
    assert FaultRecord.load(plan.state_dir).is_empty
    for state in read(plan, plan.nodes).values():
        assert (state.cut_peers, state.shaping, state.channels) == (frozenset(), {}, {})
