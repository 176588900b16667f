"""The delivered-key store: two-step delivery, once per slave, pools, shares and expiry."""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path

import pytest

from qkdnet.node.errors import KeyStoreError
from qkdnet.node.store.delivered_keys import (
    DeliveredKeysDb,
    ExpiredKeys,
    KeyNotFound,
    KeyNotYours,
    NewKeys,
    NotTheOrigin,
)


def _keys(n: int = 3, size: int = 32, blob: bytes | None = None, **fields: object) -> NewKeys:
    data = blob if blob is not None else secrets.token_bytes(n * size)
    base: dict[str, object] = {
        "transaction_id": "t1",
        "origin": "a",
        "master": "sae-a",
        "slaves": ("sae-b", "sae-c"),
        "local_slaves": ("sae-b", "sae-c"),
        "key_bits": 8 * size,
        "key_ids": tuple(str(uuid.UUID(int=i + 1)) for i in range(n)),
        "keys": tuple(data[i * size : (i + 1) * size] for i in range(n)),
    }
    return NewKeys(**(base | fields))  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> DeliveredKeysDb:
    return DeliveredKeysDb(tmp_path / "delivered.sqlite")


def test_pending_keys_are_invisible_until_committed_and_reach_each_slave_once(
    db: DeliveredKeysDb,
) -> None:
    keys = _keys()
    db.add(keys, pending=True)
    with pytest.raises(KeyNotFound):
        db.take("sae-b", "sae-a", keys.key_ids[:1])
    for commit in (True, False):  # only the origin settles, either way
        with pytest.raises(NotTheOrigin):
            db.settle("t1", "someone-else", commit)
    assert db.settle("t1", "a", True) == 3
    assert db.take("sae-b", "sae-a", keys.key_ids) == list(
        zip(keys.key_ids, keys.keys, strict=True)
    )
    with pytest.raises(KeyNotFound):
        db.take("sae-b", "sae-a", keys.key_ids[:1])
    with pytest.raises(KeyNotYours):
        db.take("sae-x", "sae-a", keys.key_ids[:1])
    assert db.take("sae-c", "sae-a", keys.key_ids[2:]) == [(keys.key_ids[2], keys.keys[2])]
    assert db.count("sae-a", "sae-c") == 2


def test_shares_recombine_only_when_the_set_is_complete(db: DeliveredKeysDb) -> None:
    whole = secrets.token_bytes(96)
    pad = secrets.token_bytes(96)
    other = bytes(x ^ y for x, y in zip(whole, pad, strict=True))
    assert db.add_share(_keys(blob=pad), "set1", 0, 2) is False
    with pytest.raises(KeyStoreError, match="arrived twice"):
        db.add_share(_keys(blob=pad), "set1", 0, 2)
    assert db.settle("t1", "a", True) == 0  # nothing to commit from half a set
    # The set of an earlier attempt may have left a share behind: it does not mix in.
    assert db.add_share(_keys(blob=pad), "set2", 0, 2) is False
    assert db.add_share(_keys(blob=other), "set2", 1, 2) is True
    assert db.settle("t1", "a", True) == 3
    got = db.take("sae-b", "sae-a", _keys().key_ids)
    assert b"".join(k for _, k in got) == whole


def test_shares_that_disagree_are_refused(db: DeliveredKeysDb) -> None:
    db.add_share(_keys(), "s", 0, 2)
    with pytest.raises(KeyStoreError, match="disagree"):
        db.add_share(_keys(master="sae-z"), "s", 1, 2)
    with pytest.raises(KeyStoreError, match="does not exist"):
        db.add_share(_keys(), "s", 2, 2)


