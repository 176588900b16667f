"""The external-KME link kind in memory: two ends, a pair of in-memory KMEs, no photons.

Both ends store the same key, drawn from the KMEs by ID; a KME that fails or returns keys that
are not what was asked for ends the session as a `key_source` fault the transmitter shows,
nothing is stored at one end only, and the link picks up again once the KME is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from qkdnet.node.config import LinkConfig
from qkdnet.node.edge.link_codec import LINK_CODEC
from qkdnet.node.link_secret import PreSharedSecret
from qkdnet.node.protocol.authentication import LinkAuthenticator
from qkdnet.node.protocol.external_kme_link import ExternalKmeReceiver, ExternalKmeTransmitter
from qkdnet.node.store.key_store import KeyStore
from qkdnet.node.testing import InMemoryKmePair, InMemoryLink

pytestmark = pytest.mark.timeout(30)


def _config(peer: str, tmp_path: Path) -> LinkConfig:
    return LinkConfig.model_validate(
        {
            "peer": peer,
            "kind": "external-kme",
            "psk_file": str(tmp_path / "psk"),
            "channel": {"length_km": 40},
            "external_kme": {
                "url": "https://kme.example:443",
                "sae_id": f"sae-{peer}",
                "peer_sae_id": "sae-other",
                "ca": "ca.pem",
                "cert": "cert.pem",
                "key": "key.pem",
                "keys_per_pull": 4,
                "key_bits": 256,
                "pull_interval_s": 0.01,
            },
        }
    )


@asynccontextmanager
async def _link(
    tmp_path: Path, kmes: InMemoryKmePair
) -> AsyncIterator[tuple[ExternalKmeTransmitter, ExternalKmeReceiver, list[KeyStore]]]:
    psk = PreSharedSecret.generate()
    stores = [await KeyStore.open(tmp_path / f"{end}.sqlite") for end in "ab"]
    with ThreadPoolExecutor(1) as executor:
        receiver = ExternalKmeReceiver(
            node_id="b",
            config=_config("a", tmp_path),
            store=stores[1],
            auth=await LinkAuthenticator.load(stores[1], psk, 1, LINK_CODEC),
            executor=executor,
            message_timeout_s=1.0,
            key_source=kmes.end("b"),
        )
        transmitter = ExternalKmeTransmitter(
            node_id="a",
            config=_config("b", tmp_path),
            store=stores[0],
            auth=await LinkAuthenticator.load(stores[0], psk, 0, LINK_CODEC),
            executor=executor,
            message_timeout_s=1.0,
            connector=InMemoryLink(receiver),
            key_source=kmes.end("a"),
        )
        running = asyncio.create_task(transmitter.run())
        try:
            yield transmitter, receiver, stores
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            for end in (transmitter, receiver):
                await end.key_source.close()  # the stores stay open for the test to read


async def _same_blocks(stores: list[KeyStore]) -> None:
    """Every block the receiver stored is the transmitter's, bit for bit; the transmitter holds
    no other block but pending ones (they settle at the next Hello); then close the stores."""
    nonce = b"n" * 16
    tx, rx = [
        {d.block_id: d for d in await store.run(lambda db: db.digests(nonce))} for store in stores
    ]
    assert rx
    for block_id, digest in rx.items():
        assert tx[block_id].digest == digest.digest
    assert all(d.pending for block_id, d in tx.items() if block_id not in rx)
    for store in stores:
        await store.close()


async def _until(check: Callable[[], bool], *, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (a condition on statistics: polled)
            await asyncio.sleep(0.01)


async def test_both_ends_store_the_keys_the_kmes_share_and_no_photon(tmp_path: Path) -> None:
    kmes = InMemoryKmePair()
    async with _link(tmp_path, kmes) as (tx, rx, stores):
        await _until(lambda: rx.stats.frames_ok >= 3)
        await _until(lambda: tx.stats.frames_ok >= 3)
        assert tx.stats.pulses == 0
        assert rx.stats.pulses == 0
        assert tx.stats.source == "in-memory KME a"
        assert ("a", "enc_keys") in kmes.calls
        assert ("b", "dec_keys") in kmes.calls
        # Each block: 4 keys of 256 bits, 4 pads of 64 bits each way refilled from it.
        assert tx.stats.secret_bits == tx.stats.frames_ok * (4 * 256 - 512)
    await _same_blocks(stores)


@pytest.mark.parametrize(
    ("side", "fault", "expected"),
    [
        ("a", "down", "enc_keys at the external KME a: no answer"),
        ("b", "down", "peer aborted: dec_keys at the external KME b: no answer"),
        ("b", "wrong_size", "keys that are not 256 bits long"),
    ],
)
async def test_a_failing_kme_is_a_link_fault_and_the_link_recovers(
    tmp_path: Path, side: str, fault: str, expected: str
) -> None:
    kmes = InMemoryKmePair()
    async with _link(tmp_path, kmes) as (tx, _, stores):
        await _until(lambda: tx.stats.frames_ok >= 1)
        getattr(kmes, fault).add(side)
        await _until(lambda: expected in tx.stats.last_fault)
        assert tx.stats.state != "running"
        getattr(kmes, fault).discard(side)
        done = tx.stats.frames_ok
        await _until(lambda: tx.stats.frames_ok > done + 1 and tx.stats.state == "running")
    await _same_blocks(stores)
