"""A deployment's plan record (plan.json): what verbs read instead of validating the topology
again, and what they must not import to read it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import Topology, load_topology

EXAMPLES = Path(__file__).parents[2] / "examples"


def _topology(tmp_path: Path) -> Path:
    """chain5 with settings away from their defaults, so that the record has to carry them."""
    data = yaml.safe_load((EXAMPLES / "chain5.yaml").read_text())
    data["telemetry"] = {"interval_s": 2.5, "broker": "mqtt://127.0.0.1:1999"}
    data["logs"] = {"max_mb": 3, "files": 2}
    path = tmp_path / "chain5-record.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("runtime", ["process", "docker"])
def test_a_saved_plan_loads_equal_and_finds_its_topology(tmp_path: Path, runtime: str) -> None:
    source = _topology(tmp_path)
    plan = NetworkPlan.build(
        load_topology(source), tmp_path / "state", runtime=runtime, block=77, source=source
    )
    plan.state_dir.mkdir()
    plan.save()
    loaded = NetworkPlan.load(plan.state_dir)
    assert loaded == plan
    assert (loaded.telemetry_interval_s, loaded.log_max_bytes, loaded.log_files) == (
        2.5,
        3_000_000,
        2,
    )
    assert loaded.external_broker == "127.0.0.1:1999"
    assert loaded.nodes["r2"].config_path == plan.nodes["r2"].config_path
    assert loaded.topology == plan.topology  # read from the deployed copy on first use
    assert (plan.state_dir / "topology.yaml").read_bytes() == source.read_bytes()
    override = NetworkPlan.load(plan.state_dir, "mqtt://10.0.0.9:1883")
    assert override is not None
    assert override.broker_address == "10.0.0.9:1883"


def test_a_plan_without_a_file_keeps_its_topology_too(tmp_path: Path) -> None:
    topology = load_topology(_topology(tmp_path))
    plan = NetworkPlan.build(topology, tmp_path / "state", block=78)
    plan.state_dir.mkdir()
    plan.save()
    loaded = NetworkPlan.load(plan.state_dir)
    assert loaded is not None
    assert isinstance(loaded.topology, Topology)
    assert loaded.topology == topology


@pytest.mark.parametrize(
    "record",
    ["", "{", "[]", json.dumps({"version": 99}), json.dumps({"version": 1, "name": "x"})],
)
def test_an_unreadable_record_is_no_record(tmp_path: Path, record: str) -> None:
    assert NetworkPlan.load(tmp_path) is None  # none at all
    (tmp_path / "plan.json").write_text(record)
    assert NetworkPlan.load(tmp_path) is None


def test_verbs_on_a_deployed_network_import_nothing_heavy(tmp_path: Path) -> None:
    """What inspect, key get and the lifecycle verbs load to act on a deployed network:
    no pydantic, YAML, numpy, cryptography, gRPC or aiohttp (each costs tenths of a second
    of every command; the verbs that need them import them)."""
    plan = NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), tmp_path / "s", block=79)
    plan.state_dir.mkdir()
    plan.save()
    probe = f"""
import sys
from pathlib import Path
import qkdnet.orchestrator.cli.main, qkdnet.orchestrator.cli.console_output
import qkdnet.orchestrator.cli.network_commands, qkdnet.orchestrator.runtime.process_runtime
import qkdnet.orchestrator.client.key_client, qkdnet.orchestrator.cli.network_view
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
plan = NetworkPlan.load(Path({str(plan.state_dir)!r}))
assert plan is not None and plan.sae_credentials("sae-a").cert.name == "cert.pem"
heavy = ["pydantic", "yaml", "numpy", "cryptography", "grpc", "aiohttp", "matplotlib"]
print(" ".join(name for name in heavy if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []
