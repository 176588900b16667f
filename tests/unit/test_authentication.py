"""Wegman-Carter sealing: round trip, wrong tags, replays, malformed bodies, restarts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qkdnet.node.edge.link_codec import LINK_CODEC
from qkdnet.node.errors import AuthenticationError, ConfigError, ProtocolError
from qkdnet.node.link_secret import PreSharedSecret
from qkdnet.node.protocol.authentication import LinkAuthenticator
from qkdnet.node.protocol.link_messages import ClassicalMessage, Envelope, Stored
from qkdnet.node.store.key_store import KeyStore


def _message(frame: int = 1) -> ClassicalMessage:
    return ClassicalMessage(link_id="a--b", sender="a", frame=frame, payload=Stored(block_id="x"))


async def _pair(tmp_path: Path) -> tuple[LinkAuthenticator, LinkAuthenticator, list[KeyStore]]:
    psk = PreSharedSecret.generate(64)
    sa = await KeyStore.open(tmp_path / "a.sqlite")
    sb = await KeyStore.open(tmp_path / "b.sqlite")
    return (
        await LinkAuthenticator.load(sa, psk, 0, LINK_CODEC),
        await LinkAuthenticator.load(sb, psk, 1, LINK_CODEC),
        [sa, sb],
    )


async def test_round_trip_both_directions(tmp_path: Path) -> None:
    a, b, stores = await _pair(tmp_path)
    for frame in range(3):
        env = await a.seal(_message(frame))
        assert (await b.open(env)).frame == frame
        back = await b.seal(_message(frame))
        assert (await a.open(back)).frame == frame
    for store in stores:
        await store.close()


async def test_wrong_tag_replay_and_garbage_are_refused(tmp_path: Path) -> None:
    a, b, stores = await _pair(tmp_path)
    env = await a.seal(_message())
    bad = Envelope(body=env.body, tag=bytes([env.tag[0] ^ 1]) + env.tag[1:])
    with pytest.raises(AuthenticationError) as wrong:
        await b.open(bad)
    assert wrong.value.reason == "bad_tag"
    await b.open(env)
    with pytest.raises(AuthenticationError) as replay:
        await b.open(env)
    assert replay.value.reason == "replay"
    env2 = await a.seal(_message())
    with pytest.raises(ProtocolError):
        await b.open(Envelope(body=b"\xff\xff\xff", tag=env2.tag))
    with pytest.raises(ProtocolError):
        await b.open(Envelope(body=env2.body, tag=env2.tag[:4]))
    # A body changed but still parseable fails the tag.
    parsed = LINK_CODEC.decode(env2.body)
    changed = LINK_CODEC.encode(replace(parsed, frame=parsed.frame + 1))
    with pytest.raises(AuthenticationError):
        await b.open(Envelope(body=changed, tag=env2.tag))
    assert (await b.open(env2)).frame == 1  # the genuine one still passes
    for store in stores:
        await store.close()


async def test_restart_never_reuses_a_pad(tmp_path: Path) -> None:
    psk = PreSharedSecret.generate(1024)
    store = await KeyStore.open(tmp_path / "a.sqlite")
    auth = await LinkAuthenticator.load(store, psk, 0, LINK_CODEC)
    first = [(await auth.seal(_message())).body for _ in range(3)]
    await store.close()
    store = await KeyStore.open(tmp_path / "a.sqlite")
    again = await LinkAuthenticator.load(store, psk, 0, LINK_CODEC)
    env = await again.seal(_message())
    used = [LINK_CODEC.decode(body).pad_index for body in first]
    assert LINK_CODEC.decode(env.body).pad_index > max(used)
    await store.close()


async def test_pads_run_out_cleanly(tmp_path: Path) -> None:
    psk = PreSharedSecret.generate(16)
    store = await KeyStore.open(tmp_path / "a.sqlite")
    auth = await LinkAuthenticator.load(store, psk, 0, LINK_CODEC)
    for _ in range(16):
        await auth.seal(_message())
    with pytest.raises(AuthenticationError) as exhausted:
        await auth.seal(_message())
    assert exhausted.value.reason == "no_pad"
    await store.close()


def test_psk_file_format() -> None:
    psk = PreSharedSecret.generate(32)
    assert PreSharedSecret.from_bytes(psk.to_bytes()) == psk
    with pytest.raises(ConfigError, match="not a qkdnet"):
        PreSharedSecret.from_bytes(b"hello world, not a secret")
    with pytest.raises(ConfigError, match="truncated"):
        PreSharedSecret.from_bytes(psk.to_bytes()[:-1], "x.psk")
