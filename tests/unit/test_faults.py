"""Fault descriptions: netem options both ways, the record kept for restarts, what a runtime
refuses before it touches anything, and scenario files: checked up front, played in order,
taken back on Ctrl-C or a failing step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qkdnet.node.core.channel_model import ChannelChange
from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.orchestrator.cli.main import main
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import Topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.fault_scenario import load_scenario, run_scenario
from qkdnet.orchestrator.runtime.faults import (
    FaultRecord,
    Impairment,
    netem_from_tc,
    parse_duration_ms,
    parse_percent,
    parse_rate_kbit,
)
from qkdnet.orchestrator.runtime.process_runtime import ProcessRuntime
from qkdnet.orchestrator.runtime.seam import BROKER, UnknownComponent


def test_impairment_to_tc_arguments() -> None:
    assert Impairment(50, 10, 1.5).tc_netem_args() == ["delay", "50ms", "10ms", "loss", "1.5%"]
    assert Impairment(delay_ms=0.25).tc_netem_args() == ["delay", "0.25ms"]
    assert Impairment(loss_percent=3).tc_netem_args() == ["loss", "3%"]
    assert Impairment(rate_kbit=1000).tc_netem_args() == ["rate", "1000kbit"]
    assert Impairment().is_none
    assert not Impairment(rate_kbit=1).is_none
    assert Impairment(50, 10, 1.5).describe() == "delay 50 ms ± 10 ms, loss 1.5 %"
    assert Impairment(rate_kbit=500).describe() == "rate 500 kbit/s"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"delay_ms": -1}, "delay: must be 0..60 s"),
        ({"loss_percent": 101}, "loss: must be 0..100 %"),
        ({"jitter_ms": 5}, "jitter: needs a delay"),
        ({"rate_kbit": -1}, "rate: must be 0..100 Gbit/s"),
    ],
)
def test_impairment_refuses_what_netem_cannot_do(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Impairment(**fields)


def test_durations_and_percentages() -> None:
    assert parse_duration_ms("50ms", "--delay") == 50
    assert parse_duration_ms("0.2s", "--delay") == 200
    assert parse_duration_ms("250us", "--delay") == 0.25
    assert parse_duration_ms("7", "--delay") == 7
    assert parse_percent("1.5%", "--loss") == 1.5
    assert parse_rate_kbit("1mbit", "--rate") == 1000
    assert parse_rate_kbit("500kbit", "--rate") == 500
    assert parse_rate_kbit("2Gbit", "--rate") == 2e6
    assert parse_rate_kbit("64", "--rate") == 64
    with pytest.raises(ConfigError, match="--rate: expected a rate"):
        parse_rate_kbit("1 MB/s", "--rate")
    with pytest.raises(ConfigError, match="--delay: expected a duration"):
        parse_duration_ms("fast", "--delay")
    with pytest.raises(ConfigError, match="--loss: expected a percentage"):
        parse_percent("some", "--loss")


def test_netem_read_back_from_tc_json() -> None:
    # `tc -j qdisc show dev eth0` of iproute2 6.1 after `netem delay 20ms 5ms loss 1%`
    shown = [
        {
            "kind": "netem",
            "handle": "8001:",
            "root": True,
            "refcnt": 2,
            "options": {
                "limit": 1000,
                "delay": {"delay": 0.02, "jitter": 0.005, "correlation": 0},
                "loss-random": {"loss": 0.01, "correlation": 0},
                "ecn": False,
                "gap": 0,
            },
        }
    ]
    assert netem_from_tc(shown) == Impairment(20, 5, 1)
    assert netem_from_tc([{"kind": "noqueue", "root": True, "options": {}}]) is None
    assert netem_from_tc([]) is None


def test_fault_record_round_trip_and_a_damaged_file(tmp_path: Path) -> None:
    record = FaultRecord()
    record.cuts.add(("a", "r1"))
    record.impairments["b"] = Impairment(delay_ms=10)
    record.peer_impairments[("b", "a")] = Impairment(loss_percent=2, rate_kbit=100)
    record.channels[("a", "r1")] = ChannelChange(eavesdrop_fraction=0.5, extra_loss_db=3)
    record.kernel_netem = False
    record.save(tmp_path)
    again = FaultRecord.load(tmp_path)
    assert again == record
    assert again.cuts_of("r1") == ["a"]
    assert again.cuts_of("b") == []
    assert again.peer_impairments_of("b") == {"a": Impairment(loss_percent=2, rate_kbit=100)}
    assert list(again.channels_of("r1")) == [("a", "r1")]
    assert again.channels_of("b") == {}
    (tmp_path / "faults.json").write_text('{"cuts": [["a"]]}')
    with pytest.raises(ConfigError, match=r"faults\.json: malformed"):
        FaultRecord.load(tmp_path)


def _plan(tmp_path: Path) -> NetworkPlan:
    topology = Topology.model_validate(
        {
            "name": "faulty",
            "nodes": {"a": {}, "b": {}, "c": {}},
            "links": [
                {"endpoints": ["a", "b"], "length_km": 5},
                {"endpoints": ["b", "c"], "length_km": 5},
            ],
        }
    )
    return NetworkPlan.build(topology, tmp_path / "state")


def test_the_process_runtime_cuts_inside_nodes_that_run(tmp_path: Path) -> None:
    runtime = runtime_for(_plan(tmp_path))
    assert runtime.check_link("b", "a") == ("a", "b")
    with pytest.raises(UnknownComponent, match=r"no link between a and c .*a has links to b"):
        runtime.check_link("a", "c")
    runtime.plan.state_dir.mkdir(parents=True)
    with pytest.raises(QkdnetError, match="neither a nor b is running"):
        runtime.cut_link("a", "b")
    # recorded all the same: a node that starts gets it
    assert FaultRecord.load(runtime.plan.state_dir).cuts == {("a", "b")}
    with pytest.raises(QkdnetError, match="a is stopped"):
        runtime.set_impairment("a", Impairment(delay_ms=5))


def test_fault_verbs_refuse_a_deployment_that_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "faulty.yaml"
    path.write_text(
        "name: faulty\nnodes: {a: {}, b: {}}\nlinks: [{endpoints: [a, b], length_km: 5}]\n"
    )
    where = ["-t", str(path), "--state-dir", str(tmp_path / "state")]
    assert main(["fault", "pause", *where, "a"]) == 2
    assert "faulty is not deployed" in capsys.readouterr().err
    assert main(["fault", "netem", "set", *where, "a"]) == 2
    assert "give at least one of --delay" in capsys.readouterr().err
    assert main(["fault", "netem", "set", *where, "a", "--delay", "x"]) == 2
    assert "--delay: expected a duration" in capsys.readouterr().err
    assert main(["fault", "link", *where, "a", "b"]) == 2
    assert "give at least one of --eavesdrop" in capsys.readouterr().err
    assert main(["fault", "link", *where, "a", "b", "--eavesdrop", "1.5"]) == 2
    assert "eavesdrop must be in [0.0, 1.0]" in capsys.readouterr().err


def _scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ("[{at: 0, action: cut, args: {link: [a, c]}}]", "step 1 (cut): no link between a and c"),
        (
            "[{at: 0, action: pause, args: {nodes: [a]}}, {at: 5, action: explode}]",
            "step 2 (explode): unknown action 'explode'",
        ),
        (
            "[{at: 3, action: reset}, {at: 1, action: reset}]",
            "step 2 (reset): at 1 s comes before the step before it (3 s)",
        ),
        ("[{at: -1, action: reset}]", "step 1 (reset): at: must be 0..86400 s"),
        ("[{action: reset}]", "step 1 (reset): at: expected seconds"),
        (
            "[{at: 0, action: link, args: {link: [a, b], eavesdrop: 2}}]",
            r"step 1 \(link\): eavesdrop must be in \[0.0, 1.0\]",
        ),
        (
            "[{at: 0, action: link, args: {link: [a, b]}}]",
            "step 1 (link): give eavesdrop, extra_loss_db or misalignment",
        ),
        (
            "[{at: 0, action: shape, args: {node: b, delay: soon}}]",
            "step 1 (shape): delay: expected a duration",
        ),
        (
            "[{at: 0, action: shape, args: {node: z, delay: 5ms}}]",
            "step 1 (shape): no node 'z'",
        ),
        (
            "[{at: 0, action: cut, args: {link: [a, b], when: now}}]",
            "step 1 (cut): unknown argument 'when'",
        ),
        ("[{at: 0, action: pause}]", "step 1 (pause): name nodes"),
        ("[]", "no steps"),
    ],
)
def test_a_scenario_is_checked_whole_before_anything_happens(
    tmp_path: Path, steps: str, message: str
) -> None:
    runtime = runtime_for(_plan(tmp_path))
    path = _scenario(tmp_path, f"steps: {steps}\n")
    with pytest.raises(ConfigError, match=message if "\\" in message else re.escape(message)):
        load_scenario(path, runtime)


def test_fault_run_refuses_a_bad_step_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = tmp_path / "faulty.yaml"
    topology.write_text(
        "name: faulty\nnodes: {a: {}, b: {}}\nlinks: [{endpoints: [a, b], length_km: 5}]\n"
    )
    path = _scenario(tmp_path, "steps:\n  - {at: 0, action: cut, args: {link: [a, a]}}\n")
    where = ["-t", str(topology), "--state-dir", str(tmp_path / "state")]
    assert main(["fault", "run", *where, str(path)]) == 2
    assert "scenario.yaml: step 1 (cut)" in capsys.readouterr().err
    assert main(["fault", "run", *where, str(tmp_path / "missing.yaml")]) == 2


class _Recorder(ProcessRuntime):
    """A runtime that only records what it is asked (no process starts)."""

    def __init__(self, plan: NetworkPlan, fail_on: str = "") -> None:
        super().__init__(plan)
        self.calls: list[tuple[str, ...]] = []
        self.fail_on = fail_on

    def _call(self, *call: str) -> None:
        if call[0] == self.fail_on:
            raise QkdnetError(f"{call[0]} failed")
        self.calls.append(call)

    def pause(self, name: str) -> None:
        self._call("pause", name)

    def unpause(self, name: str) -> None:
        self._call("unpause", name)

    def cut_link(self, a: str, b: str) -> None:
        self._call("cut", a, b)

    def restore_link(self, a: str, b: str) -> None:
        self._call("restore", a, b)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self._call("stop", name)

    def start(self, name: str, timeout: float = 60.0) -> None:
        self._call("start", name)


class _Time:
    def __init__(self, interrupt_at: float | None = None) -> None:
        self.now = 0.0
        self.interrupt_at = interrupt_at

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.interrupt_at is not None and self.now + seconds >= self.interrupt_at:
            self.now = self.interrupt_at
            raise KeyboardInterrupt
        self.now += seconds


_PLAY = """
steps:
  - {at: 0, action: cut, args: {link: [a, b]}}
  - {at: 2, action: pause, args: {nodes: [c], broker: true}}
  - {at: 2, action: stop, args: {nodes: [b]}}
  - {at: 7.5, action: restore, args: {link: [b, a]}}
