"""SQLite files of the node: opened the same way, used from one thread each.

The link key stores and the delivered-key store are SQLite databases in WAL mode with
`synchronous=FULL` (a key acknowledged to the other end survives a crash) and `secure_delete`
(deleted key is overwritten with zeros, not left in free pages). Each database file is created
0600 before SQLite opens it, and SQLite gives its WAL and shared-memory files the same mode.
`checkpoint` folds the WAL back and truncates it, so that the WAL does not keep old copies of
deleted key either.

Each store runs all its SQLite work on one thread of its own (`StoreThread`), so that the event
loop never blocks on the disk. A failure of the storage itself (disk full, database locked by
another process, an I/O error) reaches callers as `StoreUnavailable`, after the transaction it
hit was rolled back: nothing stored is lost, and the caller may try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ..errors import KeyStoreError, StoreUnavailable
from ..file_modes import create_private

__all__ = ["StoreThread", "Transaction", "add_missing_columns", "checkpoint", "open_sqlite"]

T = TypeVar("T")


class _Closable(Protocol):
    def close(self) -> None: ...


DbT = TypeVar("DbT", bound=_Closable)


def open_sqlite(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (or create, 0600) `path` in WAL mode with `schema`; KeyStoreError names `what`."""
    try:
        create_private(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")
        db.executescript(schema)
    except (sqlite3.DatabaseError, OSError) as exc:
        raise KeyStoreError(f"{path}: cannot open {what} ({exc})") from None
    return db


def add_missing_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Add `columns` (name -> declaration) that a store made by an earlier version lacks."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, declaration in columns.items():
        if name not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL into the database and truncate it to zero bytes."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class Transaction:
    """`with Transaction(db):` one BEGIN IMMEDIATE .. COMMIT (ROLLBACK on error); nests.

    A COMMIT that fails (a full disk) is rolled back too, so the connection is never left inside
    a broken transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._outer = False

    def __enter__(self) -> None:
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._outer:
            return
        if exc_type is not None:
            self._rollback()
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


class StoreThread(Generic[DbT]):
    """The async face of a synchronous store: every call runs on the store's own thread."""

    def __init__(self, db: DbT, executor: ThreadPoolExecutor) -> None:
        self._db = db
        self._executor = executor

    @staticmethod
    async def _open_on_thread(
        factory: Callable[[Path], DbT], path: Path, name: str
    ) -> tuple[DbT, ThreadPoolExecutor]:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        db = await asyncio.get_running_loop().run_in_executor(executor, factory, path)
        return db, executor

    async def run(self, fn: Callable[[DbT], T]) -> T:
        """Run `fn(db)` on the store's thread; StoreUnavailable when the storage failed."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _storage_errors, fn, self._db
        )

    async def close(self) -> None:
        await self.run(lambda db: db.close())
        self._executor.shutdown(wait=True)


def _storage_errors(fn: Callable[[DbT], T], db: DbT) -> T:
    try:
        return fn(db)
    except sqlite3.IntegrityError as exc:  # a store method let one through: a bug, not storage
        raise KeyStoreError(f"the store refused a write ({exc})") from None
    except sqlite3.DatabaseError as exc:  # full, locked, I/O error, corrupt
        raise StoreUnavailable(f"the key store cannot be used now: {exc}") from None
