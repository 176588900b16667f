"""Keys delivered to this node for its SAEs (the KME side of ETSI GS QKD 014), in SQLite.

A key arrives for the slave SAEs this node serves, either relayed from the origin node (the
master SAE's node) or made here when master and slave share the node. Relayed keys are stored
*pending* until the origin settles the transaction: commit makes them available to `dec_keys`,
discard drops them. Each key is handed to each of its local slaves once and forgotten when
every one of them has fetched it.

Two more tables serve the origin side and multi-path relay:
- `pool`: keys relayed ahead of demand for a (master, slave) pair whose slave is served
  elsewhere. They are committed at the slave's node already; `enc_keys` hands them to the
  master and removes them (`pool_take`).
- `shares`: XOR shares of a transaction's keys, relayed over node-disjoint routes. When every
  share of a set has arrived the keys are recombined and stored pending (`add_share`).

Pending keys whose origin never settled (it crashed) and partial share sets are dropped by
`expire`, and so are ready keys no slave fetched within their time to live (`expires`, set by
the origin when it relayed them: a key never waits for ever). Pool keys are handed out only while
younger than the pool's age limit (`pool_expire` drops the others; their slaves' copies live
longer than that by the time to live, so a slave always has that long after its master got a
key). A discarded transaction is remembered for a while, so that a frame of it that lands late
(a slow hop, not a lost one) is refused rather than left pending. Only a transaction's origin may
settle it, and only a key's origin may withdraw it (`void`).

Deleted keys are overwritten on disk (SQLite's secure_delete), and `checkpoint` truncates the WAL.

Like the link stores, all SQLite work runs on one thread (`DeliveredKeys.run`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

from ..errors import KeyStoreError
from .sqlite_store import StoreThread, Transaction, add_missing_columns, checkpoint, open_sqlite

__all__ = [
    "DEFAULT_KEY_TTL_S",
    "DeliveredKeys",
    "DeliveredKeysDb",
    "DeliveryLevels",
    "ExpiredKeys",
    "KeyNotFound",
    "KeyNotYours",
    "NewKeys",
    "NotTheOrigin",
    "PoolKey",
]

DEFAULT_KEY_TTL_S = 600.0

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    master TEXT NOT NULL,
    slaves TEXT NOT NULL,
    waiting TEXT NOT NULL,
    handing TEXT NOT NULL DEFAULT '[]',
    key_bits INTEGER NOT NULL,
    key BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
    created REAL NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS keys_by_transaction ON keys(transaction_id);
DROP TABLE IF EXISTS discarded;
CREATE TABLE IF NOT EXISTS discarded_transactions (
    transaction_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (transaction_id, origin)
);
CREATE TABLE IF NOT EXISTS pool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE,
    master TEXT NOT NULL,
    slave TEXT NOT NULL,
    key_bits INTEGER NOT NULL,
    multipath INTEGER NOT NULL,
    key BLOB NOT NULL,
    created REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pool_by_pair ON pool(master, slave, key_bits, multipath, seq);
CREATE TABLE IF NOT EXISTS shares (
    transaction_id TEXT NOT NULL,
    share_set TEXT NOT NULL,
    share INTEGER NOT NULL,
    shares INTEGER NOT NULL,
    meta TEXT NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (transaction_id, share_set, share)
);
"""


class KeyNotFound(KeyStoreError):
    """One or more requested keys are not (or not yet) on this KME."""


class KeyNotYours(KeyStoreError):
    """The caller is not a slave SAE named when the keys were issued."""


class NotTheOrigin(KeyStoreError):
    """A node asked to settle a transaction that another node relayed here."""


@dataclass(frozen=True)
class ExpiredKeys:
    """What one expiry pass dropped."""

    pending: int  # never settled by their origin
    ready: int  # not fetched by every slave within their time to live


class PoolKey(NamedTuple):
    """A key taken from a pool, with the time it entered the pool."""

    key_id: str
    key: bytes
    created: float


@dataclass(frozen=True)
class DeliveryLevels:
    """Keys held now: ready for local slaves, pending settlement, in pools (origin side)."""

    waiting: int
    pending: int
    pool: int


@dataclass(frozen=True)
class NewKeys:
    """Keys of one transaction for some of this node's SAEs."""

    transaction_id: str
    origin: str
    master: str
    slaves: tuple[str, ...]
    local_slaves: tuple[str, ...]
    key_bits: int
    key_ids: tuple[str, ...]
    keys: tuple[bytes, ...]
    ttl_s: float = 0.0  # how long ready keys wait for their slaves (0: the store's default)


