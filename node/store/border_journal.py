"""A border's journal of keys in flight across the border, kept across a crash.

A border node hands keys to its peer in another domain (export) and takes keys from it
(import) in steps that span two KMSs; a border that dies in the middle must not leave a key at
one end only. So before each step it writes what is in flight, and clears it once the step is
settled:

- an export, once the peer took the keys: until the origin of the relay settles it (the master
  gets the keys only then);
- an import, before the keys are relayed inside this domain: until the peer has the
  acknowledgement (it releases the keys to its master only then).

What the journal still holds when the node starts again was in flight when it died: the border
voids it on both sides (`BorderKms.recover`). No key material is written here: key IDs, SAE
IDs and node IDs only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import KeyStoreError
from .sqlite_store import StoreThread, Transaction, open_sqlite

__all__ = ["BorderJournal", "BorderJournalDb", "InFlight"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS in_flight (
    entry TEXT PRIMARY KEY,          -- 'export:<transaction ID>' or 'import:<first key ID>'
    direction TEXT NOT NULL,         -- 'export' or 'import'
    key_ids TEXT NOT NULL,           -- JSON list
    initiator TEXT NOT NULL,         -- the master SAE
    targets TEXT NOT NULL,           -- JSON list of slave SAEs
    origin TEXT NOT NULL,            -- export: the node that relayed the keys here
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class InFlight:
    """Keys that were crossing the border, one way or the other."""

    entry: str
    direction: str
    key_ids: tuple[str, ...]
    initiator: str
    targets: tuple[str, ...]
    origin: str


class BorderJournalDb:
    """Synchronous journal on one SQLite file; use it from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self._db = open_sqlite(path, _SCHEMA, "the border's journal")
        self.path = path

    def write(self, item: InFlight) -> None:
        try:
            with Transaction(self._db):
                self._db.execute(
                    "INSERT OR REPLACE INTO in_flight VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.entry,
                        item.direction,
                        json.dumps(list(item.key_ids)),
                        item.initiator,
                        json.dumps(list(item.targets)),
                        item.origin,
                        time.time(),
                    ),
                )
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(f"{self.path}: cannot write the border's journal ({exc})") from None

    def clear(self, entry: str) -> None:
        with Transaction(self._db):
            self._db.execute("DELETE FROM in_flight WHERE entry=?", (entry,))

    def pending(self) -> list[InFlight]:
        rows = self._db.execute(
            "SELECT entry, direction, key_ids, initiator, targets, origin FROM in_flight "
            "ORDER BY created"
        ).fetchall()
        return [
            InFlight(
                str(entry),
                str(direction),
                tuple(json.loads(ids)),
                str(initiator),
                tuple(json.loads(targets)),
                str(origin),
            )
            for entry, direction, ids, initiator, targets, origin in rows
        ]

    def close(self) -> None:
        self._db.close()


class BorderJournal(StoreThread[BorderJournalDb]):
    """The async face of `BorderJournalDb`: every call runs on the journal's own thread."""

    @classmethod
    async def open(cls, path: Path) -> BorderJournal:
        return cls(*await cls._open_on_thread(BorderJournalDb, path, "border-journal"))
