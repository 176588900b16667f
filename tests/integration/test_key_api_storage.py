"""The key API when its store fails: a full disk and a locked database give 503, and lose
nothing. The KME runs in process on a real store, behind its real HTTPS server; the disk is a
real tmpfs filled to the last byte (so this needs root; skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qkdnet.node.edge.etsi014 import KeyDeliveryServer
from qkdnet.node.edge.https_server import server_ssl_context
from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.identity import Role
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyManager
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.delivered_keys import DeliveredKeys
from qkdnet.node.testing import InMemoryRelayNetwork
from qkdnet.orchestrator.plan.pki import CertificateAuthority

pytestmark = pytest.mark.integration

DOMAIN = "disk.qkdnet"


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


class Kme:
    """An SAE's view of the in-process KME."""

    def __init__(self, url: str, contexts: dict[str, ssl.SSLContext]) -> None:
        self.url = url
        self.contexts = contexts

    async def call(self, sae: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/{path}", json=body, ssl=self.contexts[sae]) as answer,
        ):
            return answer.status, await answer.json()


@pytest.fixture
async def kme(small_disk: Path, tmp_path: Path) -> AsyncIterator[tuple[Kme, DeliveredKeys]]:
    ca = CertificateAuthority(tmp_path / "pki", trust_domain=DOMAIN)
    node = ca.issue(Role.NODE, "n", tmp_path / "n", hosts=["127.0.0.1"])
    contexts = {}
    for sae in ("sae-a", "sae-b"):
        paths = ca.issue(Role.SAE, sae, tmp_path / sae)
        context = ssl.create_default_context(cafile=str(paths.ca))
        context.load_cert_chain(str(paths.cert), str(paths.key))
        contexts[sae] = context
    delivered = await DeliveredKeys.open(small_disk / "delivered_keys.sqlite")
    # Both SAEs are on this node: a relay with no link and no peer.
    relay = KeyRelay(
        "n",
        {},
        delivered,
        InMemoryRelayNetwork().peers_of("n"),
        frozenset({"sae-a", "sae-b"}),
        codec=RELAY_CODEC,
    )
    directory = {"sae-a": "n", "sae-b": "n"}
    manager = KeyManager(
        "n",
        ["sae-a", "sae-b"],
        directory,
        relay,
        Router("n"),
        delivered,
        policy=DeliveryPolicy(pool_keys=0),
    )
    server = KeyDeliveryServer(manager, "n", directory, DOMAIN)
    await server.start("127.0.0.1", 0, server_ssl_context(node.ca, node.cert, node.key))
    try:
        yield Kme(f"https://127.0.0.1:{server.port}/api/v1/keys", contexts), delivered
    finally:
        await server.stop()
        await delivered.close()


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    with pytest.raises(OSError, match="No space left"):
        (disk / "probe").write_bytes(b"x")
    return filler


async def test_a_full_disk_gives_503_and_loses_no_key(
    kme: tuple[Kme, DeliveredKeys], small_disk: Path
) -> None:
    api, delivered = kme
    status, container = await api.call("sae-a", "sae-b/enc_keys", {"number": 5})
    assert status == 200
    ids = [{"key_ID": key["key_ID"]} for key in container["keys"]]
    await delivered.run(lambda db: db.checkpoint())  # the WAL is empty: any write needs room
    filler = _fill(small_disk)

    status, answer = await api.call("sae-b", "sae-a/dec_keys", {"key_IDs": ids})
    assert (status, answer["message"]) == (503, "the KME's key store cannot be used now; try again")
    status, answer = await api.call("sae-a", "sae-b/enc_keys", {"number": 1})
    assert status == 503

    filler.unlink()
    status, answer = await api.call("sae-b", "sae-a/dec_keys", {"key_IDs": ids})
    assert status == 200
    assert answer["keys"] == container["keys"]  # the very keys the master got, none lost


async def test_a_locked_database_gives_503_and_loses_no_key(
    kme: tuple[Kme, DeliveredKeys], small_disk: Path
) -> None:
    api, _ = kme
    status, container = await api.call("sae-a", "sae-b/enc_keys", {"number": 3})
    assert status == 200
    ids = [{"key_ID": key["key_ID"]} for key in container["keys"]]
    # Another process (a backup, an operator's sqlite3 shell) holds the write lock.
    other = sqlite3.connect(small_disk / "delivered_keys.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        status, answer = await api.call("sae-b", "sae-a/dec_keys", {"key_IDs": ids})
        assert status == 503
    finally:
        other.execute("ROLLBACK")
        other.close()
    status, answer = await api.call("sae-b", "sae-a/dec_keys", {"key_IDs": ids})
    assert status == 200
    assert answer["keys"] == container["keys"]
