"""Keys through the CLI as an application would get them: `inspect --json` tells an SAE where
its KME and credentials are, `key get` runs enc_keys/dec_keys, `relay-demo` relays on chain5."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from rich.console import Console

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.cli.relay_demo import RelayStats, _route_table, hop_times, percentile
from qkdnet.orchestrator.client.key_client import BlockingKeyApiClient, KeyApiClient, KeyApiError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.pki import CertificatePaths
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.process_runtime import labelled_processes

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"
TWO_NODE = EXAMPLES / "two-node.yaml"
CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
ENV = os.environ | {"COLUMNS": "200"}


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


# -- relay-demo first: it deploys chain5 itself, before two-node is up -------------------------


def test_relay_demo_relays_every_key_hop_by_hop_and_tears_down(tmp_path: Path) -> None:
    state = tmp_path / "chain5"
    result = _run("relay-demo", "--keys", "5", "--state-dir", str(state), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert "5 of 5 keys relayed sae-a → sae-b: all 5 matched" in out, out
    assert "enc_keys p50" in out
    assert "p99" in out
    # Every key was relayed on demand along the whole chain, and the hops were timed.
    assert "routes: a → r1 → r2 → r3 → b (5)" in out, out
    rows = {
        cells[1]: cells
        for line in out.splitlines()
        if line.startswith("│")
        for cells in [[c.strip() for c in line.strip("│").split("│")]]
    }
    assert list(rows) == ["a", "r1", "r2", "r3", "b"], out
    alone = [float(rows[node][3]) for node in rows]
    from_here = [float(rows[node][4]) for node in rows]
    assert all(ms > 0 for ms in alone), out
    assert from_here == sorted(from_here, reverse=True), out  # each hop includes the rest
    assert "torn down" in out
    assert not state.exists()
    assert labelled_processes(state) == []


def test_relay_demo_ctrl_c_tears_down(tmp_path: Path) -> None:
    state = tmp_path / "chain5"
    plan = NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), state)
    with subprocess.Popen(
        [*CLI, "relay-demo", "--keys", "100000", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    ) as proc:
        assert proc.stdout is not None
        try:
            seen: list[str] = []
            while not any("has key" in line for line in seen):
                line = proc.stdout.readline()
                assert line, "".join(seen)  # the demo ended before every link had key
                seen.append(line)
            time.sleep(6)  # routes form, then keys are relayed one at a time
            proc.send_signal(signal.SIGINT)
            out = "".join(seen) + proc.stdout.read()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                runtime_for(plan).destroy()
    assert "Traceback" not in out
    assert proc.returncode == 0, out
    summary = re.search(r"(\d+) of 100000 keys relayed sae-a → sae-b: all (\d+) matched", out)
    assert summary, out
    assert int(summary[1]) == int(summary[2]) >= 1, out
    assert "(interrupted)" in out
    assert "torn down" in out
    assert not state.exists()
    assert labelled_processes(state) == []


def test_missing_relay_extension_shows_n_a() -> None:
    """A KME that sends no qkdnet_relay extension: the route as the topology has it, n/a."""
    plan = NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), Path("/nonexistent"))
    stats = RelayStats("sae-a", "sae-b", 3, delivered=2, matched=2)
    stats.record_relay(None)
    stats.record_relay({"other": 1})
    stats.record_relay({"qkdnet_relay": {"routes": [{"route": "not a list"}]}})
    console = Console(record=True, width=200)
    console.print(_route_table(plan, stats))
    text = console.export_text()
    assert "a → r1 → r2 → r3 → b" in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert [line.count("n/a") for line in rows] == [2] * 5  # both timings of all five hops
    stats.record_relay(
        {"qkdnet_relay": {"ms": 10.0, "routes": [{"route": ["a", "b"], "hop_ms": [10.0, 4.0]}]}}
    )
    assert stats.hops == {("a", "b"): [[6.0, 4.0]]}
    assert hop_times([10.0, 7.0, 4.5, 2.0, 1.0]) == [3.0, 2.5, 2.5, 1.0, 1.0]
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 99) == 5.0


# -- two-node, deployed once for the tests below ---------------------------------------------


@pytest.fixture(scope="module")
def two_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    plan = NetworkPlan.build(load_topology(TWO_NODE), tmp_path_factory.mktemp("key-cli") / "s")
    runtime = runtime_for(plan)
    try:
        runtime.deploy(timeout=60)
        asyncio.run(wait_for_key(plan, timeout=60))
        yield plan
    finally:
        runtime.destroy()


def _key_get(plan: NetworkPlan, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("key", "get", "-t", str(TWO_NODE), "--state-dir", str(plan.state_dir), *args)


def test_inspect_json_tells_an_sae_where_its_kme_and_credentials_are(
    two_node: NetworkPlan,
) -> None:
    result = _run("inspect", "-t", str(TWO_NODE), "--state-dir", str(two_node.state_dir), "--json")
    assert result.returncode == 0, result.stderr
    nodes = {node["node"]: node for node in json.loads(result.stdout)["nodes"]}
    assert set(nodes) == {"alice", "bob"}
    for node_id, sae in (("alice", "sae-alice"), ("bob", "sae-bob")):
        node = nodes[node_id]
        assert node["kme_id"] == node_id
        host = two_node.nodes[node_id].host
        assert node["key_api_url"] == f"https://{host}:8443/api/v1/keys"
        assert list(node["saes"]) == [sae]
        files = node["saes"][sae]
        assert set(files) == {"certificate", "private_key", "ca_certificate"}
        for path in files.values():
            assert Path(path).is_absolute(), path
            assert Path(path).is_file(), path
        cert = x509.load_pem_x509_certificate(Path(files["certificate"]).read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == sae

    async def status_with_listed_files(node: dict[str, object], sae: str, peer: str) -> str:
        files = node["saes"][sae]  # type: ignore[index]
        credentials = CertificatePaths(
            Path(files["certificate"]), Path(files["private_key"]), Path(files["ca_certificate"])
        )
        base = str(node["key_api_url"]).removesuffix("/api/v1/keys")
        async with KeyApiClient(base, credentials) as client:
            answer = await client.status(peer)
        assert answer["master_SAE_ID"] == sae
        return str(answer["source_KME_ID"])

    # What inspect lists is enough to call the KME, which names itself as kme_id.
    assert asyncio.run(status_with_listed_files(nodes["alice"], "sae-alice", "sae-bob")) == "alice"
    assert asyncio.run(status_with_listed_files(nodes["bob"], "sae-bob", "sae-alice")) == "bob"


def test_key_get_json_returns_matching_keys_of_the_asked_size(two_node: NetworkPlan) -> None:
    result = _key_get(
        two_node, "--from", "sae-alice", "--to", "sae-bob", "--number", "4", "--size", "512",
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["master"] == "sae-alice"
    assert answer["slaves"] == ["sae-bob"]
    keys = answer["keys"]
    assert len(keys) == 4
    assert len({k["key_ID"] for k in keys}) == 4
    assert len({k["key"] for k in keys}) == 4
    assert all(len(base64.b64decode(k["key"])) == 64 for k in keys)
    assert all(k["match"] == {"sae-bob": True} for k in keys)
    assert answer["enc_keys_ms"] > 0
    relay = answer["relay"]
    assert relay is None or isinstance(relay, dict)

    async def fetch_again() -> KeyApiError:
        async with KeyApiClient.for_sae(two_node, "sae-bob") as bob:
            with pytest.raises(KeyApiError) as caught:
                await bob.dec_keys("sae-alice", [keys[0]["key_ID"]])
        return caught.value

    # The CLI really took the keys at bob's KME: they are not there a second time.
    error = asyncio.run(fetch_again())
    assert error.status == 400
    assert "not found" in error.message


def test_the_blocking_client_gets_what_the_async_client_gets(two_node: NetworkPlan) -> None:
    """Same calls, same answers, same errors, whichever transport (the CLI's is http.client)."""

    async def asynchronous() -> tuple[dict[str, object], KeyApiError, list[bytes]]:
        async with KeyApiClient.for_sae(two_node, "sae-alice") as alice:
            status = await alice.status("sae-bob")
            with pytest.raises(KeyApiError) as caught:
                await alice.enc_keys("sae-bob", 1, 12)
            issued = await alice.enc_keys("sae-bob", 2, 256)
        with BlockingKeyApiClient.for_sae(two_node, "sae-bob") as bob:
            fetched = bob.dec_keys("sae-alice", [key.key_id for key in issued.keys])
        assert [k.key_id for k in fetched.keys] == [k.key_id for k in issued.keys]
        return status, caught.value, [key.key for key in issued.keys]

    status, async_error, issued = asyncio.run(asynchronous())
    with BlockingKeyApiClient.for_sae(two_node, "sae-alice") as alice:
        assert alice.status("sae-bob").keys() == status.keys()
        with pytest.raises(KeyApiError) as caught:
            alice.enc_keys("sae-bob", 1, 12)
        issued_here = alice.enc_keys("sae-bob", 1, 256)
    assert (caught.value.status, caught.value.message) == (async_error.status, async_error.message)
    assert caught.value.status == 400
    assert len(issued_here.keys[0].key) == 32
    assert issued_here.keys[0].key not in issued

    unreachable = BlockingKeyApiClient("https://127.0.0.1:9", two_node.sae_credentials("sae-alice"))
    with pytest.raises(KeyApiError) as caught:
        unreachable.status("sae-bob")
    assert caught.value.status is None
    assert "cannot reach the KME" in caught.value.message


def test_key_get_table_shows_fingerprints_never_keys(two_node: NetworkPlan) -> None:
    result = _key_get(two_node, "--from", "sae-bob", "--to", "sae-alice", "--number", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 3, result.stdout
    for row in rows:
        key_id, digest, match = (cell.strip() for cell in row.strip("│").split("│"))
        assert len(key_id) == 36, row
        assert len(digest) == 16, row
        assert match == "match", row
    assert "enc_keys took" in result.stdout


def test_key_get_user_errors_exit_2_naming_the_problem(two_node: NetworkPlan) -> None:
    result = _key_get(two_node, "--from", "sae-alice", "--to", "sae-nobody")
    assert result.returncode == 2
    assert "sae-nobody" in result.stderr
    assert "Traceback" not in result.stderr
    result = _key_get(two_node, "--from", "sae-ghost", "--to", "sae-bob")
    assert result.returncode == 2
    assert "--from" in result.stderr
    assert "sae-ghost" in result.stderr
    result = _key_get(two_node, "--from", "sae-alice", "--to", "sae-bob", "--number", "0")
    assert result.returncode == 2
    assert "--number" in result.stderr
    not_deployed = two_node.state_dir.parent / "elsewhere"
    result = _run(
        "key", "get", "-t", str(TWO_NODE), "--state-dir", str(not_deployed),
        "--from", "sae-alice", "--to", "sae-bob",
    )  # fmt: skip
    assert result.returncode == 2
    # The registry knows where two-node runs: another state dir is refused, naming it.
    assert f"two-node is deployed with state dir {two_node.state_dir}" in result.stderr


def test_key_get_api_failure_exits_1_with_status_and_message(two_node: NetworkPlan) -> None:
    result = _key_get(two_node, "--from", "sae-alice", "--to", "sae-bob", "--size", "16384")
    assert result.returncode == 1
    assert "HTTP 400" in result.stderr
    assert "size shall be between" in result.stderr
