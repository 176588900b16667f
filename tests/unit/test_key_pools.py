"""Key pools of the KME: refills, and keys going back to a pool when a relay fails.

The key manager runs on its real store (SQLite) and router; the relay to the other node is a
stand-in that stores nothing, answering or failing as each test says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qkdnet.node.delivered_keys import DeliveredKeys
from qkdnet.node.errors import RelayError
from qkdnet.node.key_manager import DeliveryPolicy, KeyLimits, KeyManager
from qkdnet.node.relay import RelayCounters
from qkdnet.node.routing import Router
from qkdnet.v1 import relay_pb2

POOL, BATCH = 8, 4


class StandInRelay:
    """Acknowledges every relay at once, except one of `hold_keys` keys: that one waits for
    `release` and then fails, as a relay through a node that went down would."""

    def __init__(self) -> None:
        self.counters = RelayCounters()
        self.hold_keys: int | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def relay(self, route: list[str], payload: relay_pb2.RelayPayload) -> relay_pb2.RelayAck:
        if len(payload.key_uuids) // 16 == self.hold_keys:
            self.holding.set()
            await self.release.wait()
            raise RelayError(f"{route[1]} did not answer", reason="unreachable")
        return relay_pb2.RelayAck(
            transaction_id=payload.transaction_id, route=route, hop_micros=[100] * len(route)
        )

    async def settle(self, target: str, transaction_id: str, commit: bool) -> int:
        return 0


def _router() -> Router:
    router = Router("a")
    for origin, peer in (("a", "b"), ("b", "a")):
        router.accept(
            relay_pb2.LinkStateAdvert(
                origin=origin,
                sequence=1,
                links=[relay_pb2.LinkState(peer=peer, up=True, bits_out=1 << 24, bits_in=1 << 24)],
                saes=[f"sae-{origin}"],
            )
        )
    return router


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
        DeliveryPolicy(pool_keys=POOL, pool_batch=BATCH),
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
