"""The pqc-bridge link kind in memory: both ends store the same blocks from ML-KEM-768
exchanges, no photon, and a session cut between the exchange and the commit leaves the block at
neither end once the next session's Hello has settled it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from qkdnet.node.config import LinkConfig
from qkdnet.node.core.pqc_kem import Decapsulator, encapsulate, expand
from qkdnet.node.edge.link_codec import LINK_CODEC
from qkdnet.node.link_secret import PreSharedSecret
from qkdnet.node.protocol.authentication import LinkAuthenticator
from qkdnet.node.protocol.pqc_bridge_link import SOURCE, PqcBridgeReceiver, PqcBridgeTransmitter
from qkdnet.node.store.key_store import KeyStore
from qkdnet.node.testing import InMemoryLink, Lose, MessageFilter

pytestmark = pytest.mark.timeout(30)


def _config(peer: str, tmp_path: Path) -> LinkConfig:
    return LinkConfig.model_validate(
        {
            "peer": peer,
            "kind": "pqc-bridge",
            "psk_file": str(tmp_path / "psk"),
            "channel": {"length_km": 300},
            "pqc_bridge": {"block_bits": 4096, "interval_s": 0.01},
        }
    )


@asynccontextmanager
async def _link(
    tmp_path: Path, message_filter: MessageFilter | None = None
) -> AsyncIterator[tuple[PqcBridgeTransmitter, PqcBridgeReceiver, list[KeyStore]]]:
    psk = PreSharedSecret.generate()
    stores = [await KeyStore.open(tmp_path / f"{end}.sqlite") for end in "ab"]
    with ThreadPoolExecutor(1) as executor:
        receiver = PqcBridgeReceiver(
            node_id="b",
            config=_config("a", tmp_path),
            store=stores[1],
            auth=await LinkAuthenticator.load(stores[1], psk, 1, LINK_CODEC),
            executor=executor,
            message_timeout_s=1.0,
        )
        transmitter = PqcBridgeTransmitter(
            node_id="a",
            config=_config("b", tmp_path),
            store=stores[0],
            auth=await LinkAuthenticator.load(stores[0], psk, 0, LINK_CODEC),
            executor=executor,
            message_timeout_s=1.0,
            connector=InMemoryLink(receiver, message_filter),
        )
        running = asyncio.create_task(transmitter.run())
        try:
            yield transmitter, receiver, stores
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


async def _until(check: Callable[[], bool], *, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (a condition on statistics: polled)
            await asyncio.sleep(0.01)


async def _blocks(stores: list[KeyStore]) -> tuple[dict[str, bytes], dict[str, bytes]]:
    nonce = b"n" * 16
    tx, rx = [
        {d.block_id: (d.digest, d.pending) for d in await s.run(lambda db: db.digests(nonce))}
        for s in stores
    ]
    for store in stores:
        await store.close()
    return tx, rx  # type: ignore[return-value]


def test_the_exchange_gives_both_ends_the_same_secret_and_distinct_blocks() -> None:
    pair = Decapsulator()
    secret, ciphertext = encapsulate(pair.public_key)
    assert pair.open(ciphertext) == secret
    assert len(pair.public_key) == 1184
    assert len(ciphertext) == 1088
    one, two = expand(secret, "l|b1", 4096), expand(secret, "l|b2", 4096)
    assert one.size == 4096
    assert (one != two).any()
    with pytest.raises(ValueError, match="1184 bytes"):
        encapsulate(b"short")


async def test_both_ends_store_the_same_blocks_and_no_photon(tmp_path: Path) -> None:
    async with _link(tmp_path) as (tx, rx, stores):
        await _until(lambda: rx.stats.frames_ok >= 3 and tx.stats.frames_ok >= 3)
        assert tx.stats.pulses == rx.stats.pulses == 0
        assert tx.stats.source == SOURCE
        assert tx.stats.secret_bits == tx.stats.frames_ok * (4096 - 512)
    tx_blocks, rx_blocks = await _blocks(stores)
    assert rx_blocks
    for block_id, (digest, _) in rx_blocks.items():
        assert tx_blocks[block_id][0] == digest
    assert all(pending for b, (_, pending) in tx_blocks.items() if b not in rx_blocks)


async def test_a_lost_commit_leaves_no_block_at_one_end(tmp_path: Path) -> None:
    """The first commit is lost: that session ends, the next Hello drops the transmitter's
    pending block (the receiver never stored it), and key flows again."""
    async with _link(tmp_path, Lose("kem_commit", count=1)) as (tx, rx, stores):
        await _until(lambda: rx.stats.frames_ok >= 2 and tx.stats.frames_ok >= 2)
    tx_blocks, rx_blocks = await _blocks(stores)
    assert set(rx_blocks) <= set(tx_blocks)
    confirmed = {b for b, (_, pending) in tx_blocks.items() if not pending}
    assert confirmed <= set(rx_blocks)
    assert tx.stats.frames_ok >= 2
    assert tx.stats.last_fault  # the session did end over the lost commit
