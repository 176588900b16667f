"""The key store cap: a link stops distilling when its store is full and goes on once
applications have taken key; nothing stored is discarded."""

from __future__ import annotations

import asyncio

import pytest

from qkdnet.node.store.key_store import KeyStoreDb
from qkdnet.orchestrator.cli.link_demo import RECEIVER, TRANSMITTER, LinkPair
from qkdnet.orchestrator.client.controller import compare_link_stores

from .conftest import PairFactory
from .test_link_keys import wait_for

pytestmark = pytest.mark.integration

CAP = 100_000


def _take(pair: LinkPair, nbits: int) -> None:
    """Consume `nbits` at both ends, as a relay does (from the test process, beside the nodes)."""
    transmitter = KeyStoreDb(pair.store_path(TRANSMITTER))
    receiver = KeyStoreDb(pair.store_path(RECEIVER))
    try:
        ranges, bits = transmitter.take_next(nbits)
        assert receiver.take_ranges(ranges) == bits
    finally:
        transmitter.close()
        receiver.close()


async def test_the_store_stops_at_its_cap_and_resumes_when_key_is_taken(
    link_pair: PairFactory,
) -> None:
    pair = link_pair(store_max_bits=CAP)
    await pair.start()
    await wait_for(pair, lambda s: s.store_bits >= CAP, timeout=180)
    await asyncio.sleep(3)  # the frames in flight land
    full = await pair.status()
    await asyncio.sleep(5)
    still = await pair.status()
    assert still.frames_ok == full.frames_ok, "distilled on with a full store"
    assert still.store_bits == full.store_bits
    assert still.state == "full"  # the session stays up: the link serves relays
    per_frame = full.secret_bits / full.frames_ok
    assert CAP <= full.store_bits <= CAP + 4 * per_frame  # three frames in flight at most
    # Applications take key: below seven eighths of the cap the link distils again, up to the cap.
    await asyncio.to_thread(_take, pair, full.store_bits - CAP // 2)
    await wait_for(pair, lambda s: s.frames_ok > full.frames_ok, timeout=60)
    refilled = await wait_for(pair, lambda s: s.store_bits >= CAP, timeout=180)
    assert refilled.store_bits <= CAP + 4 * per_frame
    comparison = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert comparison.match, comparison.detail
    receiver = await pair.status(RECEIVER)
    assert receiver.state == "running"


async def test_a_receiver_restarted_while_the_store_is_full_is_served_again(
    link_pair: PairFactory,
) -> None:
    # The transmitter of a full link sends nothing; it must still notice that its session died
    # with the receiver, or the restarted receiver waits for a session that never comes and
    # reports the link down to routing, and no relay can draw on the full store to drain it.
    pair = link_pair(store_max_bits=CAP)
    await pair.start()
    await wait_for(pair, lambda s: s.state == "full", timeout=180)
    await pair.stop(RECEIVER)
    await pair.start(RECEIVER)
    await wait_for(pair, lambda s: s.state == "running", timeout=60, node=RECEIVER)
    assert (await pair.status()).state == "full"
