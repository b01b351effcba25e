"""The outbox's storage and its faults: where rows live (the database or memory), what the disk can do now, and how
the outbox goes from one to the other and back.

`OutboxStorage` is the base class of `Outbox` (outbox.py), not a collaborator it owns: the queue operations there
(put, claim, ack, maintain, stats) and the fault handling here read and change the same state under the same lock
(the store, the rows held in memory, what was handed out, whether the database can be written, the drop counts), so
one object keeps that state in one place, built by `OutboxStorage.__init__`, instead of a second object that would
need all of it handed over. This module holds every transition of the storage condition; outbox.py only calls them.

Invariants (the private methods expect the lock held, but `_open`, which takes none because opening may wait on the
disk, and `_move_held`, which takes it per batch; the public ones take it themselves):
- `_writable` is True only while `_store` is a writable connection, nothing is held in memory and nothing is settled
  (delivered but not yet deleted): puts go to memory as long as any row is held, so within a class every stored row
  comes before every held one;
- `_store` is None only while no connection can even read the file (its rows wait out of sight until a retry opens it
  again); while the database cannot be written, the connection kept (or a read-only one, `_fall_back_to_reading`)
  still lets the stored rows be sent;
- the condition (`storage()`: ok, read-only, full, unavailable) changes only in `_set_condition`, which stamps `_since`
  and keeps every change of condition for `take_storage_changes`; it is full from the first SQLITE_FULL (`_full_seen`:
  the reserve, ballast.py, is given back) until the reserve can be made again (`_recovered`);
- a failure of the database (`_degrade`) never raises: it counts an error, sets the condition from `classify` and,
  unless one is due later, schedules a retry with backoff (`OutboxConfig.retry`), reset once it can be written again;
- a retry reopens the file (a fresh connection, or the same one on a full disk), deletes what was delivered meanwhile
  and moves the held rows into it, oldest first, MOVE_BATCH per transaction, letting the lock go between; a held row
  in flight keeps its old id for its ack (an alias, handout.py). Only when memory is empty does it become writable.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.backoff import Backoff
from agent.link.ballast import Ballast
from agent.link.config import OutboxConfig
from agent.link.dbstore import DbStore
from agent.link.errors import OutboxError
from agent.link.handout import Handout
from agent.link.held import HeldRows
from agent.link.kinds import KINDS, Kind
from agent.link.outboxstats import StorageStatus
from agent.link.payloads import StorageCondition
from agent.link.sqlitedb import Corrupt, classify, is_disk_full, open_database, open_readonly

log = logging.getLogger("agent.link")

MOVE_BATCH = 256
"""Held rows written to the database per transaction when it can be written again (the lock is let go between)."""


class OutboxStorage:
    """The outbox's state, its database connections and every change of its storage condition (base of `Outbox`)."""

    def __init__(self, path: Path, config: OutboxConfig, clock: Callable[[], float]) -> None:
        """Opens the database at `path`, or starts holding rows in memory if it cannot (never raises for a fault)."""
        self.path = path
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._dropped: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        self._errors = 0
        self._dirty = False
        self._checkpoint_lock = threading.Lock()
        self._closed = False
        self._store: DbStore | None = None
        self._held = HeldRows(self.config.memory_max_bytes)
        self._moved = 0
        self._writable = False
        self._full_seen = False
        self._condition: StorageCondition = "ok"
        self._reason: str | None = None
        self._since = clock()
        self._retry = Backoff(self.config.retry)
        self._next_retry = 0.0
        self._out = Handout()
        self._corrupt: list[Corrupt] = []
        self._changes: list[StorageStatus] = []
        self._ballast = Ballast(path.with_name(f"{path.name}.ballast"), self.config.reserve_bytes)
        self._checkpointer: sqlite3.Connection | None = None
        fresh, problem = self._open()
        with self._lock:
            if fresh is not None:
                self._attach(fresh)
            else:
                assert problem is not None
                self._degrade(problem)
                self._fall_back_to_reading()

    def _open(self) -> tuple[DbStore | None, BaseException | None]:
        """A writable store on a fresh connection, or the failure (no lock held: opening may wait on the disk)."""
        try:
            db, corrupt = open_database(self.path, self.config.sync, self._clock)
        except OutboxError as problem:
            return None, problem
        if corrupt is not None:
            with self._lock:
                self._corrupt.append(corrupt)
        try:
            store = DbStore(db, self.path, writable=True)
        except sqlite3.Error as problem:
            db.close()
            return None, problem
        self._ballast.ensure()
        return store, None

    def _attach(self, store: DbStore) -> None:
        """Makes `store` the database (lock held). Rows handed out from the older connection stay handed out (their
        acks delete them by id and creation time); the cursors start over."""
        old, self._store = self._store, store
        if old is not None:
            old.close()
        self._close_checkpointer()
        self._out.cursor.clear()
        self._writable = not self._held and not self._out.settled
        if self._writable:
            self._recovered()

    def _recovered(self) -> None:
        self._retry.reset()
        if self._ballast.present:
            self._full_seen = False
        self._set_condition("full" if self._full_seen else "ok", "disk full" if self._full_seen else None)

    def _degrade(self, problem: BaseException) -> None:
        """The database cannot take rows now: new ones are held in memory until a retry succeeds (lock held)."""
        condition, reason = classify(problem, self.path.parent)
        self._errors += 1
        self._writable = False
        if condition == "full":
            self._full_seen = True
            self._ballast.release()
        self._set_condition(condition, reason)
        now = time.monotonic()
        if self._next_retry <= now:
            self._next_retry = now + self._retry.next_delay()

    def _lose_store(self, problem: BaseException) -> None:
        """The connection cannot even be read: closed, its rows out of sight until a retry opens the file again."""
        log.warning("outbox %s: cannot read (%s); reopening later", self.path, problem)
        store, self._store = self._store, None
        if store is not None:
            store.close()
        self._out.cursor.clear()
        self._degrade(problem)

    def _fall_back_to_reading(self) -> None:
        if self._store is None:
            db = open_readonly(self.path)
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._store = DbStore(db, self.path, writable=False)

    def _set_condition(self, condition: StorageCondition, reason: str | None) -> None:
        if condition == self._condition and reason == self._reason:
            return
        was, self._condition, self._reason = self._condition, condition, reason
        if condition != was:
            self._since = self._clock()
            self._changes.append(self._status())
        if condition == "ok":
            log.info("outbox %s: storage recovered (was %s)", self.path, was)
        elif condition != was:
            log.warning("outbox %s: %s", self.path, self._status().describe())

    def storage(self) -> StorageStatus:
        """Whether the outbox can store (ok, read-only, full, unavailable), why not, and what is held in memory."""
        with self._lock:
            return self._status()

    def take_storage_changes(self) -> list[StorageStatus]:
        """Every change of the storage condition since the last call, oldest first (even one that lasted a moment)."""
        with self._lock:
            found, self._changes = self._changes, []
            return found

    def _status(self) -> StorageStatus:
        return StorageStatus(
            self._condition,
            self._reason,
            self._since,
            self._writable,
            {kind: count for kind, count in self._held.rows.items()},
            self._held.total_bytes,
            self._held.max_bytes,
            self._moved,
        )

    def take_corrupt(self) -> list[Corrupt]:
        """Corrupt databases moved aside since the last call (at open, or when a retry opened the file again)."""
        with self._lock:
            found, self._corrupt = self._corrupt, []
            return found

    def retry_storage(self) -> bool:
        """Tries now to open or write the database again and move what is held in memory there; True if it can store.

        `maintain` calls it when the backoff says so; it waits on the disk, never on the lock for long."""
        with self._lock:
            if self._closed:
                return False
            if self._writable:
                return True
            reuse = self._store is not None and self._store.writable and self._condition == "full"
        if not reuse:
            fresh, problem = self._open()
            with self._lock:
                if self._closed:
                    if fresh is not None:
                        fresh.close()
                    return False
                if fresh is None:
                    assert problem is not None
                    self._degrade(problem)
                    self._fall_back_to_reading()
                    return False
                self._attach(fresh)
                if self._writable:
                    return True
        else:
            self._ballast.ensure()
        return self._move_held()

    def _move_held(self) -> bool:
        """Deletes what was delivered meanwhile, then writes the held rows to the database, oldest first."""
        with self._lock:
            store = self._store
            if store is None or self._closed:
                return False
            if self._out.settled:
                try:
                    store.purge(self._out.settled.items())
                except (sqlite3.Error, OSError) as problem:
                    self._degrade(problem)
                    return False
                self._out.settled.clear()
        while True:
            with self._lock:
                if self._closed or self._store is not store:
                    return False
                if not self._held:
                    self._writable = True
                    self._dirty = True
                    self._recovered()
                    return True
                failure = self._move_batch(store)
                if failure is not None:
                    self._degrade(failure)
                    return False

    def _move_batch(self, store: DbStore) -> BaseException | None:
        batch = self._held.first(MOVE_BATCH)
        for attempt in range(2):
            evicted: dict[Kind, int] = {}
            try:
                placed, refused = store.insert_batch(batch, self.config.max_bytes, self._full_seen, evicted)
            except (sqlite3.Error, OSError) as problem:
                if attempt == 0 and is_disk_full(problem):
                    self._disk_full_seen()
                    self._checkpoint_here(store)
                    continue
                return problem
            for victim, count in evicted.items():
                self._count_drop(victim, "evicted", count)
            for entry in refused:
                self._held.remove(entry.row.id)
                self._count_drop(entry.row.kind, "full")
            for entry, new_id in placed:
                self._held.remove(entry.row.id)
                if entry.claimed:  # in flight: its ack names the held id
                    self._out.moved(entry.row.id, new_id, entry.row.created)
            self._moved += len(placed)
            return None
        return None  # pragma: no cover - the loop always returns

    # -- helpers shared with the queue ---------------------------------------------------------------------------

    def _close_checkpointer(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._checkpointer.close()
                self._checkpointer = None

    def _checkpoint_here(self, store: DbStore) -> None:
        try:
            store.checkpoint()
        except (sqlite3.Error, OSError) as problem:
            log.debug("outbox %s: checkpoint on a full disk failed (%s)", self.path, problem)

    def _disk_full_seen(self) -> None:
        self._full_seen = True
        if self._ballast.release():
            log.warning("outbox %s: disk full; reserve %s given back", self.path, self._ballast.path)
        if self._writable:
            self._set_condition("full", "disk full")

    def _count_drop(self, kind: Kind, reason: str, count: int = 1) -> None:
        reasons = self._dropped[kind]
        reasons[reason] = reasons.get(reason, 0) + count


__all__ = ["MOVE_BATCH", "OutboxStorage"]
