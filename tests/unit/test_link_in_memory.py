"""The whole link, sifting to privacy amplification with Cascade, between two ends joined in
memory (qkdnet.node.testing): no socket, no process, real key stores and authentication."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.config import LinkConfig
from qkdnet.node.edge.link_codec import LINK_CODEC
from qkdnet.node.link_secret import PreSharedSecret
from qkdnet.node.protocol.authentication import LinkAuthenticator
from qkdnet.node.protocol.clock import SYSTEM_CLOCK, Clock
from qkdnet.node.protocol.receiver import ReceiverLink
from qkdnet.node.protocol.transmitter import TransmitterLink
from qkdnet.node.store.key_store import KeyStore, KeyStoreDb
from qkdnet.node.testing import (
    Duplicate,
    FakeClock,
    InMemoryLink,
    Lose,
    MessageFilter,
    Reorder,
    Tamper,
    chain,
)


@dataclass
class Ends:
    transmitter: TransmitterLink
    receiver: ReceiverLink
    connector: InMemoryLink
    stores: tuple[KeyStore, KeyStore]
    running: asyncio.Task[None]

    async def stop(self) -> None:
        """Stop the link (its session ends where it is); the stores stay open."""
        self.running.cancel()
        await asyncio.gather(self.running, return_exceptions=True)


def _config(
    peer: str, psk: Path, channel: dict[str, Any] | None = None, **processing: Any
) -> LinkConfig:
    return LinkConfig.model_validate(
        {
            "peer": peer,
            "psk_file": str(psk),
            "channel": {"length_km": 10, **(channel or {})},
            "processing": {"frame_bits": 20_000, "speedup": 1e6, "seed": 7, **processing},
        }
    )


@asynccontextmanager
async def _link(
    tmp_path: Path,
    message_filter: MessageFilter | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    delay_s: float = 0.0,
    channel: dict[str, Any] | None = None,
    **processing: Any,
) -> AsyncIterator[Ends]:
    psk = PreSharedSecret.generate()
    a_store = await KeyStore.open(tmp_path / "a.sqlite")
    b_store = await KeyStore.open(tmp_path / "b.sqlite")
    with ThreadPoolExecutor(2) as executor:
        receiver = ReceiverLink(
            node_id="b",
            config=_config("a", tmp_path / "psk", channel, **processing),
            store=b_store,
            auth=await LinkAuthenticator.load(b_store, psk, 1, LINK_CODEC),
            message_timeout_s=1.0,
            executor=executor,
        )
        connector = InMemoryLink(receiver, message_filter, delay_s=delay_s)
        transmitter = TransmitterLink(
            node_id="a",
            config=_config("b", tmp_path / "psk", channel, **processing),
            store=a_store,
            auth=await LinkAuthenticator.load(a_store, psk, 0, LINK_CODEC),
            clock=clock,
            message_timeout_s=1.0,
            executor=executor,
            connector=connector,
        )
        running = asyncio.create_task(transmitter.run())
        try:
            yield Ends(transmitter, receiver, connector, (a_store, b_store), running)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            for store in (a_store, b_store):
                await store.close()


async def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until `condition` holds (link statistics have no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def _ready_blocks(store: KeyStore, *, pending: bool = False) -> dict[str, str]:
    """Block ID -> a keyed digest of its key, for the blocks an end holds as ready (and, with
    `pending`, those it holds as pending too)."""
    nonce = b"\0" * 16
    digests = await store.run(lambda db: KeyStoreDb.digests(db, nonce))
    return {d.block_id: d.digest.hex() for d in digests if pending or not d.pending}


async def test_two_ends_in_memory_distil_identical_key(tmp_path: Path) -> None:
    async with _link(tmp_path) as ends:
        await _until(lambda: ends.receiver.stats.frames_ok >= 3)
        await _until(lambda: ends.transmitter.stats.frames_ok >= 3)
        await asyncio.sleep(0.05)  # the transmitter marks the last block ready on Stored
        a, b = [await _ready_blocks(store) for store in ends.stores]
    assert len(a) >= 3
    common = set(a) & set(b)
    assert len(common) >= 3
    assert all(a[block] == b[block] for block in common)
    stats = ends.transmitter.stats
    assert stats.secret_bits > 0
    assert 0.0 < stats.last_sample_errors / max(stats.last_sample_bits, 1) < 0.11
    assert ends.connector.sessions == 1


async def test_a_full_store_pauses_distilling_with_the_link_up(tmp_path: Path) -> None:
    async with _link(tmp_path, store_max_bits=100_000) as ends:
        await _until(lambda: ends.transmitter.stats.state == "full")
        frames = ends.transmitter.stats.frames_ok
        await asyncio.sleep(0.5)
        assert ends.transmitter.stats.frames_ok <= frames + 3  # the frames in flight land
        assert ends.transmitter.stats.store.bits >= 100_000
        assert ends.connector.sessions == 1  # the session stays up: the link serves relays


async def _recovers_with_equal_stores(ends: Ends) -> None:
    """The session the fault ended is followed by another, key flows on, and both ends hold
    the same blocks: nothing of a frame in flight was kept at one end only."""
    await _until(lambda: ends.connector.sessions >= 2)
    await _until(lambda: ends.receiver.stats.frames_ok >= 2)
    await asyncio.sleep(0.05)
    a, b = [await _ready_blocks(store) for store in ends.stores]
    common = set(a) & set(b)
    assert common
    assert all(a[block] == b[block] for block in common)


# What a receiver may call a tampered message: a changed body fails to parse or its tag.
EXPECTED_REASONS = {
    "bad_tag": {"bad_tag"},
    "replay": {"replay"},
    "truncate": {"malformed", "bad_tag"},
    "garble": {"malformed", "bad_tag"},
}


def _events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of every `event` the link ends logged (structured_log.log_event)."""
    return [
        getattr(record, "fields", {}) for record in caplog.records if record.getMessage() == event
    ]


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
async def test_a_tampered_commit_is_refused_and_nothing_of_its_round_is_kept(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Amplification is the commit: had the receiver accepted a changed one, it would have
    stored the block. It refuses it, counts and logs why; the transmitter's pending copy is
    discarded when the next session settles, and key flows on with equal stores."""
    caplog.set_level(logging.INFO)
    async with _link(tmp_path, Tamper(kind, payload="amplification")) as ends:
        await _until(lambda: sum(ends.receiver.stats.rejected.values()) >= 1)
        assert set(ends.receiver.stats.rejected) <= EXPECTED_REASONS[kind]
        after = ends.transmitter.stats.frames_ok
        await _until(lambda: ends.transmitter.stats.frames_ok >= after + 2)
        await _recovers_with_equal_stores(ends)
        await ends.stop()
        alice = await _ready_blocks(ends.stores[0], pending=True)
        bob = await _ready_blocks(ends.stores[1])
    rejected = _events(caplog, "message_rejected")
    assert rejected
    assert rejected[0]["reason"] in EXPECTED_REASONS[kind]
    settled = _events(caplog, "pending_settled")
    assert settled
    assert settled[0]["discarded"] == 1, "the tampered block was not discarded"
    assert set(bob) <= set(alice)  # nothing at the receiver only
    assert len(set(alice) - set(bob)) <= 1  # at most the frame in flight when it stopped


async def test_tampered_mid_round_messages_end_only_their_session(tmp_path: Path) -> None:
    """A wrong tag on a Cascade answer (to the receiver), then a replay in place of Stored (to
    the transmitter): each end refuses what it got, each session ends, and the link goes on."""
    tampering = chain(
        Tamper("bad_tag", payload="parity_reply"),
        Tamper("replay", payload="stored", direction="to_transmitter"),
    )
    async with _link(tmp_path, tampering) as ends:
        await _until(lambda: ends.receiver.stats.rejected["bad_tag"] >= 1)
        await _until(lambda: ends.transmitter.stats.rejected["replay"] >= 1)
        after = ends.transmitter.stats.frames_ok
        await _until(lambda: ends.transmitter.stats.frames_ok >= after + 1)
        await _recovers_with_equal_stores(ends)
    assert ends.connector.sessions >= 3


async def test_a_duplicated_message_is_refused_as_a_replay(tmp_path: Path) -> None:
    async with _link(tmp_path, Duplicate(payload="estimation", direction="to_transmitter")) as ends:
        await _recovers_with_equal_stores(ends)
    assert ends.transmitter.stats.rejected["replay"] == 1


async def test_a_message_overtaken_ends_the_session_cleanly(tmp_path: Path) -> None:
    # The ends take turns (each message waits for the answer to the one before), so a
    # message held back for the next one in its direction arrives only after the peer gave
    # up waiting: the session ends on the timeout and the next settles the block in flight.
    async with _link(tmp_path, Reorder(payload="stored", direction="to_transmitter")) as ends:
        await _recovers_with_equal_stores(ends)
    assert ends.transmitter.stats.frames_ok >= 1


async def test_a_lost_message_times_out_and_nothing_is_kept_at_one_end(tmp_path: Path) -> None:
    # The receiver's Stored is lost: it holds the block, the transmitter holds it as pending;
    # the next session's Hello settles it, so both hold it (or neither).
    async with _link(tmp_path, Lose(payload="stored", direction="to_transmitter")) as ends:
        await _recovers_with_equal_stores(ends)
        assert ends.transmitter.stats.frames_ok >= 1


async def test_a_slow_classical_channel_only_slows_the_link(tmp_path: Path) -> None:
    async with _link(tmp_path, delay_s=0.01) as ends:
        await _until(lambda: ends.transmitter.stats.frames_ok >= 2)
        assert ends.connector.sessions == 1
        assert not ends.connector.ended


async def test_an_eavesdropped_link_backs_off_on_the_clock(tmp_path: Path) -> None:
    """With an intercept-resend attacker on every pulse every round aborts on its QBER; after
    three at full speed the transmitter pauses before each next round, twice as long each time
    (0.1, 0.2, 0.4 s ...), so that it lasts on its pads: seen on a fake clock, at once."""
    clock = FakeClock()
    async with _link(
        tmp_path, clock=clock, channel={"eavesdrop_fraction": 1.0}, frame_bits=4_000
    ) as ends:
        await _until(lambda: ends.transmitter.stats.frames_aborted >= 7)
    pauses = [s for s in clock.slept if s >= 0.1 - 1e-9]
    assert pauses[:3] == pytest.approx([0.1, 0.2, 0.4])
    assert ends.transmitter.stats.aborts["qber"] >= 7
    assert ends.transmitter.stats.frames_ok == 0


def test_the_doubles_need_no_socket() -> None:
    """The in-memory tier opens no socket: the doubles import no networking at all."""
    import subprocess
    import sys

    probe = (
        "import sys, qkdnet.node.testing\n"
        "print(' '.join(m for m in ('grpc', 'aiohttp', 'aiomqtt') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env=os.environ,
    )  # fmt: skip
    assert result.stdout.split() == []