"""


def test_a_scenario_plays_every_step_at_its_time(tmp_path: Path) -> None:
    runtime = _Recorder(_plan(tmp_path))
    scenario = load_scenario(_scenario(tmp_path, _PLAY), runtime)
    clock = _Time()
    seen: list[tuple[int, float]] = []
    undo = run_scenario(
        runtime,
        scenario,
        lambda step, elapsed, _: seen.append((step.number, elapsed)),
        clock=clock.clock,
        sleep=clock.sleep,
    )
    assert seen == [(1, 0.0), (2, 2.0), (3, 2.0), (4, 7.5)]
    assert runtime.calls == [
        ("cut", "a", "b"),
        ("pause", "c"),
        ("pause", BROKER),
        ("stop", "b"),
        ("restore", "b", "a"),
    ]
    assert (undo.paused, undo.stopped, undo.cuts) == ({"c", BROKER}, {"b"}, set())


def test_ctrl_c_takes_back_what_the_run_applied(tmp_path: Path) -> None:
    runtime = _Recorder(_plan(tmp_path))
    scenario = load_scenario(_scenario(tmp_path, _PLAY), runtime)
    clock = _Time(interrupt_at=5.0)
    with pytest.raises(KeyboardInterrupt):
        run_scenario(runtime, scenario, lambda *_: None, clock=clock.clock, sleep=clock.sleep)
    assert runtime.calls[4:] == [
        ("unpause", BROKER),
        ("unpause", "c"),
        ("start", "b"),
        ("restore", "a", "b"),
    ]


def test_a_failing_step_takes_back_what_the_run_applied_and_names_itself(
    tmp_path: Path,
) -> None:
    runtime = _Recorder(_plan(tmp_path), fail_on="stop")
    scenario = load_scenario(_scenario(tmp_path, _PLAY), runtime)
    clock = _Time()
    with pytest.raises(QkdnetError, match=r"step 3 \(stop\) failed: stop failed; what the run"):
        run_scenario(runtime, scenario, lambda *_: None, clock=clock.clock, sleep=clock.sleep)
    assert runtime.calls[3:] == [("unpause", BROKER), ("unpause", "c"), ("restore", "a", "b")]
