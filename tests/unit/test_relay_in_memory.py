"""Key relay across a five-node chain joined in memory (qkdnet.node.testing): real link stores
and delivered-key stores, one-time pad and Wegman-Carter tag per hop, no socket."""

from __future__ import annotations

import os
import types
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.errors import RelayError
from qkdnet.node.protocol.relay import KeyRelay, link_key_bits
from qkdnet.node.protocol.relay_messages import RelayFrame, RelayPayload
from qkdnet.node.store.delivered_keys import DeliveredKeys, DeliveredKeysDb
from qkdnet.node.store.key_store import KeyStore, KeyStoreDb
from qkdnet.node.testing import InMemoryRelayNetwork, store_same_key

CHAIN = ["a", "r1", "r2", "r3", "b"]
BLOCK_BITS = 64_000


@asynccontextmanager
async def _chain(tmp_path: Path) -> AsyncIterator[tuple[InMemoryRelayNetwork, dict[str, Any]]]:
    """The chain's relays, every link's two stores holding the same key in both directions."""
    network = InMemoryRelayNetwork()
    stores: dict[tuple[str, str], KeyStore] = {}  # (this end, peer) -> this end's store
    async with AsyncExitStack() as stack:
        for x, y in pairwise(CHAIN):
            for end, peer in ((x, y), (y, x)):
                store = await KeyStore.open(tmp_path / f"{end}-{peer}.sqlite")
                stack.push_async_callback(store.close)
                stores[(end, peer)] = store
            await store_same_key([stores[(x, y)], stores[(y, x)]], block_bits=BLOCK_BITS)
        delivered: dict[str, DeliveredKeys] = {}
        for node in CHAIN:
            delivered[node] = await DeliveredKeys.open(tmp_path / f"{node}-delivered.sqlite")
            stack.push_async_callback(delivered[node].close)
            links = {
                peer: types.SimpleNamespace(store=store)
                for (end, peer), store in stores.items()
                if end == node
            }
            saes = frozenset({f"sae-{node}"})
            relay = KeyRelay(
                node,
                links,  # type: ignore[arg-type]
                delivered[node],
                network.peers_of(node),
                saes,
                codec=RELAY_CODEC,
            )
            network.add(relay)
        yield network, {"stores": stores, "delivered": delivered}


def _payload(count: int = 4) -> tuple[RelayPayload, list[str], list[bytes]]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    keys = [os.urandom(32) for _ in range(count)]
    payload = RelayPayload(
        transaction_id=uuid.uuid4().hex,
        origin="a",
        master_sae="sae-a",
        slave_saes=("sae-b",),
        target_saes=("sae-b",),
        key_bits=256,
        key_uuids=b"".join(uuid.UUID(i).bytes for i in ids),
        keys=b"".join(keys),
    )
    return payload, ids, keys


async def _available(store: KeyStore) -> int:
    return await store.run(lambda db: KeyStoreDb.available(db))


async def test_keys_cross_the_chain_hop_by_hop_and_arrive_once_settled(tmp_path: Path) -> None:
    async with _chain(tmp_path) as (network, parts):
        payload, ids, keys = _payload()
        ack = await network.relays["a"].relay(CHAIN, payload)
        assert list(ack.route) == CHAIN
        b = parts["delivered"]["b"]
        assert await b.run(lambda db: DeliveredKeysDb.count(db, "sae-a")) == 0  # pending
        assert await network.relays["a"].settle("b", payload.transaction_id, commit=True) == 4
        taken = await b.run(lambda db: db.take("sae-b", "sae-a", ids))
        assert taken == list(zip(ids, keys, strict=True))
        # Every hop spent the same link key at both of its ends, and no more than it needed.
        for x, y in pairwise(CHAIN):
            left = await _available(parts["stores"][(x, y)])
            right = await _available(parts["stores"][(y, x)])
            assert left == right
            assert 4 * BLOCK_BITS - left == link_key_bits(len(payload.keys))
        # The middle nodes only passed the keys on.
        for node in CHAIN[1:-1]:
            assert await parts["delivered"][node].run(lambda db: DeliveredKeysDb.count(db)) == 0


async def test_a_node_down_on_the_route_fails_the_relay_and_stores_nothing(
    tmp_path: Path,
) -> None:
    async with _chain(tmp_path) as (network, parts):
        network.down.add("r2")
        payload, _, _ = _payload()
        with pytest.raises(RelayError) as caught:
            await network.relays["a"].relay(CHAIN, payload)
        assert caught.value.reason == "unreachable"
        assert "r2 did not answer" in str(caught.value)
        # r1 spent (and counted) the link key of the hop that failed; r2 and beyond saw nothing.
        assert network.relays["r1"].counters.wasted_bits == link_key_bits(len(payload.keys))
        assert network.relays["r3"].counters.frames_received == 0
        b = parts["delivered"]["b"]
        assert await network.relays["a"].settle("b", payload.transaction_id, commit=True) == 0
        assert await b.run(lambda db: DeliveredKeysDb.count(db)) == 0


async def test_a_target_that_dies_before_the_settlement_delivers_nothing(
    tmp_path: Path,
) -> None:
    async with _chain(tmp_path) as (network, parts):
        payload, ids, _ = _payload()
        await network.relays["a"].relay(CHAIN, payload)
        network.down.add("b")
        with pytest.raises(RelayError) as caught:
            await network.relays["a"].settle("b", payload.transaction_id, commit=True)
        assert caught.value.reason == "settle_failed"
        network.down.discard("b")
        b = parts["delivered"]["b"]
        with pytest.raises(Exception, match="not found"):
            await b.run(lambda db: db.take("sae-b", "sae-a", ids))  # pending: not deliverable
        # The origin gives the transaction up; only the origin may, never another node.
        with pytest.raises(RelayError, match="settle"):
            await network.relays["r3"].settle("b", payload.transaction_id, commit=True)
        assert await network.relays["a"].settle("b", payload.transaction_id, commit=False) == 4
        assert await b.run(lambda db: DeliveredKeysDb.count(db)) == 0


async def test_a_forged_frame_is_refused_and_burns_no_key(tmp_path: Path) -> None:
    async with _chain(tmp_path) as (network, parts):
        payload, _, _ = _payload()
        before = await _available(parts["stores"][("r1", "a")])
        frame = RelayFrame(
            header=b"\x00" * 8,
            payload=RELAY_CODEC.encode_payload(payload),
            ciphertext=b"",
            tag=b"x",
        )
        with pytest.raises(RelayError):
            await network.peers_of("a").relay("r1", frame)
        assert await _available(parts["stores"][("r1", "a")]) == before
        assert sum(network.relays["r1"].counters.frames_refused.values()) == 1
