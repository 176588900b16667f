"""Operations a testbed team relies on, through the CLI as a user runs it: deployments found by
name from a registry, honest states, output that works in pipes, deploys that clean up after
themselves, destroy that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qkdnet.orchestrator.plan.registry import Registry
from qkdnet.orchestrator.runtime.process_runtime import labelled_processes

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parents[2] / "examples"
CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]


def _run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _topology(tmp_path: Path, name: str) -> Path:
    """The two-node example under another name."""
    data = yaml.safe_load((EXAMPLES / "two-node.yaml").read_text())
    data["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _states(name: str) -> dict[str, str]:
    result = _run("inspect", "--name", name, "--json")
    data = json.loads(result.stdout)
    states = {node["node"]: node["state"] for node in data["nodes"]}
    states["(broker)"] = data["broker"]["state"]
    return states


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """A deployed two-node network named ops-pair: (name, topology file, state dir)."""
    root = tmp_path_factory.mktemp("ops")
    topology = _topology(root, "ops-pair")
    state = root / "state-a"
    result = _run("deploy", "-t", str(topology), "--state-dir", str(state), "--no-wait")
    assert result.returncode == 0, result.stderr
    try:
        yield "ops-pair", topology, state
    finally:
        _run("destroy", "--name", "ops-pair")


def test_a_deployment_is_one_scheduling_group_that_yields_to_the_user(
    pair: tuple[str, Path, Path],
) -> None:
    """The nodes of a launch share one session (one autogroup, at a lower weight than the
    user's), each in a process group of its own, none in the session of whoever deployed.
    (A node started again later is a launch of its own: this test runs before any restart.)"""
    _, _, state = pair
    nodes = json.loads((state / "runtime.json").read_text())["nodes"]
    pids = [int(entry["pid"]) for entry in nodes.values()]
    assert len(pids) == 2
    sessions = {os.getsid(pid) for pid in pids}
    assert len(sessions) == 1
    assert sessions != {os.getsid(0)}
    assert all(os.getpgid(pid) == pid for pid in pids)
    autogroup = Path(f"/proc/{pids[0]}/autogroup")
    if autogroup.exists():  # kernels with autogroup scheduling
        assert autogroup.read_text().split()[-1] == "5"
        assert Path("/proc/self/autogroup").read_text() != autogroup.read_text()


def test_a_deployment_is_found_by_name_and_one_name_is_one_deployment(
    pair: tuple[str, Path, Path], tmp_path: Path
) -> None:
    _, topology, state = pair
    # Found by the topology alone, whatever its state dir.
    found = _run("inspect", "-t", str(topology), "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["state_dir"] == str(state)
    # The same name from another state dir is refused, naming the one that runs.
    again = _run("deploy", "-t", str(topology), "--state-dir", str(tmp_path / "state-b"))
    assert again.returncode == 2
    assert f"is deployed with state dir {state}" in again.stderr, again.stderr
    assert "Traceback" not in again.stderr


def test_inspect_all_lists_every_deployment_with_its_own_block(
    pair: tuple[str, Path, Path], tmp_path: Path
) -> None:
    other = _topology(tmp_path, "ops-other")
    deployed = _run("deploy", "-t", str(other), "--no-wait")
    assert deployed.returncode == 0, deployed.stderr
    try:
        listing = _run("inspect", "--all", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = {row["name"]: row for row in json.loads(listing.stdout)}
        assert {"ops-pair", "ops-other"} <= set(rows)
        assert rows["ops-pair"]["subnet"] != rows["ops-other"]["subnet"]
        assert rows["ops-other"]["nodes_up"] == rows["ops-other"]["nodes"] == 2
        table = _run("inspect", "--all")
        assert "ops-other" in table.stdout
        assert rows["ops-other"]["subnet"] in table.stdout  # a pipe gets the full width
    finally:
        gone = _run("destroy", "--name", "ops-other")
    assert gone.returncode == 0, gone.stderr
    assert "ops-other" not in _run("inspect", "--all").stdout
    # Aimed at nothing deployed: said so, exit status 2, a JSON error object with --json.
    missing = _run("inspect", "--name", "ops-other", "--json")
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["error"]["exit_status"] == 2
    assert "no deployment named 'ops-other'" in missing.stderr
    assert _run("destroy", "-t", str(other)).returncode == 2


def test_states_are_honest(pair: tuple[str, Path, Path]) -> None:
    name, _, _ = pair
    assert _run("fault", "pause", "--name", name, "bob").returncode == 0
    try:
        assert _states(name)["bob"] == "paused"
    finally:
        assert _run("fault", "unpause", "--name", name, "bob").returncode == 0
    assert _run("kill", "--name", name, "bob").returncode == 0
    data = json.loads(_run("inspect", "--name", name, "--json").stdout)
    bob = next(node for node in data["nodes"] if node["node"] == "bob")
    assert (bob["state"], bob["detail"]) == ("crashed", "killed by SIGKILL")
    assert bob["since"] is not None
    assert _run("start", "--name", name, "bob").returncode == 0
    assert _run("stop", "--name", name, "bob").returncode == 0
    assert _states(name)["bob"] == "stopped"
    unknown = _run("stop", "--name", name, "carol")
    assert unknown.returncode == 2
    assert "no node 'carol'" in unknown.stderr
    assert _run("start", "--name", name, "bob").returncode == 0
    assert _states(name) == {"alice": "running", "bob": "running", "(broker)": "running"}


def test_watch_into_a_pipe_writes_a_line_per_update(pair: tuple[str, Path, Path]) -> None:
    name, _, _ = pair
    watch = subprocess.Popen(
        [*CLI, "watch", "--name", name, "--duration", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    assert _run("fault", "pause", "--name", name, "alice").returncode == 0
    time.sleep(3)
    assert _run("fault", "unpause", "--name", name, "alice").returncode == 0
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    lines = out.splitlines()
    assert any(" link alice--bob " in line for line in lines), out
    assert any(" node " in line for line in lines), out
    assert any("state alice: running → paused" in line for line in lines), out
    assert any("state alice: paused → running" in line for line in lines), out


def test_closed_pipes_and_version_are_quiet(pair: tuple[str, Path, Path]) -> None:
    name, _, _ = pair
    piped = subprocess.run(
        f"{' '.join(CLI)} inspect --name {name} --json | head -c 10",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert len(piped.stdout) == 10
    assert "Traceback" not in piped.stderr
    assert "BrokenPipe" not in piped.stderr
    version = _run("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("qkdnet ")


def test_a_failed_deploy_leaves_no_process_and_says_which_step(tmp_path: Path) -> None:
    topology = _topology(tmp_path, "ops-fail")
    state = tmp_path / "state"
    # Nothing is ready in a hundredth of a second: the nodes are started, then given up on,
    # while they start or (if they were ready at the first look) while the link has no key.
    result = _run("deploy", "-t", str(topology), "--state-dir", str(state), "--timeout", "0.01")
    assert result.returncode == 1
    steps = ("failed while starting it", "failed while waiting for key")
    assert any(step in result.stderr for step in steps), result.stderr
    assert "Everything it started is stopped" in result.stderr
    assert labelled_processes(state.absolute()) == []
    assert Registry().get("ops-fail") is None
    assert (state / "logs").is_dir()  # kept for the post-mortem


def test_destroy_leaves_no_process_even_one_that_ignores_sigterm(tmp_path: Path) -> None:
    topology = _topology(tmp_path, "ops-stubborn")
    state = tmp_path / "state"
    assert (
        _run("deploy", "-t", str(topology), "--state-dir", str(state), "--no-wait").returncode == 0
    )
    # A process of the deployment that nobody recorded and that ignores SIGTERM.
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)",
        ],
        env=os.environ | {"QKDNET_DEPLOYMENT": str(state.absolute())},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline().strip() == "ready"
        result = _run("destroy", "--name", "ops-stubborn", timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"needed SIGKILL: pid {stubborn.pid}" in result.stdout, result.stdout
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
        assert labelled_processes(state.absolute()) == []
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait(timeout=10)
        if stubborn.stdout is not None:
            stubborn.stdout.close()
