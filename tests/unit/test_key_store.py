"""The key store: blocks, pending/ready, in-order consumption, pads, digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdnet.node.errors import FrameReplayed, KeyExhausted, KeyRejected, KeyStoreError
from qkdnet.node.store.key_store import KeyRange, KeyStoreDb


@pytest.fixture
def db(tmp_path: Path) -> KeyStoreDb:
    store = KeyStoreDb(tmp_path / "link.sqlite")
    store.initialise(7, {0: bytes(range(16)), 1: bytes(range(16, 32))})
    return store


def test_blocks_pending_until_confirmed(db: KeyStoreDb) -> None:
    db.add_block("l/1", 1, b"\xff\x00", 16, pending=True, refill={0: b"\x01" * 8})
    assert db.level()[:2] == (0, 0)
    assert db.pending_blocks() == ["l/1"]
    assert db.ready_pad_runs(0) == [(0, bytes(range(16)))]  # the refill is pending too
    db.confirm_blocks(["l/1"])
    assert db.level() == (16, 1, 16, 1)
    assert db.ready_pad_runs(0) == [(0, bytes(range(16))), (2, b"\x01" * 8)]
    assert db.held_blocks(["l/1", "l/2"]) == ["l/1"]


def test_discard_pending_removes_block_and_pads(db: KeyStoreDb) -> None:
    db.add_block("l/1", 1, b"\xff", 8, pending=True, refill={1: b"\x02" * 8})
    db.discard_pending(["l/1"])
    assert db.pending_blocks() == []
    assert db.pad_end(1) == 2
    db.add_block("l/2", 2, b"\xff", 8, pending=False, refill={})
    db.discard_pending(["l/2"])  # ready blocks are never discarded
    assert db.level()[:2] == (8, 1)


def test_consumption_in_order_and_never_twice(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    for store in (a, b):
        store.add_block("l/1", 1, bytes([0b10110011, 0b01000000]), 10, pending=False, refill={})
        store.add_block("l/2", 2, bytes([0b11110000]), 8, pending=False, refill={})
    ranges, bits = a.take_next(12)
    assert ranges == [KeyRange("l/1", 0, 10), KeyRange("l/2", 0, 2)]
    # 1011001101 then 11 -> 101100110111
    assert bits == bytes([0b10110011, 0b01110000])
    assert b.take_ranges(ranges) == bits
    with pytest.raises(KeyStoreError, match="already consumed"):
        b.take_ranges(ranges)
    ranges2, bits2 = a.take_next(6)
    assert ranges2 == [KeyRange("l/2", 2, 6)]
    assert bits2 == bytes([0b11000000])
    with pytest.raises(KeyExhausted):
        a.take_next(1)
    assert a.level()[:2] == (0, 0)


def test_duplicate_block_refused(db: KeyStoreDb) -> None:
    db.add_block("l/1", 1, b"\x00", 8, pending=False, refill={})
    with pytest.raises(KeyStoreError, match="already stored"):
        db.add_block("l/1", 1, b"\x00", 8, pending=False, refill={})
    with pytest.raises(KeyStoreError, match="do not hold"):
        db.add_block("l/3", 3, b"\x00\x00", 8, pending=False, refill={})


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "link.sqlite"
    first = KeyStoreDb(path)
    first.initialise(99, {0: b"\xaa" * 8, 1: b"\xbb" * 8})
    first.add_block("l/1", 1, b"\x0f", 8, pending=False, refill={})
    first.set_meta("send_lease_0", 256)
    first.close()
    again = KeyStoreDb(path)
    assert again.initialised()
    again.initialise(1, {0: b"\x00" * 8})  # a second import is ignored
    assert again.hash_key() == 99
    assert again.ready_pad_runs(0) == [(0, b"\xaa" * 8)]
    assert again.get_meta("send_lease_0") == 256
    assert again.level()[:2] == (8, 1)


def test_digests_compare_without_key(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    a.add_block("l/1", 1, b"\x0f", 8, pending=False, refill={})
    b.add_block("l/1", 1, b"\x0e", 8, pending=False, refill={})
    da, db_ = a.digests(b"n" * 16), b.digests(b"n" * 16)
    assert da[0].digest != db_[0].digest
    assert da[0].ones == 4
    assert a.digests(b"m" * 16)[0].digest != da[0].digest


def test_full_width_hash_key(tmp_path: Path) -> None:
    store = KeyStoreDb(tmp_path / "k.sqlite")
    store.initialise((1 << 64) - 1, {0: b"\x00" * 8})
    assert store.hash_key() == (1 << 64) - 1


def test_directions_draw_from_separate_halves(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    for store in (a, b):
        store.add_block("l/1", 1, bytes([0xF0]), 8, pending=False, refill={})
        store.add_block("l/2", 2, bytes([0x0F]), 8, pending=False, refill={})
    # Both ends take at once, each from its own half: never the same bits.
    ranges_a, bits_a = a.take_next(8, direction=0)
    ranges_b, bits_b = b.take_next(8, direction=1)
    assert [r.block_id for r in ranges_a] == ["l/2"]
    assert [r.block_id for r in ranges_b] == ["l/1"]
    assert b.take_ranges(ranges_a, direction=0) == bits_a
    assert a.take_ranges(ranges_b, direction=1) == bits_b
    with pytest.raises(KeyStoreError, match="other direction"):
        a.take_ranges([KeyRange("l/1", 0, 1)], direction=0)
    assert a.available() == b.available() == 0


def test_ranges_out_of_order_and_never_twice(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    for store in (a, b):
        store.add_block("l/2", 2, bytes([0b10101100, 0b11110000]), 16, pending=False, refill={})
    first, bits1 = a.take_next(5, direction=0)
    second, bits2 = a.take_next(7, direction=0)
    assert b.take_ranges(second, direction=0) == bits2  # the later relay arrives first
    assert b.take_ranges(first, direction=0) == bits1
    with pytest.raises(KeyStoreError, match="already consumed"):
        b.take_ranges([KeyRange("l/2", 4, 2)], direction=0)  # overlaps both
    overlapping = [KeyRange("l/2", 12, 2), KeyRange("l/2", 13, 2)]
    with pytest.raises(KeyStoreError, match="already consumed"):
        b.take_ranges(overlapping, direction=0)
    assert b.available(0) == 4  # the refused request consumed nothing
    assert b.take_ranges([KeyRange("l/2", 12, 4)], direction=0) == bytes([0b00000000])
    assert b.available() == 0
    with pytest.raises(KeyStoreError, match="already consumed"):
        b.take_ranges([KeyRange("l/2", 0, 1)], direction=0)


def test_a_frame_id_is_accepted_once_and_only_with_its_key(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    for store in (a, b):
        store.add_block("l/2", 2, bytes([0xA5, 0x5A]), 16, pending=False, refill={})
    first, bits1 = a.take_next(4, direction=0)
    second, _ = a.take_next(4, direction=0)
    with pytest.raises(KeyRejected):
        b.take_ranges(first, direction=0, accept=lambda _: False, frame_id="f1")
    # A refused frame records nothing: the genuine one with the same ID still gets through.
    assert b.take_ranges(first, direction=0, frame_id="f1") == bits1
    with pytest.raises(FrameReplayed):
        b.take_ranges(second, direction=0, frame_id="f1")
    assert b.available(0) == 12  # the replayed ID consumed nothing
    assert b.forget_frames(older_than_s=3600) == 0
    assert b.forget_frames(older_than_s=0) == 1


def test_a_used_up_block_keeps_its_row_not_its_bits(tmp_path: Path) -> None:
    a = KeyStoreDb(tmp_path / "a.sqlite")
    b = KeyStoreDb(tmp_path / "b.sqlite")
    for store in (a, b):
        store.add_block("l/1", 1, b"\xf0\x0f", 16, pending=False, refill={})
        store.add_block("l/2", 2, b"\xaa", 8, pending=False, refill={})
    ranges, bits = a.take_next(20)
    assert b.take_ranges(ranges) == bits
    for store in (a, b):
        lengths = dict(store._db.execute("SELECT block_id, length(bits) FROM blocks").fetchall())
        assert lengths == {"l/1": 0, "l/2": 1}  # l/1 used up: its row stays, without its bits
        assert store.level() == (4, 1, 24, 2)  # all bits ever stored still count
        assert store.held_blocks(["l/1"]) == ["l/1"]
        with pytest.raises(KeyStoreError, match="already stored"):
            store.add_block("l/1", 1, b"\x00\x00", 16, pending=False, refill={})
    with pytest.raises(KeyStoreError, match="already consumed"):
        b.take_ranges([KeyRange("l/1", 0, 1)])
    # Both ends' used-up blocks still compare equal.
    assert a.digests(b"n" * 16)[0] == b.digests(b"n" * 16)[0]


def test_consuming_key_does_not_grow_the_file(tmp_path: Path) -> None:
    """A store that fills and empties over and over stays at the size it had when it was
    fullest, plus a small row per used-up block (blocks of 2 kB, as links distil them, used to
    keep a page of 4 kB each)."""
    path = tmp_path / "a.sqlite"
    a = KeyStoreDb(path)
    frame = 0

    def fill_and_empty() -> int:
        nonlocal frame
        for _ in range(40):
            frame += 1
            bits = bytes(range(256)) * 8
            a.add_block(f"l/{frame:08d}-0a1b2c3d", frame, bits, 2048 * 8, pending=False, refill={})
        a.take_next(40 * 2048 * 8)
        a.checkpoint()
        return path.stat().st_size

    first = fill_and_empty()
    for _ in range(5):
        last = fill_and_empty()
    assert (last - first) / (5 * 40) < 400  # bytes per used-up block


def test_a_store_of_an_earlier_version_drops_the_zeros_it_kept(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = KeyStoreDb(path)
    old.add_block("l/1", 1, b"\xff" * 64, 512, pending=False, refill={})
    old._db.execute("UPDATE blocks SET consumed=512, bits=zeroblob(64)")  # as it used to
    old.close()
    again = KeyStoreDb(path)
    assert again._db.execute("SELECT length(bits), consumed FROM blocks").fetchall() == [(0, 512)]
    assert again.level() == (0, 0, 512, 1)
