"""What the outbox has handed out to the network thread, over its two stores (no lock, no I/O but the store's reads).

Invariants:
- database rows: per class, every row with an id at or below `cursor[prio]` was handed out (or was settled) since
  the last `release`; `handed` holds the ids handed out (with their creation time, so that an ack never deletes a row
  of another database that reuses the id) and is what `claim` skips above the cursor (rows moved in from memory
  while in flight);
- held rows: a flag per row (`Held.claimed`); in a class the claimed rows come first (held.py), and a class's held
  rows are handed out only once all its stored rows were, so the order within a class holds across both stores;
- `alias`: a held row moved into the database while in flight answers to its old (negative) id until released;
- `settled`: stored rows delivered or refused while the database could not delete them; never handed out again and
  not counted as waiting; deleted (by id and creation time) once the database can be written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from agent.link.dbstore import DbStore
from agent.link.held import HeldRows
from agent.link.kinds import KINDS, PRIORITY, Kind, OutboxRow

SCAN_BATCH = 64
"""Extra rows read per scan, for the ids to skip (handed out above the cursor, settled)."""


class Handout:
    """Cursors, handed-out ids, aliases and settled ids of one outbox."""

    def __init__(self) -> None:
        self.cursor: dict[int, int] = {}
        self.handed: dict[int, float] = {}
        self.alias: dict[int, int] = {}
        self.settled: dict[int, float] = {}

    def claim(
        self, store: DbStore | None, held: HeldRows, limit: int
    ) -> tuple[list[OutboxRow], sqlite3.Error | None]:
        """Up to `limit` rows not handed out yet, in send order; and the error if the database could not be read (then
        the rows found before it, and no more)."""
        found: list[OutboxRow] = []
        for prio, kind in enumerate(KINDS):
            if len(found) >= limit:
                break
            if store is not None and store.rows[kind] > 0:
                try:
                    self._claim_stored(store, prio, limit, found)
                except sqlite3.Error as problem:
                    return found, problem
                if len(found) >= limit:
                    break
            for entry in held.of_class(prio):
                if len(found) >= limit:
                    break
                if not entry.claimed:
                    entry.claimed = True
                    found.append(entry.row)
        return found, None

    def _claim_stored(self, store: DbStore, prio: int, limit: int, found: list[OutboxRow]) -> None:
        after = self.cursor.get(prio, 0)
        try:
            while len(found) < limit:
                asked = limit - len(found) + SCAN_BATCH
                rows = store.scan(prio, after, asked)
                for row in rows:
                    if len(found) >= limit:
                        break
                    after = row.id
                    if row.id in self.handed or row.id in self.settled:
                        continue
                    self.handed[row.id] = row.created
                    found.append(row)
                if len(rows) < asked:
                    break
        finally:
            self.cursor[prio] = after

    def unclaim(self, held: HeldRows, rows: Iterable[OutboxRow]) -> None:
        """Gives back rows handed out but not sent; they are handed out next."""
        for row in rows:
            row_id = self.alias.pop(row.id, row.id)
            if row_id < 0:
                entry = held.get(row_id)
                if entry is not None:
                    entry.claimed = False
                continue
            prio = PRIORITY[row.kind]
            self.handed.pop(row_id, None)
            self.cursor[prio] = min(self.cursor.get(prio, 0), row_id - 1)

    def release(self, held: HeldRows) -> None:
        """Forgets what was handed out (settled rows stay settled)."""
        self.cursor.clear()
        self.handed.clear()
        self.alias.clear()
        held.release()

    def moved(self, held_id: int, new_id: int, created: float) -> None:
        """A held row in flight was written to the database as `new_id`."""
        self.alias[held_id] = new_id
        self.handed[new_id] = created

    def split(self, ids: Iterable[int]) -> tuple[list[int], list[tuple[int, float | None]]]:
        """The held ids and the stored (id, creation time) targets of acknowledged or refused ids."""
        held_ids: list[int] = []
        targets: list[tuple[int, float | None]] = []
        for given in ids:
            row_id = self.alias.pop(given, given)
            if row_id < 0:
                held_ids.append(row_id)
            elif row_id not in self.settled:
                targets.append((row_id, self.handed.pop(row_id, None)))
        return held_ids, targets

    def settle(self, store: DbStore, targets: list[tuple[int, float | None]]) -> list[Kind]:
        """Remembers stored rows that cannot be deleted now (taken out of the counts); raises sqlite3.Error if they
        cannot even be read."""
        found = store.meta([row_id for row_id, _ in targets])
        settled: list[Kind] = []
        for row_id, created in targets:
            meta = found.get(row_id)
            if meta is None or (created is not None and meta[2] != created):
                continue
            kind, size, stored_created = meta
            self.settled[row_id] = stored_created
            store.rows[kind] -= 1
            store.bytes[kind] -= size
            settled.append(kind)
        return settled


__all__ = ["SCAN_BATCH", "Handout"]
