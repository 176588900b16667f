"""A topology with domains deployed through the CLI, as its users would: all domains at once
(one deployment per domain, each with its own CA, broker and block), and each domain apart from
its own state directory, as two machines would, the CAs exchanged with `qkdnet ca` and
`deploy --peer-ca`. Keys cross the border over ETSI GS QKD 020 both ways."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qkdnet.node.identity import Role
from qkdnet.orchestrator.client.key_client import BlockingKeyApiClient, KeyApiError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.pki import CertificateAuthority
from qkdnet.orchestrator.plan.registry import Registry
from qkdnet.v1 import control_pb2, control_pb2_grpc, relay_pb2, relay_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
ENV = os.environ | {"COLUMNS": "200"}

TOPOLOGY = """\
name: {name}
defaults: {{speedup: 10, frame_bits: 100000}}
domains:
  at: {{description: Austria{at}}}
  de: {{description: Germany{de}}}
nodes:
  vienna: {{domain: at, saes: [sae-vienna]}}
  linz: {{domain: at}}
  passau: {{domain: de}}
  munich: {{domain: de, saes: [sae-munich]}}
links:
  - {{endpoints: [vienna, linz], length_km: 20}}
  - {{endpoints: [linz, passau], length_km: 0, kind: interworking}}
  - {{endpoints: [passau, munich], length_km: 20}}
