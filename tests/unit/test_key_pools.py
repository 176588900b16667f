"""Key pools of the KME: refills, and keys going back to a pool when a relay fails.

The key manager runs on its real store (SQLite) and router; the relay to the other node is a
stand-in that stores nothing, answering or failing as each test says.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qkdnet.node.errors import RelayError
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyLimits, KeyManager
from qkdnet.node.protocol.relay import RelayCounters
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert, RelayAck, RelayPayload
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.delivered_keys import DeliveredKeys, KeyNotFound, NewKeys

POOL, BATCH = 8, 4


class StandInRelay:
    """Acknowledges every relay at once, except one of `hold_keys` keys: that one waits for
    `release` and then fails, as a relay through a node that went down would."""

    def __init__(self) -> None:
        self.counters = RelayCounters()
        self.voided: list[tuple[str, list[str], str]] = []
        self.relayed: dict[str, int] = {}  # transaction ID -> keys
        self.ttls: list[int] = []
        self.hold_keys: int | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def relay(self, route: list[str], payload: RelayPayload) -> RelayAck:
        self.ttls.append(payload.ttl_seconds)
        self.relayed[payload.transaction_id] = len(payload.key_uuids) // 16
        if len(payload.key_uuids) // 16 == self.hold_keys:
            self.holding.set()
            await self.release.wait()
            raise RelayError(f"{route[1]} did not answer", reason="unreachable")
        return RelayAck(
            transaction_id=payload.transaction_id,
            route=tuple(route),
            hop_micros=(100,) * len(route),
        )

    async def settle(self, target: str, transaction_id: str, commit: bool) -> int:
        return self.relayed.get(transaction_id, 0)

    async def void(self, target: str, key_ids: list[str], reason: str) -> int:
        self.voided.append((target, list(key_ids), reason))
        return len(key_ids)


def _router() -> Router:
    router = Router("a")
    for origin, peer in (("a", "b"), ("b", "a")):
        router.accept(
            LinkStateAdvert(
                origin=origin,
                sequence=1,
                links=(LinkState(peer=peer, up=True, bits_out=1 << 24, bits_in=1 << 24),),
                saes=(f"sae-{origin}",),
            )
        )
    return router


TTL_S = 60.0


@pytest.fixture
async def kme(tmp_path: Path) -> AsyncIterator[tuple[KeyManager, StandInRelay, DeliveredKeys]]:
    delivered = await DeliveredKeys.open(tmp_path / "delivered_keys.sqlite")
    relay = StandInRelay()
    manager = KeyManager(
        "a",
        ["sae-a"],
        {"sae-a": "a", "sae-b": "b"},
        relay,  # type: ignore[arg-type]  # the stand-in has what the manager uses
        _router(),
        delivered,
        KeyLimits(),
        DeliveryPolicy(pool_keys=POOL, pool_batch=BATCH, key_ttl_s=TTL_S),
    )
    try:
        yield manager, relay, delivered
    finally:
        await delivered.close()


async def _fill(manager: KeyManager) -> None:
    while await manager.fill_once():
        pass


async def test_pool_fills_to_its_size_in_batches(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, _, _ = kme
    assert await manager.stored_key_count("sae-a", "sae-b") == 0
    assert await manager.fill_once()
    assert await manager.stored_key_count("sae-a", "sae-b") == BATCH
    await _fill(manager)
    assert await manager.stored_key_count("sae-a", "sae-b") == POOL
    # Above its low-water mark a pool is left alone: three keys taken do not start a refill.
    keys, report = await manager.enc_keys("sae-a", ["sae-b"], 3, 256)
    assert (len(keys), report.source, report.pooled) == (3, "pool", 3)
    assert not await manager.fill_once()


async def test_keys_back_from_a_failed_relay_never_overfill_the_pool(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, relay, _ = kme
    await _fill(manager)
    # More than the pool holds: all of it is taken, and the rest is relayed, which hangs...
    relay.hold_keys = 2
    request = asyncio.create_task(manager.enc_keys("sae-a", ["sae-b"], POOL + 2, 256))
    await asyncio.wait_for(relay.holding.wait(), 10)
    assert await manager.stored_key_count("sae-a", "sae-b") == 0
    # ...while the pool looks empty. The keys the request holds may come back, so no refill.
    assert not await manager.fill_once()
    relay.release.set()
    with pytest.raises(RelayError):
        await request
    # They came back, committed at the slave and unused: the pool is full, not over.
    assert await manager.stored_key_count("sae-a", "sae-b") == POOL
    assert not await manager.fill_once()


async def test_a_pool_refills_once_keys_handed_out_are_gone(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, _, _ = kme
    await _fill(manager)
    keys, report = await manager.enc_keys("sae-a", ["sae-b"], POOL + 2, 256)
    assert (len(keys), report.source, report.pooled, report.relayed) == (
        POOL + 2,
        "pool+relay",
        POOL,
        2,
    )
    await _fill(manager)
    assert await manager.stored_key_count("sae-a", "sae-b") == POOL


async def _age_pool(delivered: DeliveredKeys, seconds: float) -> None:
    """Make every pool key `seconds` older (instead of waiting that long)."""
    await delivered.run(
        lambda db: db._db.execute("UPDATE pool SET created = created - ?", (seconds,))
    )


async def test_pool_keys_outlive_neither_their_time_to_live_nor_their_slave_s_copy(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, relay, delivered = kme
    await _fill(manager)
    # The slave's copies live twice the time to live: one in the pool, one to be fetched.
    assert set(relay.ttls) == {2 * TTL_S}
    taken, _ = await manager.enc_keys("sae-a", ["sae-b"], 2, 256)
    await _age_pool(delivered, TTL_S + 1)
    # Too old to hand out: the next request relays afresh...
    assert await manager.stored_key_count("sae-a", "sae-b") == 0
    fresh, report = await manager.enc_keys("sae-a", ["sae-b"], 1, 256)
    assert report.source == "relay"
    assert relay.ttls[-1] == TTL_S  # a key relayed on demand waits one time to live
    # ...and expiry drops them here and withdraws them at the slave's node.
    assert await manager.expire_pools_once() == POOL - 2
    assert relay.voided[-1][0] == "b"
    assert relay.voided[-1][2] == "pool_expired"
    assert len(relay.voided[-1][1]) == POOL - 2
    assert {key_id for key_id, _ in taken + fresh}.isdisjoint(relay.voided[-1][1])
    assert manager.counters.pool_keys_expired == POOL - 2
    assert await delivered.run(lambda db: db.levels().pool) == 0


async def test_keys_a_master_never_got_are_withdrawn_at_the_slave(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, relay, _ = kme
    keys, _ = await manager.enc_keys("sae-a", ["sae-b"], 3, 256, use_pool=False)
    await manager.abandon("sae-a", ["sae-b"], [key_id for key_id, _ in keys])
    assert relay.voided == [("b", [key_id for key_id, _ in keys], "abandoned")]
    assert manager.counters.keys_abandoned == 3


async def test_keys_back_from_a_failed_relay_keep_their_age(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, relay, delivered = kme
    await _fill(manager)
    await _age_pool(delivered, TTL_S - 5)
    relay.hold_keys = 2
    request = asyncio.create_task(manager.enc_keys("sae-a", ["sae-b"], POOL + 2, 256))
    await asyncio.wait_for(relay.holding.wait(), 10)
    relay.release.set()
    with pytest.raises(RelayError):
        await request
    # Back in the pool, as old as they were: a put-back must not restart their clock.
    await _age_pool(delivered, 6)
    assert await manager.stored_key_count("sae-a", "sae-b") == 0


async def test_a_slave_that_hangs_up_before_its_answer_keeps_its_keys(
    kme: tuple[KeyManager, StandInRelay, DeliveredKeys],
) -> None:
    manager, _, delivered = kme
    ids = tuple(str(uuid.uuid4()) for _ in range(2))
    keys = NewKeys("t", "b", "sae-b", ("sae-a",), ("sae-a",), 256, ids, (bytes(32), bytes(32)))
    await delivered.run(lambda db: db.add(keys, pending=False))
    with contextlib.suppress(ConnectionResetError):
        async with manager.dec_keys("sae-a", "sae-b", ids) as handed:
            assert [key_id for key_id, _ in handed] == list(ids)
            # While they are being written, nobody else gets them...
            with pytest.raises(KeyNotFound):
                async with manager.dec_keys("sae-a", "sae-b", ids[:1]):
                    pass
            raise ConnectionResetError("the slave hung up")
    # ...and as the answer was never written, they are still the slave's.
    async with manager.dec_keys("sae-a", "sae-b", ids) as handed:
        assert len(handed) == 2
    with pytest.raises(KeyNotFound):  # written: gone for good
        async with manager.dec_keys("sae-a", "sae-b", ids):
            pass
