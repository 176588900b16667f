"""Two islands of QKD links joined by a pqc-bridge link (ML-KEM-768 over the authenticated
classical channel, no quantum channel), deployed through the CLI: keys relayed from one island
to the other arrive identical, the bridge shows its kind and source, and no node logs anything
of the exchange but its events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
ENV = os.environ | {"COLUMNS": "200"}

TOPOLOGY = """\
name: islands
defaults: {speedup: 10, frame_bits: 100000}
nodes:
  a: {saes: [sae-a]}
  b: {}
  c: {}
  d: {saes: [sae-d]}
links:
  - {endpoints: [a, b], length_km: 10}
  - endpoints: [b, c]
    length_km: 400            # no fibre: the two islands are 400 km apart
    kind: pqc-bridge
    pqc_bridge: {block_bits: 16384, interval_s: 0.2}
  - {endpoints: [c, d], length_km: 10}
"""


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def test_a_pqc_bridge_joins_two_islands_and_carries_relayed_keys(tmp_path: Path) -> None:
    path = tmp_path / "islands.yaml"
    path.write_text(TOPOLOGY)
    checked = _run("validate", "-t", path)
    assert checked.returncode == 0, checked.stderr  # 400 km: fine without a quantum channel
    state = tmp_path / "state"
    deployed = _run("deploy", "-t", path, "--state-dir", state)
    assert deployed.returncode == 0, deployed.stderr
    try:
        deadline = time.monotonic() + 60
        while True:  # 503 until routing has seen every link's key
            got = _run(
                "key", "get", "-t", path, "--from", "sae-a", "--to", "sae-d", "--number", "8"
            )
            if got.returncode == 0 or "HTTP 503" not in got.stderr:
                break
            assert time.monotonic() < deadline, got.stderr
            time.sleep(0.5)
        assert got.returncode == 0, got.stdout + got.stderr
        assert got.stdout.count("match") == 8
        assert "MISMATCH" not in got.stdout
        assert "a → b → c → d" in got.stdout  # over the bridge: avoided, but the only way
        shown = json.loads(_run("inspect", "-t", path, "--json").stdout)
        rows = {row["link"]: row for row in shown["links"]}
        bridge = rows["b--c"]
        assert bridge["kind"] == "pqc-bridge"
        assert "ML-KEM-768" in bridge["source"]
        assert "computational" in bridge["source"]
        assert bridge["store_bits"] > 0
        # The exchange's messages and their bytes stay out of the logs.
        for log in (state / "logs").glob("*.log"):
            text = log.read_text()
            for word in ("public_key", "ciphertext", "KemOffer", "KemCapsule"):
                assert word not in text, (log.name, word)
    finally:
        _run("destroy", "-t", path)