"""


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def _keys_cross(master: NetworkPlan, master_sae: str, slave: NetworkPlan, slave_sae: str) -> None:
    """enc_keys in one domain, dec_keys in the other: the same keys (503s while routing
    converges after the deploy are retried)."""
    deadline = time.monotonic() + 60
    with BlockingKeyApiClient.for_sae(master, master_sae) as client:
        while True:
            try:
                sent = client.enc_keys(slave_sae, 10, 256)
                break
            except KeyApiError as exc:
                if exc.status != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    with BlockingKeyApiClient.for_sae(slave, slave_sae) as client:
        got = client.dec_keys(master_sae, [key.key_id for key in sent.keys])
    assert [key.key for key in got.keys] == [key.key for key in sent.keys]
    assert len({key.key for key in sent.keys}) == 10


def test_every_domain_deploys_at_once_and_the_verbs_show_them(tmp_path: Path) -> None:
    path = tmp_path / "whole.yaml"
    path.write_text(TOPOLOGY.format(name="fed1", at="", de=""))
    deployed = _run("deploy", "-t", path, "--json")
    try:
        assert deployed.returncode == 0, deployed.stderr
        out = json.loads(deployed.stdout)
        assert out["name"] == "fed1"
        names = [part["name"] for part in out["domains"]]
        assert names == ["fed1-at", "fed1-de"]
        assert out["domains"][0]["subnet"] != out["domains"][1]["subnet"]
        entries = {entry.name: entry for entry in Registry().all()}
        at = NetworkPlan.load(entries["fed1-at"].state_dir)
        de = NetworkPlan.load(entries["fed1-de"].state_dir)
        assert at is not None
        assert de is not None
        assert at.domain is not None
        assert at.domain.far_directory == {"sae-munich": "linz"}
        # Two CAs: neither domain's is the other's.
        assert (at.pki_dir / "ca.pem").read_bytes() != (de.pki_dir / "ca.pem").read_bytes()
        _keys_cross(at, "sae-vienna", de, "sae-munich")
        _keys_cross(de, "sae-munich", at, "sae-vienna")
        # key get finds each SAE in its domain.
        got = _run("key", "get", "-t", path, "--from", "sae-vienna", "--to", "sae-munich")
        assert got.returncode == 0, got.stdout + got.stderr
        assert "match" in got.stdout
        shown = _run("inspect", "-t", path)
        assert shown.returncode == 0, shown.stderr
        assert "domain at (deployment fed1-at" in shown.stdout
        assert "borders (ETSI GS QKD 020)" in shown.stdout
        assert "passau (domain de)" in shown.stdout
        inspected = json.loads(_run("inspect", "-t", path, "--json").stdout)
        assert [d["domain"]["domain"] for d in inspected["domains"]] == ["at", "de"]
        drawn = _run("graph", "-t", path, "-o", tmp_path / "fed1.svg")
        assert drawn.returncode == 0, drawn.stderr
        svg = (tmp_path / "fed1.svg").read_text()
        assert "domain at" in svg
        assert "ETSI 020" in svg
        # A verb on one deployment is told which domain.
        watch = _run("watch", "-t", path, "--duration", "1")
        assert watch.returncode == 2
        assert "name one with --domain" in watch.stderr
    finally:
        gone = _run("destroy", "-t", path)
    assert gone.returncode == 0, gone.stderr
    assert {e.name for e in Registry().all()} & {"fed1-at", "fed1-de"} == set()


def test_two_domains_deployed_apart_from_their_own_state_dirs_relay_keys(tmp_path: Path) -> None:
    path = tmp_path / "apart.yaml"
    path.write_text(
        TOPOLOGY.format(name="fed2", at=", subnet: 127.233.0.0/16", de=", subnet: 127.234.0.0/16")
    )
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    # Each team makes its PKI and hands the other its CA certificate: nothing else is shared.
    for domain, state in (("at", a), ("de", b)):
        made = _run("ca", "-t", path, "--domain", domain, "--state-dir", state, "-o",
                    tmp_path / f"{domain}.pem")  # fmt: skip
        assert made.returncode == 0, made.stderr
    # Without the peer's CA a border cannot trust it: refused before anything starts.
    refused = _run("deploy", "-t", path, "--domain", "at", "--state-dir", a)
    assert refused.returncode == 2, refused.stderr
    assert "needs the CA certificate of domain de" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert Registry().get("fed2-at") is None
    not_a_ca = _run("deploy", "-t", path, "--domain", "at", "--state-dir", a,
                    "--peer-ca", f"de={path}")  # fmt: skip
    assert not_a_ca.returncode == 2
    assert "not a PEM CA certificate" in not_a_ca.stderr
    try:
        for domain, state, peer in (("at", a, "de"), ("de", b, "at")):
            done = _run("deploy", "-t", path, "--domain", domain, "--state-dir", state,
                        "--peer-ca", tmp_path / f"{peer}.pem")  # fmt: skip
            assert done.returncode == 0, done.stderr
        at, de = NetworkPlan.load(a), NetworkPlan.load(b)
        assert at is not None
        assert de is not None
        assert at.network_cidr == "127.233.0.0/16"
        assert at.domain is not None
        assert at.domain.borders[0].peer_url == f"https://{de.nodes['passau'].host}:8020"
        _keys_cross(at, "sae-vienna", de, "sae-munich")
        _keys_cross(de, "sae-munich", at, "sae-vienna")
    finally:
        for domain in ("at", "de"):
            _run("destroy", "-t", path, "--domain", domain)
    assert Registry().get("fed2-at") is None
    assert Registry().get("fed2-de") is None
    assert not a.exists()
    assert not b.exists()


async def _codes(
    address: str, node: str, ca: Path, cert: Path, key: Path, *, link: bool = True
) -> dict[str, Any]:
    """What node `node` answers a caller with this certificate, service by service (the
    server's certificate checked against `ca`); `link=False` leaves out the link's services
    (a call to them from the link's real peer would replace its running session)."""
    from qkdnet.node.edge.grpc_dial import credentials_from_files, dial

    from .test_security import _calls, _code

    async with dial(address, node, credentials_from_files(ca, cert, key)) as channel:
        if link:
            return await _calls(channel)
        return {
            "NodeControl": await _code(
                control_pb2_grpc.NodeControlStub(channel).GetStatus(control_pb2.StatusRequest())
            ),
            "Relay": await _code(
                relay_pb2_grpc.KeyRelayStub(channel).Relay(relay_pb2.RelayFrame(), timeout=5)
            ),
            "Health": await _code(
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            ),
        }


def test_a_qkd_link_across_domains_pads_the_border_crossing_and_trusts_one_peer_only(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(
        TOPOLOGY.format(name="fed3", at="", de="").replace(
            "length_km: 0, kind: interworking", "length_km: 30"
        )
    )
    deployed = _run("deploy", "-t", path)
    try:
        assert deployed.returncode == 0, deployed.stderr
        entries = {entry.name: entry for entry in Registry().all()}
        at = NetworkPlan.load(entries["fed3-at"].state_dir)
        de = NetworkPlan.load(entries["fed3-de"].state_dir)
        assert at is not None
        assert de is not None
        _keys_cross(at, "sae-vienna", de, "sae-munich")
        _keys_cross(de, "sae-munich", at, "sae-vienna")
        shown = _run("inspect", "-t", path).stdout
        assert "bb84 30 km, running" in shown
        # The keys crossed padded with the shared link's key: both ends used some of it.
        for plan, node in ((at, "linz"), (de, "passau")):
            links = asyncio.run(_status(plan, node)).links
            (end,) = [s for s in links if s.link_id == "linz--passau"]
            assert end.stored_bits_total - end.store_bits >= 2 * 10 * 256, end
        # Both ends of the shared link hold the same secret, from one domain's PKI.
        secret = "linz--passau"
        assert (at.pki_dir / "links").exists()
        at_secret = next(p for p in (at.pki_dir / "links").iterdir() if secret in p.name)
        de_secret = next(p for p in (de.pki_dir / "links").iterdir() if secret in p.name)
        assert at_secret.read_bytes() == de_secret.read_bytes()
        asyncio.run(_only_the_peer_border_crosses(at, de, tmp_path))
    finally:
        gone = _run("destroy", "-t", path)
    assert gone.returncode == 0, gone.stderr


async def _status(plan: NetworkPlan, node: str) -> control_pb2.NodeStatus:
    from qkdnet.orchestrator.client.controller import NodeClient

    client = NodeClient(node, plan.nodes[node].address, plan.controller_credentials)
    try:
        return await client.status()
    finally:
        await client.close()


async def _only_the_peer_border_crosses(at: NetworkPlan, de: NetworkPlan, tmp_path: Path) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    passau, munich = de.nodes["passau"].address, de.nodes["munich"].address
    ca_de = de.pki_dir / "ca.pem"

    def node_cert(plan: NetworkPlan, node: str) -> tuple[Path, Path]:
        return plan.pki_dir / "nodes" / node / "cert.pem", plan.pki_dir / "nodes" / node / "key.pem"

    # The peer border reaches passau's link services and nothing else.
    calls = await _codes(passau, "passau", ca_de, *node_cert(at, "linz"), link=False)
    assert set(calls.values()) == {denied}, calls
    # Another node of Austria reaches nothing of passau, not even the link services.
    calls = await _codes(passau, "passau", ca_de, *node_cert(at, "vienna"))
    assert set(calls.values()) == {denied}, calls
    # Inside Germany, past the border, Austria's certificates do not even get a handshake.
    calls = await _codes(munich, "munich", ca_de, *node_cert(at, "linz"))
    assert set(calls.values()) == {grpc.StatusCode.UNAVAILABLE}, calls
    # Austria's CA claiming a German node's identity: passau trusts that CA (for linz), but
    # only for identities of Austria's trust domain; the forgery reaches nothing.
    forged = CertificateAuthority(at.pki_dir, trust_domain=de.trust_domain).issue(
        Role.NODE, "munich", tmp_path / "forged", hosts=["munich"]
    )
    calls = await _codes(passau, "passau", ca_de, forged.cert, forged.key)
    assert set(calls.values()) == {denied}, calls


def test_the_euroqci_demo_relays_keys_across_every_border(tmp_path: Path) -> None:
    """Three domains, one joined by a cross-border QKD link, one by a link fed by another
    deployment's ETSI 014 KMEs (the demo deploys it first): every SAE gets keys with every SAE
    of the other domains, and everything is torn down."""
    ran = _run(
        "demo", "--example", "euroqci", "--duration", "40", "--state-dir", tmp_path,
        timeout=200,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    rows = [line for line in ran.stdout.splitlines() if "→" in line and "sae-" in line]
    pairs = {tuple(cell.strip() for cell in row.strip("│").split("│")[:2]) for row in rows}
    assert len(pairs) == 6, ran.stdout
    assert "external-kme 111 km" in ran.stdout
    assert "torn down" in ran.stdout
    assert not [e.name for e in Registry().all() if e.name.startswith("euroqci")]
