"""The key store of one link end: distilled key blocks and authentication pads, in SQLite (WAL).

Both ends of a link hold the same blocks under the same IDs and consume them in the same order;
a bit is never handed out twice. A block is written by the transmitter as *pending* before it
asks the receiver to store it, and becomes *ready* once the receiver has acknowledged a durable
write; a session that starts resolves pending blocks against the receiver's (see
`protocol/transmitter.py`).

A block that is used up keeps its row, without its bits: the row records that the ID was
stored and consumed (a block is never stored twice, a pending block is settled against it, both
ends stay comparable), at about 160 bytes on disk instead of the block's size. Used pads
are deleted, so are the used ranges of a block once it is used up, and relay frame IDs once they
are past replay (`forget_frames`); `checkpoint` truncates the WAL. What the store holds is
bounded by the link's `store_max_bits` (the transmitter stops distilling there, see
`protocol/transmitter.py`).

Authentication pads form one index space per direction (0: transmitter -> receiver,
1: receiver -> transmitter). The pre-shared secret provides the first pads; each round appends
a refill cut from its own distilled key. Only ready pads may be used.

All SQLite work runs on one thread per store (`KeyStore` wraps `KeyStoreDb` in a single-worker
executor), so the event loop never blocks on the disk.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from ..errors import FrameReplayed, KeyExhausted, KeyRejected, KeyStoreError
from ..link_secret import PAD_BYTES
from .sqlite_store import StoreThread, Transaction, checkpoint, open_sqlite

__all__ = [
    "PAD_BYTES",
    "BlockDigest",
    "KeyRange",
    "KeyStore",
    "KeyStoreDb",
    "StoreLevel",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    block_id TEXT PRIMARY KEY,
    frame INTEGER NOT NULL UNIQUE,
    nbits INTEGER NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
    created REAL NOT NULL,
    bits BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS used_ranges (
    block_id TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY (block_id, offset)
);
CREATE TABLE IF NOT EXISTS pads (
    direction INTEGER NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'ready')),
    block_id TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (direction, start)
);
CREATE TABLE IF NOT EXISTS relay_frames (frame_id TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS relay_frames_by_age ON relay_frames(at);
"""

T = TypeVar("T")


class StoreLevel(NamedTuple):
    """Unconsumed bits and blocks, all bits ever stored, and the newest block's frame (-1)."""

    bits: int
    blocks: int
    total_bits: int
    last_frame: int


@dataclass(frozen=True)
class KeyRange:
    """A run of key bits: `length` bits of block `block_id` from bit `offset`."""

    block_id: str
    offset: int
    length: int


@dataclass(frozen=True)
class BlockDigest:
    """A keyed digest of one block, for comparing both ends without revealing key."""

    block_id: str
    bits: int
    consumed: int
    digest: bytes
    ones: int
    frame: int
    pending: bool


def _bit_slice(data: bytes, offset: int, length: int) -> bytes:
    """Bits [offset, offset+length) of a big-endian bit string, packed again from bit 0."""
    value = int.from_bytes(data, "big")
    total = len(data) * 8
    chunk = (value >> (total - offset - length)) & ((1 << length) - 1)
    nbytes = (length + 7) // 8
    return (chunk << (nbytes * 8 - length)).to_bytes(nbytes, "big")


