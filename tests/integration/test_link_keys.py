"""Two real node processes distil identical key; stores survive restarts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from qkdnet.orchestrator.cli.link_demo import RECEIVER, TRANSMITTER, LinkPair
from qkdnet.orchestrator.client.controller import compare_link_stores
from qkdnet.v1 import control_pb2

from .conftest import PairFactory

pytestmark = pytest.mark.integration


async def wait_for(
    pair: LinkPair, predicate: object, timeout: float = 90.0, node: str = TRANSMITTER
) -> control_pb2.LinkStatus:
    """Poll the node's link status until predicate(status) holds."""
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await pair.status(node)
        if predicate(status):
            return status
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s; last status: {status}")
        await asyncio.sleep(0.25)


def read_blocks(path: Path) -> dict[str, tuple[str, int, bytes]]:
    """block_id -> (state, nbits, bits) straight from a stopped node's SQLite store."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT block_id, state, nbits, bits FROM blocks").fetchall()
    finally:
        db.close()
    return {r[0]: (r[1], int(r[2]), bytes(r[3])) for r in rows}


async def test_both_stores_hold_identical_key(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start()
    await wait_for(pair, lambda s: s.frames_ok >= 4)
    live = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert live.match, live.detail
    await pair.stop()

    alice = read_blocks(pair.store_path(TRANSMITTER))
    bob = read_blocks(pair.store_path(RECEIVER))
    # The transmitter stores first (pending) and confirms on the receiver's acknowledgement, so
    # its ready blocks are exactly the receiver's blocks, plus at most one frame in flight.
    ready_alice = {k for k, v in alice.items() if v[0] == "ready"}
    assert set(bob) >= ready_alice
    assert set(bob) - set(alice) == set()
    assert len(set(alice) - set(bob)) <= 1
    assert len(bob) >= 4
    total_bits = 0
    ones = 0
    for block_id, (state, nbits, bits) in bob.items():
        assert state == "ready"
        assert alice[block_id][1:] == (nbits, bits), f"{block_id} differs"
        total_bits += nbits
        ones += int.from_bytes(bits, "big").bit_count()
    contents = [v[2] for v in bob.values()]
    assert len(set(contents)) == len(contents), "two blocks hold the same key"
    assert total_bits > 10_000
    # Balanced: within 5 standard deviations of one half.
    assert abs(ones / total_bits - 0.5) < 5 * 0.5 / total_bits**0.5


async def test_restart_keeps_key_and_resumes(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start()
    await wait_for(pair, lambda s: s.frames_ok >= 2)
    await pair.stop(RECEIVER)
    await pair.stop(TRANSMITTER)
    before = read_blocks(pair.store_path(RECEIVER))
    assert before
    await pair.start(RECEIVER)
    await pair.start(TRANSMITTER)
    status = await wait_for(pair, lambda s: s.frames_ok >= 2)
    assert status.store_bits >= sum(v[1] for v in before.values())
    comparison = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert comparison.match, comparison.detail
    await pair.stop()
    after = read_blocks(pair.store_path(RECEIVER))
    for block_id, value in before.items():
        assert after[block_id] == value, "a block changed across the restart"
    assert len(after) > len(before)


async def test_receiver_restart_mid_run_link_recovers(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start()
    await wait_for(pair, lambda s: s.frames_ok >= 1)
    await pair.stop(RECEIVER)
    await pair.start(RECEIVER)
    first = (await pair.status()).frames_ok
    await wait_for(pair, lambda s: s.frames_ok >= first + 2)
    comparison = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert comparison.match, comparison.detail
