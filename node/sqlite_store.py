"""SQLite files of the node: opened the same way, used from one thread each.

The link key stores and the delivered-key store are SQLite databases in WAL mode with
`synchronous=FULL` (a key acknowledged to the other end survives a crash). Each runs all its
SQLite work on one thread of its own (`StoreThread`) so that the event loop never blocks on
the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from .errors import KeyStoreError

__all__ = ["StoreThread", "Transaction", "open_sqlite"]

T = TypeVar("T")


class _Closable(Protocol):
    def close(self) -> None: ...


DbT = TypeVar("DbT", bound=_Closable)


def open_sqlite(path: Path, schema: str, what: str) -> sqlite3.Connection:
    """Open (or create) `path` in WAL mode with `schema`; KeyStoreError names `what`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        raise KeyStoreError(f"{path}: cannot open {what} ({exc})") from None
    return db


class Transaction:
    """`with Transaction(db):` one BEGIN IMMEDIATE .. COMMIT (ROLLBACK on error); nests."""

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
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
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
        """Run `fn(db)` on the store's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._db)

    async def close(self) -> None:
        await self.run(lambda db: db.close())
        self._executor.shutdown(wait=True)
