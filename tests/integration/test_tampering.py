"""Tampered classical messages are refused, logged and counted; nothing of the round is stored."""

from __future__ import annotations

import json

import pytest

from qkdnet.orchestrator.cli.link_demo import RECEIVER, TRANSMITTER
from qkdnet.orchestrator.client.controller import compare_link_stores

from .conftest import PairFactory
from .test_link_keys import read_blocks, wait_for

pytestmark = pytest.mark.integration

EXPECTED_REASONS = {
    "bad_tag": {"bad_tag"},
    "replay": {"replay"},
    "truncate": {"malformed", "bad_tag"},
    "garble": {"malformed", "bad_tag"},
}


def log_events(path: object, event: str) -> list[dict[str, object]]:
    assert hasattr(path, "read_text")
    found = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
async def test_tampered_commit_is_refused_and_link_recovers(
    link_pair: PairFactory, kind: str
) -> None:
    pair = link_pair()
    await pair.start()
    await wait_for(pair, lambda s: s.frames_ok >= 1)
    # Tamper with the commit message: had it been accepted, the receiver would store the block.
    await pair.clients[TRANSMITTER].inject_fault(pair.link_id, kind, "amplification")
    rejected = await wait_for(pair, lambda s: sum(s.rejected_messages.values()) >= 1, node=RECEIVER)
    assert set(rejected.rejected_messages) <= EXPECTED_REASONS[kind]
    after = (await pair.status()).frames_ok
    await wait_for(pair, lambda s: s.frames_ok >= after + 2)
    comparison = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert comparison.match, comparison.detail
    await pair.stop()

    rejections = log_events(pair.nodes[RECEIVER].log_path, "message_rejected")
    assert rejections
    assert rejections[0]["reason"] in EXPECTED_REASONS[kind]
    settled = log_events(pair.nodes[TRANSMITTER].log_path, "pending_settled")
    assert settled
    assert settled[0]["discarded"] == 1, "the tampered block was not discarded"
    alice = read_blocks(pair.store_path(TRANSMITTER))
    bob = read_blocks(pair.store_path(RECEIVER))
    assert set(bob) <= set(alice)
    assert len(set(alice) - set(bob)) <= 1  # at most the frame in flight at shutdown
    for block_id, value in bob.items():
        assert alice[block_id][1:] == value[1:]


async def test_tampered_mid_round_message_aborts_session_only(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start()
    await wait_for(pair, lambda s: s.frames_ok >= 1)
    await pair.clients[TRANSMITTER].inject_fault(pair.link_id, "bad_tag", "parity_reply")
    await wait_for(pair, lambda s: s.rejected_messages.get("bad_tag", 0) >= 1, node=RECEIVER)
    after = (await pair.status()).frames_ok
    await wait_for(pair, lambda s: s.frames_ok >= after + 1)
    # The receiver side may tamper too: the transmitter refuses and counts it.
    await pair.clients[RECEIVER].inject_fault(pair.link_id, "replay", "stored")
    await wait_for(pair, lambda s: s.rejected_messages.get("replay", 0) >= 1)
    after = (await pair.status()).frames_ok
    await wait_for(pair, lambda s: s.frames_ok >= after + 1)
    comparison = await compare_link_stores(
        pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
    )
    assert comparison.match, comparison.detail