def test_pool_take_is_oldest_first_bounded_and_respects_multipath(db: DeliveredKeysDb) -> None:
    single = [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(5)]
    split = [(str(uuid.uuid4()), secrets.token_bytes(32)) for _ in range(2)]
    db.pool_add("sae-a", "sae-b", False, single)
    db.pool_add("sae-a", "sae-b", True, split)
    assert db.pool_counts(256, False) == {("sae-a", "sae-b"): 7}
    assert db.pool_counts(256, True) == {("sae-a", "sae-b"): 2}
    assert db.pool_counts(512, False) == {}
    assert [k[:2] for k in db.pool_take("sae-a", "sae-b", 256, 3, True)] == split
    assert [k[:2] for k in db.pool_take("sae-a", "sae-b", 256, 3, False)] == single[:3]
    assert db.pool_take("sae-b", "sae-a", 256, 3, False) == []
    assert db.pool_counts(256, False) == {("sae-a", "sae-b"): 2}


def test_expire_drops_unsettled_keys_only(db: DeliveredKeysDb) -> None:
    db.add(_keys(transaction_id="old"), pending=True)
    db.add_share(_keys(transaction_id="half"), "s", 0, 2)
    time.sleep(0.05)
    db.add(_keys(transaction_id="new", key_ids=("k4", "k5", "k6")), pending=True)
    db.settle("new", "a", True)
    assert db.expire(pending_s=0.03) == ExpiredKeys(pending=3, ready=0)
    assert db.count() == 3  # committed keys wait for their time to live
    # The half set is gone too: its other share, arriving late, cannot complete it.
    assert db.add_share(_keys(transaction_id="half"), "s", 1, 2) is False


def test_a_retried_transaction_replaces_its_pending_copy_only(db: DeliveredKeysDb) -> None:
    keys = _keys()
    db.add(keys, pending=True)
    db.add(keys, pending=True)  # the same transaction again, over another route
    assert db.settle("t1", "a", True) == 3
    with pytest.raises(KeyStoreError, match="already stored"):
        db.add(keys, pending=True)  # once committed, the key IDs are taken
    with pytest.raises(KeyStoreError, match="already stored"):
        db.add(_keys(transaction_id="t2"), pending=True)


def test_a_frame_landing_after_its_transaction_was_discarded_is_refused(
    db: DeliveredKeysDb,
) -> None:
    assert db.settle("t1", "a", False) == 0  # the origin gave up before the frame landed
    with pytest.raises(KeyStoreError, match="was discarded"):
        db.add(_keys(), pending=True)
    assert db.count() == 0
    db.add(_keys(transaction_id="t2"), pending=True)  # other transactions are not affected


def test_ready_keys_wait_their_time_to_live_and_no_longer(tmp_path: Path) -> None:
    db = DeliveredKeysDb(tmp_path / "ttl.sqlite", default_ttl_s=0.05)
    short = _keys(transaction_id="short", ttl_s=0.05)
    long = _keys(transaction_id="long", key_ids=("k4", "k5", "k6"), ttl_s=60)
    try:
        db.add(short, pending=False)
        db.add(long, pending=False)
        assert db.expire(pending_s=120) == ExpiredKeys(pending=0, ready=0)
        time.sleep(0.1)
        assert db.expire(pending_s=120) == ExpiredKeys(pending=0, ready=3)
        assert db.levels().waiting == 3
        with pytest.raises(KeyNotFound):
            db.take("sae-b", "sae-a", short.key_ids[:1])
        assert [key_id for key_id, _ in db.take("sae-b", "sae-a", ["k4"])] == ["k4"]
    finally:
        db.close()


def test_only_a_key_s_origin_withdraws_it(db: DeliveredKeysDb) -> None:
    keys = _keys()
    db.add(keys, pending=False)
    assert db.void("someone-else", keys.key_ids[:2]) == 0
    assert db.void("a", [*keys.key_ids[:2], str(uuid.uuid4())]) == 2
    assert db.count() == 1
    db.checkpoint()  # the WAL goes, with the old pages that held the keys
    assert (db.path.parent / f"{db.path.name}-wal").stat().st_size == 0
