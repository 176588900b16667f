"""Fault descriptions: netem options both ways, the record kept for restarts, and what a runtime
refuses before it touches anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.cli import main
from qkdnet.orchestrator.faults import (
    FaultRecord,
    FaultUnsupported,
    Impairment,
    netem_from_tc,
    parse_duration_ms,
    parse_percent,
)
from qkdnet.orchestrator.network_plan import NetworkPlan
from qkdnet.orchestrator.runtime import UnknownComponent, runtime_for
from qkdnet.orchestrator.topology import Topology


def test_impairment_to_tc_arguments() -> None:
    assert Impairment(50, 10, 1.5).tc_netem_args() == ["delay", "50ms", "10ms", "loss", "1.5%"]
    assert Impairment(delay_ms=0.25).tc_netem_args() == ["delay", "0.25ms"]
    assert Impairment(loss_percent=3).tc_netem_args() == ["loss", "3%"]
    assert Impairment().is_none
    assert Impairment(50, 10, 1.5).describe() == "delay 50 ms ± 10 ms, loss 1.5 %"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"delay_ms": -1}, "delay: must be 0..60 s"),
        ({"loss_percent": 101}, "loss: must be 0..100 %"),
        ({"jitter_ms": 5}, "jitter: needs a delay"),
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
    record.save(tmp_path)
    again = FaultRecord.load(tmp_path)
    assert again == record
    assert again.cuts_of("r1") == ["a"]
    assert again.cuts_of("b") == []
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


def test_the_process_runtime_says_why_it_cannot_cut_links(tmp_path: Path) -> None:
    runtime = runtime_for(_plan(tmp_path))
    assert runtime.check_link("b", "a") == ("a", "b")
    with pytest.raises(UnknownComponent, match=r"no link between a and c .*a has links to b"):
        runtime.check_link("a", "c")
    with pytest.raises(FaultUnsupported, match="deploy with --runtime docker"):
        runtime.cut_link("a", "b")
    with pytest.raises(FaultUnsupported, match="network namespace"):
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
