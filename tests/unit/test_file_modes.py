"""Secrets at rest: what qkdnet writes is its owner's only, from the first byte, whatever the
umask; looser modes found later are tightened."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qkdnet.node.file_modes import private_dir, tighten, write_private
from qkdnet.node.store.delivered_keys import DeliveredKeysDb
from qkdnet.node.store.key_store import KeyStoreDb
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """What a user's shell often has: files 0644, directories 0755 by default."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _loose(root: Path) -> dict[str, str]:
    """Paths (not symbolic links, whose own mode means nothing) that group or others may use."""
    return {
        path: oct(mode)
        for path, mode in _modes(root).items()
        if mode & 0o077 and not (root / path).is_symlink()
    }


def test_write_private_and_private_dir(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "secret"
    write_private(target, b"key")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    # An existing file with a loose mode is replaced, never written into.
    loose = tmp_path / "loose"
    loose.write_text("old")
    os.chmod(loose, 0o644)
    write_private(loose, "new")
    assert (loose.read_text(), stat.S_IMODE(loose.stat().st_mode)) == ("new", 0o600)
    with pytest.raises(FileExistsError):
        private_dir(loose)


def test_key_stores_and_their_journals_are_born_private(tmp_path: Path) -> None:
    stores = tmp_path / "state"
    link = KeyStoreDb(stores / "links" / "a--b.sqlite")
    delivered = DeliveredKeysDb(stores / "delivered_keys.sqlite")
    try:
        names = {p.name for p in stores.rglob("*")}
        # WAL mode: the write-ahead log and the shared memory index exist while open.
        assert {"a--b.sqlite-wal", "a--b.sqlite-shm", "delivered_keys.sqlite-wal"} <= names
        assert _loose(stores) == {}
    finally:
        link.close()
        delivered.close()


def test_tighten_takes_group_and_other_off_everything(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "links").mkdir(parents=True)
    (root / "links" / "a--b.sqlite").write_bytes(b"x")
    (root / "ready.json").write_text("{}")
    os.chmod(root / "links", 0o755)
    os.chmod(root / "links" / "a--b.sqlite", 0o664)
    (root / "link").symlink_to("/etc/hostname")
    changed = tighten(root)
    assert {p.relative_to(root).as_posix() for p in changed} == {
        ".",
        "links",
        "links/a--b.sqlite",
        "ready.json",
    }
    assert _loose(root) == {}
    assert stat.S_IMODE(Path("/etc/hostname").stat().st_mode) & 0o044  # a link is not followed
    assert tighten(root) == []


def test_a_deployment_s_state_is_private(tmp_path: Path) -> None:
    """What the orchestrator writes before any node runs: PKI, configurations, broker files."""
    plan = NetworkPlan.build(load_topology(EXAMPLES / "chain5.yaml"), tmp_path / "state")
    pki = plan.provision_pki()
    plan.write_node_configs(pki)
    plan.write_broker_files(pki)
    assert (plan.pki_dir / "saes" / "sae-a" / "key.pem").exists()
    assert (plan.broker_dir / "access.json").exists()
    assert _loose(plan.state_dir) == {}
