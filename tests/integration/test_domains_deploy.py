"""A topology with domains deployed through the CLI, as its users would: all domains at once
(one deployment per domain, each with its own CA, broker and block), and each domain apart from
its own state directory, as two machines would, the CAs exchanged with `qkdnet ca` and
`deploy --peer-ca`. Keys cross the border over ETSI GS QKD 020 both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkdnet.orchestrator.client.key_client import BlockingKeyApiClient, KeyApiError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.registry import Registry

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
