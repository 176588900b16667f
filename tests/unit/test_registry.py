"""The registry of deployments: one name, one deployment; address blocks that never collide."""

from __future__ import annotations

import multiprocessing
import socket
import zlib
from pathlib import Path

import pytest
import yaml

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.plan import registry as registry_module
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.registry import Registry, block_of_subnet, blocks_in_use
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime.seam import ended


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A registry of its own, on a machine where no block is in use outside it."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(registry_module, "blocks_in_use", set)
    return Registry()


def _state(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


def test_names_whose_old_hashes_collide_get_different_blocks(
    registry: Registry, tmp_path: Path
) -> None:
    # The old scheme gave both the same /16: 1 + crc32(name) % 254.
    seen: dict[int, str] = {}
    pair = None
    for index in range(10_000):
        name = f"net{index}"
        bucket = zlib.crc32(name.encode()) % 254
        if bucket in seen:
            pair = (seen[bucket], name)
            break
        seen[bucket] = name
    assert pair is not None
    first = registry.claim(pair[0], _state(tmp_path, "a"), "process", tmp_path / "a.yaml")
    second = registry.claim(pair[1], _state(tmp_path, "b"), "process", tmp_path / "b.yaml")
    assert first.block != second.block
    assert [entry.name for entry in registry.all()] == sorted(pair)


def test_one_name_is_one_deployment(registry: Registry, tmp_path: Path) -> None:
    first = _state(tmp_path, "first")
    registry.claim("chain5", first, "process", tmp_path / "t.yaml")
    # Claiming again from the same state dir keeps the entry and its block.
    again = registry.claim("chain5", first, "process", tmp_path / "t.yaml")
    assert again.block == 1
    with pytest.raises(ConfigError, match=r"already registered with state dir .*first"):
        registry.claim("chain5", _state(tmp_path, "second"), "process", tmp_path / "t.yaml")


def test_a_held_block_is_refused_with_its_holder(registry: Registry, tmp_path: Path) -> None:
    registry.claim("alpha", _state(tmp_path, "a"), "process", tmp_path / "a.yaml", block=42)
    with pytest.raises(ConfigError, match=r"127\.42\.0\.0/16 is held by deployment 'alpha'"):
        registry.claim("beta", _state(tmp_path, "b"), "process", tmp_path / "b.yaml", block=42)


def test_release_frees_the_block_and_stale_entries_go(registry: Registry, tmp_path: Path) -> None:
    a = _state(tmp_path, "a")
    b = _state(tmp_path, "b")
    registry.claim("alpha", a, "process", tmp_path / "a.yaml")
    registry.claim("beta", b, "docker", tmp_path / "b.yaml")
    assert registry.release("alpha", a)
    assert registry.claim("gamma", _state(tmp_path, "c"), "process", tmp_path / "c.yaml").block == 1
    b.rmdir()  # removed by hand: the entry is stale
    assert [entry.name for entry in registry.all()] == ["gamma"]
    assert registry.get("beta") is None


def test_blocks_in_use_outside_the_registry_are_skipped(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.213.0.1", 0))
        listener.listen()
        assert 213 in blocks_in_use()
    monkeypatch.setattr(registry_module, "blocks_in_use", lambda: {1, 2})
    assert registry.claim("alpha", _state(tmp_path, "a"), "process", tmp_path / "a").block == 3


def _claim_in_process(home: str, index: int, queue: multiprocessing.Queue[int]) -> None:
    import os

    os.environ["XDG_STATE_HOME"] = home
    state = Path(home) / f"s{index}"
    state.mkdir(parents=True, exist_ok=True)
    entry = Registry().claim(f"net{index}", state, "process", state / "t.yaml")
    queue.put(entry.block)


def _in_use_now() -> set[int]:
    return blocks_in_use()


def test_concurrent_claims_never_share_a_block(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(home, index, queue)) for index in range(8)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    blocks = sorted(queue.get(timeout=5) for _ in processes)
    assert len(set(blocks)) == len(blocks) == 8
    assert not set(blocks) & _in_use_now()


def test_subnet_of_the_topology_and_the_command_line(registry: Registry, tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "examples" / "two-node.yaml"
    data = yaml.safe_load(source.read_text())
    data["subnet"] = "127.77.0.0/16"
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    topology = load_topology(path)
    plan = NetworkPlan.build(topology, tmp_path / "s")
    assert plan.network_cidr == "127.77.0.0/16"
    assert plan.broker_host == "127.77.0.1"
    override = NetworkPlan.build(topology, tmp_path / "s", subnet="127.90.0.0/16")
    assert override.network_cidr == "127.90.0.0/16"
    with pytest.raises(ConfigError, match=r"subnet: 127\.77\.0\.0/16 is not a block the docker"):
        NetworkPlan.build(topology, tmp_path / "s", runtime="docker")


@pytest.mark.parametrize(
    ("subnet", "message"),
    [
        ("127.5.0.0/24", "not a block"),
        ("10.5.0.0/16", "not a block"),
        ("127.0.0.0/16", "not a block"),
        ("127.5.1.0/16", "not an IPv4 network"),
        ("banana", "not an IPv4 network"),
    ],
)
def test_bad_subnets_are_refused(subnet: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        block_of_subnet(subnet, "process", "--subnet")


def test_how_a_process_ended() -> None:
    assert ended(code=0) == ("stopped", "")
    assert ended(signal_number=15) == ("stopped", "SIGTERM")
    assert ended(signal_number=9) == ("crashed", "killed by SIGKILL")
    assert ended(code=137) == ("crashed", "killed by SIGKILL")  # docker's 128 + 9
    assert ended(code=1) == ("crashed", "exit status 1")
