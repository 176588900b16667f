"""`qkdnet link-demo` as a user runs it: JSON output, Ctrl-C, no process left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkdnet.orchestrator.runtime.node_process import pid_alive

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "qkdnet.orchestrator", "link-demo"]


def test_json_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [*DEMO, "--length-km", "20", "--speedup", "1000", "--duration", "6", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    for key in (
        "qber",
        "secret_bits",
        "pulses",
        "secret_fraction_per_pulse",
        "model_secret_fraction_per_pulse",
        "keys_match",
    ):
        assert key in summary
    assert summary["keys_match"] is True
    assert summary["secret_bits"] > 0
    assert summary["pulses"] > 0
    assert 0.02 < summary["qber"] < 0.05


def _node_pids(state_dir: Path) -> list[int]:
    pids = []
    for ready in state_dir.glob("nodes/*/ready.json"):
        pids.append(int(json.loads(ready.read_text())["pid"]))
    return pids


def _wait_for_nodes(state_dir: Path) -> list[int]:
    """The PIDs of the demo's two nodes once both are ready."""
    deadline = time.monotonic() + 60
    pids: list[int] = []
    while time.monotonic() < deadline and len(pids) < 2:
        time.sleep(0.2)
        pids = _node_pids(state_dir)
    assert len(pids) == 2, "the two nodes never became ready"
    return pids


def _start_long_demo(state: Path, output: int) -> tuple[subprocess.Popen[str], list[int]]:
    """A demo meant to be interrupted, and the PIDs of its two nodes once they are ready."""
    proc = subprocess.Popen(
        [*DEMO, "--length-km", "10", "--duration", "600", "--state-dir", str(state)],
        stdout=output,
        stderr=output,
        text=True,
    )
    return proc, _wait_for_nodes(state)


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    proc, pids = _start_long_demo(tmp_path / "demo", subprocess.PIPE)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "both key stores identical" in out
    assert "Traceback" not in out + err
    for pid in pids:
        assert not pid_alive(pid), f"node process {pid} survived"


def test_nodes_die_with_a_killed_demo(tmp_path: Path) -> None:
    proc, pids = _start_long_demo(tmp_path / "demo", subprocess.DEVNULL)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in pids), "node processes outlived the demo"
