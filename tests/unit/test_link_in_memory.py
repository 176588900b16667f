"""The whole link, sifting to privacy amplification with Cascade, between two ends joined in
memory (qkdnet.node.testing): no socket, no process, real key stores and authentication."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.config import LinkConfig
from qkdnet.node.protocol.authentication import LinkAuthenticator, PreSharedSecret
from qkdnet.node.protocol.link import ReceiverLink, TransmitterLink
from qkdnet.node.store.key_store import KeyStore, KeyStoreDb
from qkdnet.node.testing import Direction, InMemoryLink, MessageFilter
from qkdnet.v1 import link_pb2


@dataclass
class Ends:
    transmitter: TransmitterLink
    receiver: ReceiverLink
    connector: InMemoryLink
    stores: tuple[KeyStore, KeyStore]


def _config(peer: str, psk: Path, **processing: Any) -> LinkConfig:
    return LinkConfig.model_validate(
        {
            "peer": peer,
            "psk_file": str(psk),
            "channel": {"length_km": 10},
            "processing": {"frame_bits": 20_000, "speedup": 1e6, "seed": 7, **processing},
        }
    )


@asynccontextmanager
async def _link(
    tmp_path: Path, message_filter: MessageFilter | None = None, **processing: Any
) -> AsyncIterator[Ends]:
    psk = PreSharedSecret.generate()
    a_store = await KeyStore.open(tmp_path / "a.sqlite")
    b_store = await KeyStore.open(tmp_path / "b.sqlite")
    with ThreadPoolExecutor(2) as executor:
        receiver = ReceiverLink(
            node_id="b",
            config=_config("a", tmp_path / "psk", **processing),
            store=b_store,
            auth=await LinkAuthenticator.load(b_store, psk, 1),
            executor=executor,
        )
        connector = InMemoryLink(receiver, message_filter)
        transmitter = TransmitterLink(
            node_id="a",
            config=_config("b", tmp_path / "psk", **processing),
            store=a_store,
            auth=await LinkAuthenticator.load(a_store, psk, 0),
            executor=executor,
            connector=connector,
        )
        running = asyncio.create_task(transmitter.run())
        try:
            yield Ends(transmitter, receiver, connector, (a_store, b_store))
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


async def _ready_blocks(store: KeyStore) -> dict[str, str]:
    """Block ID -> a keyed digest of its key, for the blocks an end holds as ready."""
    nonce = b"\0" * 16
    digests = await store.run(lambda db: KeyStoreDb.digests(db, nonce))
    return {d.block_id: d.digest.hex() for d in digests if not d.pending}


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


def _tamper_once(kind: str) -> MessageFilter:
    """Change the first SiftReply the transmitter sends: a flipped tag bit, or the message
    before it sent again in its place (a replay)."""
    state: dict[str, Any] = {"done": False, "previous": None}

    def tamper(direction: Direction, message: Any) -> Sequence[Any]:
        if direction != "to_receiver" or state["done"]:
            state["previous"] = message if direction == "to_receiver" else state["previous"]
            return [message]
        body = link_pb2.ClassicalMessage()
        body.ParseFromString(message.body)
        if body.WhichOneof("payload") != "sift_reply":
            state["previous"] = message
            return [message]
        state["done"] = True
        if kind == "bad_tag":
            tag = bytearray(message.tag)
            tag[0] ^= 0x01
            return [link_pb2.Envelope(body=message.body, tag=bytes(tag))]
        return [state["previous"]]

    return tamper


@pytest.mark.parametrize("kind", ["bad_tag", "replay"])
async def test_a_tampered_message_is_refused_and_the_stores_stay_equal(
    tmp_path: Path, kind: str
) -> None:
    async with _link(tmp_path, _tamper_once(kind)) as ends:
        await _until(lambda: ends.receiver.stats.rejected[kind] == 1)
        # The session ended there; the transmitter connects again and key flows on.
        await _until(lambda: ends.receiver.stats.frames_ok >= 2 and ends.connector.sessions >= 2)
        await asyncio.sleep(0.05)
        a, b = [await _ready_blocks(store) for store in ends.stores]
    assert ends.connector.ended[0] is not None
    assert kind in str(ends.connector.ended[0]) or ends.receiver.stats.rejected[kind] == 1
    common = set(a) & set(b)
    assert common
    assert all(a[block] == b[block] for block in common)


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
