"""The exported Compose file: every service, secret and port in place, nodes configured to find
each other by service name, and refusals that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from qkdnet.node.config import NodeConfig
from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import Topology, load_topology
from qkdnet.orchestrator.runtime.compose_export import export_compose

EXAMPLES = Path(__file__).parents[2] / "examples"


def _export(tmp_path: Path, **options: object) -> Path:
    plan = NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), runtime="docker")
    export_compose(
        plan,
        tmp_path / "out",
        node_image="n:1",
        broker_image="b:1",
        **options,  # type: ignore[arg-type]
    )
    return tmp_path / "out"


def test_one_service_per_node_and_every_secret_file_exists(tmp_path: Path) -> None:
    out = _export(tmp_path, hosts=("kme.example",))
    document = yaml.safe_load((out / "compose.yaml").read_text())
    services = document["services"]
    assert list(services) == ["broker", "a", "r1", "r2", "r3", "b"]
    for name, secret in document["secrets"].items():
        assert (out / secret["file"]).is_file(), name
    r2 = services["r2"]
    assert r2["command"] == ["node", "--config", "/run/secrets/node.yaml"]
    assert [s["target"] for s in r2["secrets"]] == [
        "node.yaml",
        "ca.pem",
        "cert.pem",
        "key.pem",
        "r1--r2.psk",
        "r2--r3.psk",
    ]
    assert "ports" not in r2  # a relay serves no application
    assert services["a"]["ports"][0] == {
        "target": 8443,
        "published": 18440,
        "protocol": "tcp",
        "mode": "host",
    }
    assert services["b"]["ports"][0]["published"] == 18441
    broker = services["broker"]
    assert "ports" not in broker  # the broker stays on the deployment's network unless asked
    assert broker["command"] == ["-c", "/run/secrets/mosquitto.conf"]
    assert {s["target"] for s in broker["secrets"]} == {
        "mosquitto.conf",
        "acl",
        "ca.pem",
        "cert.pem",
        "key.pem",
    }
    conf = (out / "broker" / "mosquitto.conf").read_text()
    for line in ("require_certificate true", "allow_anonymous false", "use_identity_as_username"):
        assert line in conf
    acl = (out / "broker" / "acl").read_text()
    assert "user r2\ntopic write qkdnet/chain5/node/r2/status\n" in acl
    assert "user orchestrator\ntopic read qkdnet/chain5/#\n" in acl
    assert all(s["deploy"]["endpoint_mode"] == "dnsrr" for s in services.values())
    assert document["volumes"] == {f"store-{n}": {} for n in ("a", "r1", "r2", "r3", "b")}

    config = NodeConfig.model_validate(yaml.safe_load((out / "nodes" / "r2.yaml").read_text()))
    assert config.listen == "0.0.0.0:50051"
    assert config.advertise == "r2:50051"  # what telemetry shows, not the wildcard
    assert config.nodes["r3"] == "r3:50051"
    assert config.telemetry is not None
    assert config.telemetry.broker == "broker:1883"
    assert config.telemetry.tls
    assert {str(link.psk_file) for link in config.links} == {
        "/run/secrets/r1--r2.psk",
        "/run/secrets/r2--r3.psk",
    }

    endpoints = json.loads((out / "endpoints.json").read_text())
    assert endpoints["saes"]["sae-b"]["url"] == "https://localhost:18441"
    assert endpoints["mqtt"] is None
    cert = x509.load_pem_x509_certificate((out / "pki" / "nodes" / "a" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["a", "localhost", "kme.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://chain5.qkdnet/node/a"
    ]
    broker_cert = (out / "pki" / "broker" / "cert.pem").read_bytes()
    names = (
        x509.load_pem_x509_certificate(broker_cert)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert names.get_values_for_type(x509.DNSName) == ["broker", "localhost", "kme.example"]


def test_the_broker_is_published_only_when_asked(tmp_path: Path) -> None:
    out = _export(tmp_path, mqtt_port=18830)
    broker = yaml.safe_load((out / "compose.yaml").read_text())["services"]["broker"]
    assert broker["ports"] == [
        {"target": 1883, "published": 18830, "protocol": "tcp", "mode": "host"}
    ]
    assert json.loads((out / "endpoints.json").read_text())["mqtt"] == "mqtts://localhost:18830"


def test_a_second_export_keeps_the_pki(tmp_path: Path) -> None:
    out = _export(tmp_path)
    psk = (out / "pki" / "links" / "a--r1.psk").read_bytes()
    _export(tmp_path, key_api_port=20000)
    assert (out / "pki" / "links" / "a--r1.psk").read_bytes() == psk


@pytest.mark.parametrize(
    ("nodes", "options", "message"),
    [
        ({"Alice": {}, "bob": {}}, {}, "node 'Alice': a Compose service"),
        ({"alice": {"saes": ["s"]}, "bob": {}}, {"mqtt_port": 18440}, "--mqtt-port: 18440"),
        ({"alice": {"saes": ["s"]}, "bob": {}}, {"key_api_port": 70000}, "out of range"),
    ],
)
def test_what_cannot_be_exported_is_refused(
    tmp_path: Path, nodes: dict[str, object], options: dict[str, int], message: str
) -> None:
    names = list(nodes)
    topology = Topology.model_validate(
        {"name": "x", "nodes": nodes, "links": [{"endpoints": names, "length_km": 1}]}
    )
    plan = NetworkPlan.build(topology, tmp_path / "state", runtime="docker")
    with pytest.raises(ConfigError, match=message):
        export_compose(plan, tmp_path / "out", node_image="n", broker_image="b", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_written_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match=r"--output: cannot write .*out: File exists"):
        _export(tmp_path)
