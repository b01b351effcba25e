"""One open connection to the outbox database: rows and bytes by class, bounded inserts, deletes, scans.

Invariants: `rows` and `bytes` count the rows in the database by class, as of the last statement that succeeded
(`recount` re-reads them after a rolled-back transaction); a statement that fails raises `sqlite3.Error` or `OSError`
to the caller (the outbox), which decides what a failure means; a read-only connection (`writable` False) is only
read. No lock here: the outbox serialises every call.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from agent.link.held import Held
from agent.link.kinds import KINDS, Kind, OutboxRow

DISK_FULL_EVICT_BYTES = 64 * 1024
"""On a full disk, evict at least this much of the lower classes at once: SQLite reuses whole free pages only, and
rows of every class share the table's pages, so a few hundred bytes of telemetry rarely free one."""


class DbStore:
    """The outbox rows in one SQLite database."""

    def __init__(self, db: sqlite3.Connection, path: Path, writable: bool) -> None:
        self.db = db
        self.path = path
        self.writable = writable
        self.rows = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)
        self.recount()

    @property
    def total_bytes(self) -> int:
        """Bytes stored, all classes."""
        return sum(self.bytes.values())

    def recount(self) -> None:
        """Re-reads rows and bytes by class from the database."""
        self.rows = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)
        for prio, count, size in self.db.execute(
            "SELECT prio, count(*), coalesce(sum(size), 0) FROM outbox GROUP BY prio"
        ):
            kind = KINDS[prio]
            self.rows[kind], self.bytes[kind] = int(count), int(size)

    def rollback(self) -> None:
        """Ends a failed transaction, if one is open."""
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.rollback()

    def insert(
        self, kind: Kind, topic: str, payload: bytes, qos: int, retain: bool, size: int, created: float
    ) -> int:
        """Stores one row; returns its id."""
        cursor = self.db.execute(
            "INSERT INTO outbox (prio, topic, payload, qos, retain, size, created) VALUES (?,?,?,?,?,?,?)",
            (KINDS.index(kind), topic, payload, qos, int(retain), size, created),
        )
        self.rows[kind] += 1
        self.bytes[kind] += size
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def insert_batch(
        self, batch: list[Held], max_bytes: int, disk_full: bool, evicted: dict[Kind, int]
    ) -> tuple[list[tuple[Held, int]], list[Held]]:
        """Stores held rows in one transaction, in order, within `max_bytes` (on a full disk in freed pages); returns
        the rows placed with their new ids and the rows refused by the bound. On failure nothing is changed (the
        counts are re-read) and the error is raised; `evicted` is then meaningless."""
        placed: list[tuple[Held, int]] = []
        refused: list[Held] = []
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for entry in batch:
                row, prio = entry.row, KINDS.index(entry.row.kind)
                if disk_full:
                    self.ensure_free_pages(entry.size, prio, evicted)
                if not self.make_room(entry.size, prio, max_bytes, evicted):
                    refused.append(entry)
                    continue
                new_id = self.insert(
                    row.kind, row.topic, row.payload, row.qos, row.retain, entry.size, row.created
                )
                placed.append((entry, new_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.rollback()
            with contextlib.suppress(sqlite3.Error):
                self.recount()
            raise
        return placed, refused

    def make_room(self, size: int, prio: int, max_bytes: int, evicted: dict[Kind, int]) -> bool:
        """Evicts rows of class `prio` or lower, lowest class and oldest first, until `size` more bytes fit the bound.

        Adds what it evicted to `evicted`; True if the row now fits. Raises if a DELETE fails (what it evicted before
        stays evicted and counted)."""
        target = self.total_bytes + size - max_bytes
        if target <= 0:
            return True
        if sum(self.bytes[KINDS[p]] for p in range(prio, len(KINDS))) < target:
            return False
        self._evict(range(len(KINDS) - 1, prio - 1, -1), target, evicted)
        return self.total_bytes + size <= max_bytes

    def make_disk_room(self, size: int, prio: int, evicted: dict[Kind, int]) -> bool:
        """On a full disk: evicts lower classes (and older rows of the same class, except events) to free pages.

        At least max(2 * size, DISK_FULL_EVICT_BYTES) when there is that much, or everything evictable if that is at
        least 2 * size; nothing if even that would not help. Events are never evicted for the disk (they wait in
        memory instead). True if something was evicted."""
        victims = range(len(KINDS) - 1, max(prio, 1) - 1, -1)
        evictable = sum(self.bytes[KINDS[p]] for p in victims)
        if evictable < 2 * size:
            return False
        return self._evict(victims, max(2 * size, DISK_FULL_EVICT_BYTES), evicted) > 0

    def ensure_free_pages(self, size: int, prio: int, evicted: dict[Kind, int]) -> None:
        """On a full disk: makes sure a row of `size` bytes fits in free pages of the file (evicting if not), so that
        neither the insert nor the next checkpoint has to grow the file."""
        page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        needed = size // page_size + 4  # its pages, and a split of each index
        if int(self.db.execute("PRAGMA freelist_count").fetchone()[0]) < needed:
            self.make_disk_room(size, prio, evicted)

    def _evict(self, victims: Iterable[int], target: int, evicted: dict[Kind, int]) -> int:
        freed_total = 0
        for victim in victims:
            kind = KINDS[victim]
            while freed_total < target and self.rows[kind] > 0:
                rows = self.db.execute(
                    "SELECT id, size FROM outbox WHERE prio = ? ORDER BY id LIMIT 64", (victim,)
                ).fetchall()
                if not rows:
                    break
                ids: list[int] = []
                freed = 0
                for row_id, row_size in rows:
                    ids.append(row_id)
                    freed += row_size
                    if freed_total + freed >= target:
                        break
                marks = ",".join("?" * len(ids))
                self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
                self.rows[kind] -= len(ids)
                self.bytes[kind] -= freed
                evicted[kind] = evicted.get(kind, 0) + len(ids)
                freed_total += freed
        return freed_total

    def delete(self, targets: list[tuple[int, float | None]]) -> list[Kind]:
        """Deletes rows by id (and creation time, when known: an id of another database is never taken for one of
        this one) in one transaction; returns the class of each row deleted."""
        removed: list[Kind] = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for row_id, created in targets:
                if created is None:
                    found = self.db.execute(
                        "SELECT prio, size FROM outbox WHERE id = ?", (row_id,)
                    ).fetchone()
                    self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                else:
                    found = self.db.execute(
                        "SELECT prio, size FROM outbox WHERE id = ? AND created = ?", (row_id, created)
                    ).fetchone()
                    self.db.execute("DELETE FROM outbox WHERE id = ? AND created = ?", (row_id, created))
                if found is not None:
                    removed.append(KINDS[found[0]])
                    self.rows[KINDS[found[0]]] -= 1
                    self.bytes[KINDS[found[0]]] -= int(found[1])
            self.db.execute("COMMIT")
        except BaseException:
            self.rollback()
            self.recount()
            raise
        return removed

    def purge(self, targets: Iterable[tuple[int, float]]) -> None:
        """Deletes rows already taken out of the counts (delivered while the database could not be written)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("DELETE FROM outbox WHERE id = ? AND created = ?", list(targets))
            self.db.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise

    def meta(self, ids: list[int]) -> dict[int, tuple[Kind, int, float]]:
        """Class, size and creation time of the rows with these ids that are stored."""
        found: dict[int, tuple[Kind, int, float]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, prio, size, created in self.db.execute(
                f"SELECT id, prio, size, created FROM outbox WHERE id IN ({marks})", chunk
            ):
                found[int(row_id)] = (KINDS[prio], int(size), float(created))
        return found

    def scan(self, prio: int, after: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows of one class with ids above `after`, in id order."""
        kind = KINDS[prio]
        return [
            OutboxRow(row_id, kind, topic, bytes(payload), qos, bool(retain), created)
            for row_id, topic, payload, qos, retain, created in self.db.execute(
                "SELECT id, topic, payload, qos, retain, created FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?",
                (prio, after, limit),
            )
        ]

    def expire(self, cutoff: float) -> dict[Kind, int]:
        """Deletes rows created before `cutoff`; returns how many, by class."""
        counts = self.db.execute(
            "SELECT prio, count(*), coalesce(sum(size), 0) FROM outbox WHERE created < ? GROUP BY prio",
            (cutoff,),
        ).fetchall()
        if not counts:
            return {}
        self.db.execute("DELETE FROM outbox WHERE created < ?", (cutoff,))
        expired: dict[Kind, int] = {}
        for prio, count, size in counts:
            kind = KINDS[prio]
            self.rows[kind] -= count
            self.bytes[kind] -= size
            expired[kind] = int(count)
        return expired

    def oldest(self) -> float | None:
        """Creation time of the oldest row, or None."""
        first = self.db.execute("SELECT min(created) FROM outbox").fetchone()[0]
        return None if first is None else float(first)

    def checkpoint(self) -> None:
        """A passive WAL checkpoint on this connection (on a full disk: lets the WAL start over instead of growing)."""
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        """Closes the connection (a passive checkpoint first, when it is writable)."""
        if self.writable:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        with contextlib.suppress(sqlite3.Error):
            self.db.close()


__all__ = ["DISK_FULL_EVICT_BYTES", "DbStore"]