class KeyStoreDb:
    """Synchronous store on one SQLite file. Use it from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self._db = open_sqlite(path, _SCHEMA, "key store")
        self.path = path
        # Stores of earlier versions kept used-up blocks at full size (zeros): shrink them.
        with self._transaction():
            self._drop_bits("consumed >= nbits AND length(bits) > 0", ())

    def close(self) -> None:
        self._db.close()

    # -- meta counters -------------------------------------------------------------------
    def get_meta(self, name: str, default: int = 0) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else int(row[0])

    def set_meta(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta(name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def hash_key(self) -> int:
        """The link's 64-bit authentication hash key."""
        return self.get_meta("hash_key") % (1 << 64)

    def initialised(self) -> bool:
        return self.get_meta("initialised") == 1

    def initialise(self, hash_key: int, pads: dict[int, bytes]) -> None:
        """First start of the link: import the pre-shared secret (once)."""
        with self._transaction():
            if self.get_meta("initialised") == 1:
                return
            # SQLite integers are signed 64-bit: keep the key's two's complement.
            self.set_meta("hash_key", hash_key - (1 << 64) if hash_key >= 1 << 63 else hash_key)
            for direction, data in pads.items():
                self._insert_pads(direction, data, "ready", None)
            self.set_meta("initialised", 1)

    # -- blocks ----------------------------------------------------------------------------
    def add_block(
        self,
        block_id: str,
        frame: int,
        bits: bytes,
        nbits: int,
        *,
        pending: bool,
        refill: dict[int, bytes],
    ) -> None:
        """Store a distilled block and its pad refills in one durable transaction."""
        if len(bits) != (nbits + 7) // 8:
            raise KeyStoreError(f"block {block_id}: {len(bits)} bytes do not hold {nbits} bits")
        state = "pending" if pending else "ready"
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO blocks(block_id, frame, nbits, state, created, bits) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (block_id, frame, nbits, state, time.time(), bits),
                )
                for direction, data in refill.items():
                    if data:
                        self._insert_pads(direction, data, state, block_id)
        except sqlite3.IntegrityError:
            raise KeyStoreError(f"block {block_id} (frame {frame}) is already stored") from None

    def confirm_blocks(self, block_ids: Iterable[str]) -> None:
        ids = list(block_ids)
        with self._transaction():
            for block_id in ids:
                self._db.execute("UPDATE blocks SET state='ready' WHERE block_id=?", (block_id,))
                self._db.execute("UPDATE pads SET state='ready' WHERE block_id=?", (block_id,))

    def discard_pending(self, block_ids: Iterable[str]) -> None:
        ids = list(block_ids)
        with self._transaction():
            for block_id in ids:
                self._db.execute(
                    "DELETE FROM blocks WHERE block_id=? AND state='pending'", (block_id,)
                )
                self._db.execute(
                    "DELETE FROM pads WHERE block_id=? AND state='pending'", (block_id,)
                )

    def pending_blocks(self) -> list[str]:
        rows = self._db.execute(
            "SELECT block_id FROM blocks WHERE state='pending' ORDER BY frame"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def held_blocks(self, block_ids: Iterable[str]) -> list[str]:
        held = []
        for block_id in block_ids:
            row = self._db.execute(
                "SELECT 1 FROM blocks WHERE block_id=? AND state='ready'", (block_id,)
            ).fetchone()
            if row is not None:
                held.append(block_id)
        return held

    def level(self) -> StoreLevel:
        """How much key the store holds, over ready blocks."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(nbits - consumed), 0), "
            "COALESCE(SUM(consumed < nbits), 0), COALESCE(SUM(nbits), 0), "
            "COALESCE(MAX(frame), -1) FROM blocks WHERE state='ready'"
        ).fetchone()
        return StoreLevel(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    def take_next(self, nbits: int, direction: int | None = None) -> tuple[list[KeyRange], bytes]:
        """Consume the oldest `nbits` unconsumed ready bits; returns their ranges and the bits.

        With `direction` (0 or 1) only blocks of frames of that parity are used: each end of a
        link draws from its own half, so that both can take key at the same time without ever
        choosing the same bits. The bits are returned packed big-endian from bit 0 of the first
        range.
        """
        if nbits <= 0:
            raise KeyStoreError("asked for a non-positive number of key bits")
        where = "state='ready' AND consumed < nbits"
        args: tuple[int, ...] = ()
        if direction is not None:
            where += " AND frame % 2 = ?"
            args = (direction,)
        with self._transaction():
            # Sizes first, bits only of the blocks used: a store holding megabits would
            # otherwise read all of them for every few hundred bits taken.
            rows = self._db.execute(
                f"SELECT block_id, nbits, consumed FROM blocks WHERE {where} ORDER BY frame",
                args,
            ).fetchall()
            available = sum(int(r[1]) - int(r[2]) for r in rows)
            if available < nbits:
                raise KeyExhausted(f"asked for {nbits} key bits, {available} available")
            ranges: list[KeyRange] = []
            value = 0
            need = nbits
            for block_id, total, consumed in rows:
                if need == 0:
                    break
                (data,) = self._db.execute(
                    "SELECT bits FROM blocks WHERE block_id=?", (block_id,)
                ).fetchone()
                length = min(need, int(total) - int(consumed))
                ranges.append(KeyRange(str(block_id), int(consumed), length))
                piece = int.from_bytes(_bit_slice(bytes(data), int(consumed), length), "big")
                value = (value << length) | (piece >> ((8 - length % 8) % 8))
                self._consume(str(block_id), int(consumed) + length, int(total))
                need -= length
        nbytes = (nbits + 7) // 8
        return ranges, (value << (nbytes * 8 - nbits)).to_bytes(nbytes, "big")

    def available(self, direction: int | None = None) -> int:
        """Unconsumed ready bits (of one direction's half with `direction`)."""
        where = "state='ready'" + ("" if direction is None else " AND frame % 2 = ?")
        row = self._db.execute(
            f"SELECT COALESCE(SUM(nbits - consumed), 0) FROM blocks WHERE {where}",
            () if direction is None else (direction,),
        ).fetchone()
        return int(row[0])

    def take_ranges(
        self,
        ranges: list[KeyRange],
        direction: int | None = None,
        accept: Callable[[bytes], bool] | None = None,
        frame_id: str | None = None,
    ) -> bytes:
        """Consume exactly `ranges`, as the other end chose them with `take_next`.

        Ranges may arrive in any order (several relays share a link at once); a bit that was
        already used, a range outside its block and, with `direction`, a block of the other
        direction's half are refused, and then nothing is consumed. With `accept`, the bits are
        consumed only when `accept(bits)` is true (KeyRejected otherwise): a relay frame with a
        wrong tag cannot burn the key its genuine sender will use. With `frame_id`, the ID is
        recorded in the same transaction, and an ID recorded before is refused (FrameReplayed).
        """
        total_bits = sum(r.length for r in ranges)
        if total_bits <= 0:
            raise KeyStoreError("asked for no key bits")
        value = 0
        with self._transaction():
            if frame_id is not None:
                seen = self._db.execute(
                    "SELECT 1 FROM relay_frames WHERE frame_id=?", (frame_id,)
                ).fetchone()
                if seen is not None:
                    raise FrameReplayed(f"relay frame {frame_id} was accepted before")
            for r in ranges:
                row = self._db.execute(
                    "SELECT nbits, consumed, bits, frame FROM blocks "
                    "WHERE block_id=? AND state='ready'",
                    (r.block_id,),
                ).fetchone()
                if row is None:
                    raise KeyStoreError(f"block {r.block_id} is not in the store")
                nbits, consumed, data, frame = int(row[0]), int(row[1]), bytes(row[2]), int(row[3])
                if direction is not None and frame % 2 != direction:
                    raise KeyStoreError(f"block {r.block_id} belongs to the other direction")
                if r.length <= 0 or r.offset < 0 or r.offset + r.length > nbits:
                    raise KeyStoreError(f"block {r.block_id}: range beyond the block")
                overlap = self._db.execute(
                    "SELECT 1 FROM used_ranges WHERE block_id=? AND offset < ? "
                    "AND offset + length > ? LIMIT 1",
                    (r.block_id, r.offset + r.length, r.offset),
                ).fetchone()
                if overlap is not None or consumed >= nbits:
                    raise KeyStoreError(
                        f"block {r.block_id}: bits from {r.offset} were already consumed"
                    )
                piece = int.from_bytes(_bit_slice(data, r.offset, r.length), "big")
                value = (value << r.length) | (piece >> ((8 - r.length % 8) % 8))
                self._db.execute(
                    "INSERT INTO used_ranges(block_id, offset, length) VALUES (?, ?, ?)",
                    (r.block_id, r.offset, r.length),
                )
                if consumed + r.length >= nbits:
                    self._db.execute("DELETE FROM used_ranges WHERE block_id=?", (r.block_id,))
                self._consume(r.block_id, consumed + r.length, nbits)
            nbytes = (total_bits + 7) // 8
            bits = (value << (nbytes * 8 - total_bits)).to_bytes(nbytes, "big")
            if accept is not None and not accept(bits):
                raise KeyRejected("link key refused by its check; nothing consumed")
            if frame_id is not None:
                self._db.execute(
                    "INSERT INTO relay_frames(frame_id, at) VALUES (?, ?)", (frame_id, time.time())
                )
        return bits

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it (no stale copies of used key)."""
        checkpoint(self._db)

    def forget_frames(self, older_than_s: float) -> int:
        """Drop relay frame IDs older than `older_than_s` (their link key is spent anyway)."""
        cursor = self._db.execute(
            "DELETE FROM relay_frames WHERE at<?", (time.time() - older_than_s,)
        )
        return int(cursor.rowcount)

    def _consume(self, block_id: str, new_consumed: int, nbits: int) -> None:
        if new_consumed >= nbits:
            # Fully used: drop the bits, keep the row as a record that the ID was consumed.
            self._drop_bits("block_id=?", (block_id,))
        else:
            self._db.execute(
                "UPDATE blocks SET consumed=? WHERE block_id=?", (new_consumed, block_id)
            )

    def _drop_bits(self, where: str, args: tuple[str, ...]) -> None:
        """Replace the blocks matching `where` by rows without bits, marked used up.

        Deleted and inserted again rather than updated: a row shrunk in place keeps its page
        (a block of a few kB fills most of one), a deleted one gives the page back for reuse.
        secure_delete overwrites the bits."""
        rows = self._db.execute(
            f"SELECT block_id, frame, nbits, state, created FROM blocks WHERE {where}", args
        ).fetchall()
        for block_id, frame, nbits, state, created in rows:
            self._db.execute("DELETE FROM blocks WHERE block_id=?", (block_id,))
            self._db.execute(
                "INSERT INTO blocks(block_id, frame, nbits, consumed, state, created, bits) "
                "VALUES (?, ?, ?, ?, ?, ?, X'')",
                (block_id, frame, nbits, nbits, state, created),
            )

    def digests(self, nonce: bytes) -> list[BlockDigest]:
        """HMAC-SHA256(nonce, bits) of every block (pending ones flagged), oldest first."""
        rows = self._db.execute(
            "SELECT block_id, nbits, consumed, bits, frame, state FROM blocks ORDER BY frame"
        ).fetchall()
        out = []
        for block_id, nbits, consumed, data, frame, state in rows:
            blob = bytes(data)
            out.append(
                BlockDigest(
                    block_id=str(block_id),
                    bits=int(nbits),
                    consumed=int(consumed),
                    digest=hmac.new(nonce, blob, hashlib.sha256).digest(),
                    ones=int.from_bytes(blob, "big").bit_count(),
                    frame=int(frame),
                    pending=state == "pending",
                )
            )
        return out

    # -- authentication pads -----------------------------------------------------------------
    def _insert_pads(self, direction: int, data: bytes, state: str, block_id: str | None) -> None:
        if len(data) % PAD_BYTES:
            raise KeyStoreError(f"pad refill of {len(data)} bytes is not whole pads")
        start = self.pad_end(direction)
        self._db.execute(
            "INSERT INTO pads(direction, start, count, state, block_id, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (direction, start, len(data) // PAD_BYTES, state, block_id, data),
        )

    def pad_end(self, direction: int) -> int:
        """One past the last pad index (ready or pending) of a direction."""
        row = self._db.execute(
            "SELECT COALESCE(MAX(start + count), 0) FROM pads WHERE direction=?", (direction,)
        ).fetchone()
        return int(row[0])

    def ready_pad_runs(self, direction: int) -> list[tuple[int, bytes]]:
        """The ready pads of a direction as (first index, bytes) runs, in index order."""
        rows = self._db.execute(
            "SELECT start, data FROM pads WHERE direction=? AND state='ready' ORDER BY start",
            (direction,),
        ).fetchall()
        return [(int(start), bytes(data)) for start, data in rows]

    def forget_pads_below(self, direction: int, index: int) -> None:
        """Delete pad rows that lie wholly below `index` (used pads are not kept)."""
        with self._transaction():
            self._db.execute(
                "DELETE FROM pads WHERE direction=? AND start + count <= ? AND state='ready'",
                (direction, index),
            )

    # -- plumbing -------------------------------------------------------------------------------
    def _transaction(self) -> Transaction:
        return Transaction(self._db)


class KeyStore(StoreThread[KeyStoreDb]):
    """The async face of a link's key store: every call runs on the store's own thread."""

    @classmethod
    async def open(cls, path: Path) -> KeyStore:
        """Open (or create) the store at `path` on a thread of its own."""
        return cls(*await cls._open_on_thread(KeyStoreDb, path, "keystore"))

    @property
    def path(self) -> Path:
        return self._db.path
