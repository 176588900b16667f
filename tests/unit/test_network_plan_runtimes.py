"""NetworkPlan per runtime: addresses, container paths and the recorded runtime (no engine)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from cryptography import x509

from qkdnet.node.config import load_node_config
from qkdnet.orchestrator.plan.network_plan import NetworkPlan, recorded_runtime
from qkdnet.orchestrator.plan.topology import load_topology

CHAIN5 = Path(__file__).parents[2] / "examples" / "chain5.yaml"


def test_docker_addresses_are_the_loopback_scheme_in_a_private_16(tmp_path: Path) -> None:
    topology = load_topology(CHAIN5)
    process = NetworkPlan.build(topology, tmp_path / "p")
    docker = NetworkPlan.build(topology, tmp_path / "d", runtime="docker")
    assert process.runtime == "process"
    assert docker.runtime == "docker"
    assert docker.network_cidr == f"10.{docker.subnet}.0.0/16"
    assert docker.broker_address == f"10.{docker.subnet}.0.1:1883"
    network = ipaddress.ip_network(docker.network_cidr)
    for node_id, node in docker.nodes.items():
        assert node.address.split(".", 1)[1] == process.nodes[node_id].address.split(".", 1)[1]
        assert ipaddress.ip_address(node.host) in network
    assert len({node.host for node in docker.nodes.values()}) == len(docker.nodes)


def test_docker_node_configs_hold_container_paths_and_copies(tmp_path: Path) -> None:
    plan = NetworkPlan.build(load_topology(CHAIN5), tmp_path / "s", runtime="docker")
    plan.write_node_configs(plan.provision_pki())
    node = plan.nodes["r2"]
    where = node.config_path.parent
    assert where == tmp_path / "s" / "nodes" / "r2"
    assert sorted(p.name for p in where.rglob("*")) == sorted(
        ["ca.pem", "cert.pem", "key.pem", "node.yaml", "links", "r1--r2.psk", "r2--r3.psk"]
    )
    config = load_node_config(node.config_path)  # relative paths resolve beside node.yaml
    assert str(config.state_dir) == "/var/lib/qkdnet"
    assert config.tls.key == where / "key.pem"
    assert config.listen == node.address
    assert (where / "key.pem").read_bytes() == (plan.pki_dir / "nodes/r2/key.pem").read_bytes()
    cert = x509.load_pem_x509_certificate((where / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(node.host) in names.get_values_for_type(x509.IPAddress)
    assert (where.parent.stat().st_mode & 0o077) == 0  # nodes/: the owner's only
    plan.write_node_configs(plan.provision_pki())  # rewritable (a redeploy)


def test_the_recorded_runtime_wins_over_the_topologys(tmp_path: Path) -> None:
    topology = load_topology(CHAIN5)
    assert recorded_runtime(tmp_path) is None
    (tmp_path / "runtime.json").write_text(json.dumps({"runtime": "docker"}))
    assert recorded_runtime(tmp_path) == "docker"
    assert NetworkPlan.build(topology, tmp_path).runtime == "docker"
    assert NetworkPlan.build(topology, tmp_path, runtime="process").runtime == "process"