class DeliveredKeysDb:
    """Synchronous store on one SQLite file; use it from one thread at a time."""

    def __init__(self, path: Path, default_ttl_s: float = DEFAULT_KEY_TTL_S) -> None:
        self._db = open_sqlite(path, _SCHEMA, "the delivered-key store")
        self.path = path
        self.default_ttl_s = default_ttl_s
        try:
            with Transaction(self._db):
                self._upgrade()
                self._recover_handing()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise KeyStoreError(f"{path}: cannot open the delivered-key store ({exc})") from None

    def _upgrade(self) -> None:
        """Stores of earlier versions: keys get an expiry (the default, from now on), a list of
        slaves they are being handed to, and pool keys their age."""
        add_missing_columns(
            self._db, "keys", {"expires": "REAL", "handing": "TEXT NOT NULL DEFAULT '[]'"}
        )
        add_missing_columns(self._db, "pool", {"created": "REAL NOT NULL DEFAULT 0"})
        self._db.execute(
            "UPDATE keys SET expires=? WHERE expires IS NULL", (time.time() + self.default_ttl_s,)
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS keys_by_expiry ON keys(expires)")

    def _recover_handing(self) -> None:
        """Keys that were being written to a slave when the node stopped wait for it again (it
        cannot be known whether the answer reached it; it may ask again)."""
        rows = self._db.execute(
            "SELECT key_id, waiting, handing FROM keys WHERE handing != '[]'"
        ).fetchall()
        for key_id, waiting, handing in rows:
            slaves = sorted(set(json.loads(waiting)) | set(json.loads(handing)))
            self._db.execute(
                "UPDATE keys SET waiting=?, handing='[]' WHERE key_id=?",
                (json.dumps(slaves), key_id),
            )

    def close(self) -> None:
        self._db.close()

    def add(self, keys: NewKeys, *, pending: bool) -> None:
        """Store the keys of a transaction in one durable write (duplicate key IDs refused)."""
        if len(keys.key_ids) != len(keys.keys):
            raise KeyStoreError("as many key IDs as keys are needed")
        state = "pending" if pending else "ready"
        now = time.time()
        expires = now + (keys.ttl_s or self.default_ttl_s)
        slaves = json.dumps(list(keys.slaves))
        waiting = json.dumps(sorted(keys.local_slaves))
        try:
            with Transaction(self._db):
                if pending:
                    gone = self._db.execute(
                        "SELECT 1 FROM discarded_transactions WHERE transaction_id=? AND origin=?",
                        (keys.transaction_id, keys.origin),
                    ).fetchone()
                    if gone is not None:
                        # A frame that arrives after its origin gave up (it was slow, not lost).
                        raise KeyStoreError(f"transaction {keys.transaction_id} was discarded")
                    # A retry over another route after an answer was lost: the earlier copy of
                    # the same transaction goes, the same keys come again.
                    self._db.execute(
                        "DELETE FROM keys WHERE transaction_id=? AND origin=? AND state='pending'",
                        (keys.transaction_id, keys.origin),
                    )
                self._db.executemany(
                    "INSERT INTO keys(key_id, transaction_id, origin, master, slaves, waiting, "
                    "key_bits, key, state, created, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            key_id,
                            keys.transaction_id,
                            keys.origin,
                            keys.master,
                            slaves,
                            waiting,
                            keys.key_bits,
                            key,
                            state,
                            now,
                            expires,
                        )
                        for key_id, key in zip(keys.key_ids, keys.keys, strict=True)
                    ],
                )
        except sqlite3.IntegrityError:
            raise KeyStoreError(
                f"transaction {keys.transaction_id}: a key ID is already stored"
            ) from None

    def add_share(self, keys: NewKeys, share_set: str, share: int, shares: int) -> bool:
        """Store share `share` of `shares`; True once the set is complete and the keys pending.

        `keys.keys` holds this share of every key. The keys are the XOR of all shares; the
        other fields must be the same in every share of the set.
        """
        if not 0 <= share < shares:
            raise KeyStoreError(f"share {share} of {shares} does not exist")
        meta = json.dumps(
            [
                keys.origin,
                keys.master,
                keys.slaves,
                keys.local_slaves,
                keys.key_bits,
                keys.key_ids,
                keys.ttl_s,
            ]
        )
        with Transaction(self._db):
            try:
                self._db.execute(
                    "INSERT INTO shares(transaction_id, share_set, share, shares, meta, data, "
                    "created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        keys.transaction_id,
                        share_set,
                        share,
                        shares,
                        meta,
                        b"".join(keys.keys),
                        time.time(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise KeyStoreError(f"share {share} of this set arrived twice") from None
            rows = self._db.execute(
                "SELECT shares, meta, data FROM shares WHERE transaction_id=? AND share_set=?",
                (keys.transaction_id, share_set),
            ).fetchall()
            if len(rows) < shares:
                return False
            # The first six fields say what the share carries (the seventh, its time to live,
            # was added later: a set that spans an upgrade is not told apart by it).
            what = json.loads(meta)[:6]
            if (
                any(r[0] != shares or json.loads(r[1])[:6] != what for r in rows)
                or len(rows) != shares
            ):
                raise KeyStoreError("the shares of a set disagree on what they carry")
            combined = 0
            for _, _, data in rows:
                combined ^= int.from_bytes(data, "big")
            blob = combined.to_bytes(len(rows[0][2]), "big")
            size = keys.key_bits // 8
            whole = NewKeys(
                transaction_id=keys.transaction_id,
                origin=keys.origin,
                master=keys.master,
                slaves=keys.slaves,
                local_slaves=keys.local_slaves,
                key_bits=keys.key_bits,
                key_ids=keys.key_ids,
                keys=tuple(blob[i * size : (i + 1) * size] for i in range(len(keys.key_ids))),
                ttl_s=keys.ttl_s,
            )
            self._db.execute(
                "DELETE FROM shares WHERE transaction_id=? AND share_set=?",
                (keys.transaction_id, share_set),
            )
            self.add(whole, pending=True)
        return True

    def settle(self, transaction_id: str, origin: str, commit: bool) -> int:
        """Commit or discard the pending keys of a transaction; returns how many.

        NotTheOrigin when the transaction (or a share of it) came from another node than
        `origin`: only the node that relayed it may settle it.
        """
        with Transaction(self._db):
            owners = {
                str(row[0])
                for row in self._db.execute(
                    "SELECT DISTINCT origin FROM keys WHERE transaction_id=?", (transaction_id,)
                )
            }
            owners.update(
                str(json.loads(row[0])[0])
                for row in self._db.execute(
                    "SELECT meta FROM shares WHERE transaction_id=?", (transaction_id,)
                )
            )
            if owners - {origin}:
                raise NotTheOrigin(f"transaction {transaction_id} was not relayed by {origin}")
            self._db.execute("DELETE FROM shares WHERE transaction_id=?", (transaction_id,))
            if commit:
                cursor = self._db.execute(
                    "UPDATE keys SET state='ready' WHERE transaction_id=? AND origin=? "
                    "AND state='pending'",
                    (transaction_id, origin),
                )
            else:
                cursor = self._db.execute(
                    "DELETE FROM keys WHERE transaction_id=? AND origin=?", (transaction_id, origin)
                )
                # Remembered, so that a frame of it still on its way is refused when it lands.
                self._db.execute(
                    "INSERT OR REPLACE INTO discarded_transactions(transaction_id, origin, at) "
                    "VALUES (?, ?, ?)",
                    (transaction_id, origin, time.time()),
                )
        return int(cursor.rowcount)

    def void(self, origin: str, key_ids: Sequence[str]) -> int:
        """Withdraw keys that `origin` relayed here (ready or pending); returns how many.

        The origin calls this for keys its master never received, or that left its pool: no
        slave can have asked for them, since only the master learns their IDs."""
        removed = 0
        with Transaction(self._db):
            for key_id in key_ids:
                removed += self._db.execute(
                    "DELETE FROM keys WHERE key_id=? AND origin=?", (key_id, origin)
                ).rowcount
        return removed

    def rekey(
        self,
        origin: str,
        master: str,
        key_ids: Sequence[str],
        derive: Callable[[str, bytes], bytes],
    ) -> int:
        """Replace keys that `origin` relayed here for `master` by `derive(key ID, key)`, all or
        none (KeyNotFound): only committed keys that no slave has fetched, or is being handed.
        The hybrid keys of ETSI 014 (`protocol/hybrid_keys.py`) take the place of the QKD keys
        this way before their slave can learn their IDs. Returns how many."""
        with Transaction(self._db):
            for key_id in key_ids:
                row = self._db.execute(
                    "SELECT origin, master, slaves, waiting, handing, key FROM keys "
                    "WHERE key_id=? AND state='ready'",
                    (key_id,),
                ).fetchone()
                if (
                    row is None
                    or (row[0], row[1]) != (origin, master)
                    or sorted(json.loads(row[3])) != sorted(json.loads(row[2]))
                    or json.loads(row[4])
                ):
                    raise KeyNotFound(f"key {key_id} is not here to be replaced")
                self._db.execute(
                    "UPDATE keys SET key=? WHERE key_id=?", (derive(key_id, bytes(row[5])), key_id)
                )
        return len(key_ids)

    def take(
        self, caller: str, master: str, key_ids: Sequence[str], *, hold: bool = False
    ) -> list[tuple[str, bytes]]:
        """Hand `caller` the keys `key_ids` issued by `master`: all of them or none.

        KeyNotFound when a key is not here (or not committed, or `caller` already has it),
        KeyNotYours when `caller` is not one of the slaves the keys were issued for. With `hold`
        the keys are only set aside for `caller` (no longer waiting, not yet gone) until
        `release` says whether they reached it.
        """
        out: list[tuple[str, bytes]] = []
        with Transaction(self._db):
            for key_id in key_ids:
                row = self._db.execute(
                    "SELECT master, slaves, waiting, handing, key FROM keys "
                    "WHERE key_id=? AND state='ready'",
                    (key_id,),
                ).fetchone()
                if row is None or row[0] != master:
                    raise KeyNotFound("one or more keys specified are not found on KME")
                if caller not in json.loads(row[1]):
                    raise KeyNotYours("the caller is not a slave SAE of these keys")
                waiting, handing = json.loads(row[2]), json.loads(row[3])
                if caller not in waiting:
                    raise KeyNotFound("one or more keys specified are not found on KME")
                waiting.remove(caller)
                if hold:
                    handing.append(caller)
                self._keep_or_drop(key_id, waiting, handing)
                out.append((key_id, bytes(row[4])))
        return out

    def release(self, caller: str, key_ids: Sequence[str], delivered: bool) -> None:
        """End `take(..., hold=True)`: the keys reached `caller` (gone for it), or not (they
        wait for it again)."""
        with Transaction(self._db):
            for key_id in key_ids:
                row = self._db.execute(
                    "SELECT waiting, handing FROM keys WHERE key_id=?", (key_id,)
                ).fetchone()
                if row is None:
                    continue
                waiting, handing = json.loads(row[0]), json.loads(row[1])
                if caller in handing:
                    handing.remove(caller)
                    if not delivered:
                        waiting.append(caller)
                self._keep_or_drop(key_id, waiting, handing)

    def _keep_or_drop(self, key_id: str, waiting: list[str], handing: list[str]) -> None:
        """Update a key's slaves; forget it once no slave waits for it or is being handed it."""
        if waiting or handing:
            self._db.execute(
                "UPDATE keys SET waiting=?, handing=? WHERE key_id=?",
                (json.dumps(sorted(waiting)), json.dumps(sorted(handing)), key_id),
            )
        else:
            self._db.execute("DELETE FROM keys WHERE key_id=?", (key_id,))

    def count(self, master: str | None = None, slave: str | None = None) -> int:
        """Ready keys waiting for `slave` (any local slave when None) from `master` (any)."""
        rows = self._db.execute(
            "SELECT waiting FROM keys WHERE state='ready'"
            + (" AND master=?" if master is not None else ""),
            (master,) if master is not None else (),
        ).fetchall()
        if slave is None:
            return len(rows)
        return sum(1 for (waiting,) in rows if slave in json.loads(waiting))

    # -- the pool of keys relayed ahead of demand (origin side) -------------------------------
    def pool_add(
        self, master: str, slave: str, multipath: bool, keys: Sequence[tuple[str, bytes]]
    ) -> None:
        """Add keys, committed at the slave's node already, to the (master, slave) pool."""
        now = time.time()
        with Transaction(self._db):
            self._db.executemany(
                "INSERT INTO pool(key_id, master, slave, key_bits, multipath, key, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(i, master, slave, 8 * len(k), int(multipath), k, now) for i, k in keys],
            )

    def pool_take(
        self,
        master: str,
        slave: str,
        key_bits: int,
        number: int,
        multipath: bool,
        max_age_s: float = DEFAULT_KEY_TTL_S,
    ) -> list[PoolKey]:
        """Remove and return up to `number` pool keys younger than `max_age_s`, oldest first.

        With `multipath` only keys that were themselves relayed over disjoint routes qualify.
        """
        with Transaction(self._db):
            rows = self._db.execute(
                "SELECT seq, key_id, key, created FROM pool WHERE master=? AND slave=? "
                "AND key_bits=? AND multipath>=? AND created>=? ORDER BY created, seq LIMIT ?",
                (master, slave, key_bits, int(multipath), time.time() - max_age_s, number),
            ).fetchall()
            self._db.executemany("DELETE FROM pool WHERE seq=?", [(r[0],) for r in rows])
        return [PoolKey(str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def pool_return(
        self, master: str, slave: str, multipath: bool, keys: Sequence[PoolKey]
    ) -> None:
        """Put keys `pool_take` gave back into their pool, as old as they were."""
        with Transaction(self._db):
            self._db.executemany(
                "INSERT INTO pool(key_id, master, slave, key_bits, multipath, key, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (k.key_id, master, slave, 8 * len(k.key), int(multipath), k.key, k.created)
                    for k in keys
                ],
            )

    def pool_counts(
        self, key_bits: int, multipath: bool, max_age_s: float = DEFAULT_KEY_TTL_S
    ) -> dict[tuple[str, str], int]:
        """(master, slave) -> pool keys of `key_bits` that qualify for `multipath` and are
        younger than `max_age_s`."""
        rows = self._db.execute(
            "SELECT master, slave, COUNT(*) FROM pool WHERE key_bits=? AND multipath>=? "
            "AND created>=? GROUP BY master, slave",
            (key_bits, int(multipath), time.time() - max_age_s),
        ).fetchall()
        return {(str(m), str(s)): int(n) for m, s, n in rows}

    def pool_expire(self, max_age_s: float) -> list[tuple[str, str]]:
        """Drop pool keys older than `max_age_s`; returns their (slave, key ID)."""
        cutoff = time.time() - max_age_s
        with Transaction(self._db):
            rows = self._db.execute(
                "SELECT slave, key_id FROM pool WHERE created<?", (cutoff,)
            ).fetchall()
            self._db.execute("DELETE FROM pool WHERE created<?", (cutoff,))
        return [(str(slave), str(key_id)) for slave, key_id in rows]

    def expire(self, pending_s: float) -> ExpiredKeys:
        """Drop pending keys and share sets older than `pending_s`, and ready keys past their
        time to live."""
        now = time.time()
        with Transaction(self._db):
            pending = self._db.execute(
                "DELETE FROM keys WHERE state='pending' AND created<?", (now - pending_s,)
            ).rowcount
            ready = self._db.execute(
                "DELETE FROM keys WHERE state='ready' AND expires<?", (now,)
            ).rowcount
            self._db.execute("DELETE FROM shares WHERE created<?", (now - pending_s,))
            self._db.execute(
                "DELETE FROM discarded_transactions WHERE at<?", (now - 2 * pending_s,)
            )
        return ExpiredKeys(pending=int(pending), ready=int(ready))

    def levels(self) -> DeliveryLevels:
        """How many keys are held now, by kind."""
        counts = dict(
            self._db.execute(
                "SELECT state, COUNT(*) FROM keys WHERE state='pending' OR waiting != '[]' "
                "GROUP BY state"
            ).fetchall()
        )
        pool = self._db.execute("SELECT COUNT(*) FROM pool").fetchone()[0]
        return DeliveryLevels(
            waiting=int(counts.get("ready", 0)), pending=int(counts.get("pending", 0)), pool=pool
        )

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it (no stale copies of deleted keys)."""
        checkpoint(self._db)


class DeliveredKeys(StoreThread[DeliveredKeysDb]):
    """The async face of `DeliveredKeysDb`: every call runs on the store's own thread."""

    @classmethod
    async def open(cls, path: Path, default_ttl_s: float = DEFAULT_KEY_TTL_S) -> DeliveredKeys:
        factory = partial(DeliveredKeysDb, default_ttl_s=default_ttl_s)
        return cls(*await cls._open_on_thread(factory, path, "delivered"))
