"""The durable outbox: messages wait here (SQLite, WAL) until the broker acknowledges them.

Order: messages leave by class, then by insertion: every waiting event before any result, every result before any
telemetry; within a class, strictly in the order `put` stored them. A higher class therefore overtakes a backlog of a
lower one, which is what an operator wants after an outage.

Where rows live: in the database (ids > 0, AUTOINCREMENT, never reused) while it can be written; while it cannot
(read-only, full, missing, corrupt and not replaceable) every new row is held in memory instead (ids < 0, bounded by
`memory_max_bytes`), sent from there when connected, and written to the database, oldest first, once it can be again
(the upkeep retries opening and writing with backoff, `OutboxConfig.retry`, never a put). Puts go to memory as long as
any row is held, so within a class every stored row comes before every held one and the order is kept across both.
This module is the queue; opening the database, its faults, the storage condition and the retries that move held
rows back are its base class, `OutboxStorage` in outbox_faults.py, which states their invariants.

Handing out: `claim` gives the next rows not yet handed out (a cursor per class over the database, plus the ids
handed out above it; a flag per held row), `unclaim` gives back rows paho did not take, `release` (the connection was
lost) forgets what was handed out, so sending resumes from the oldest row still waiting. A held row moved into the
database while in flight keeps its old id for its ack (an alias). `pending` is a read-only look in send order.

Delivery is at least once: a row is deleted only when the broker acknowledges it (PUBACK for QoS 1, or when paho hands
a QoS 0 message to the socket), so a crash or a lost connection between the send and the ack sends it again. A stored
row acknowledged while the database cannot be written is remembered and deleted once it can (a restart before that
sends it again). Events carry a unique id for receivers to dedupe on.

Bounds, checked on every put:
- bytes (payload + topic) in the database at most `max_bytes`, in memory at most `memory_max_bytes`: to make room,
  rows of the lowest class are evicted first, oldest first within it, and never rows of a higher class than the
  incoming one; if that cannot free enough, the incoming row is refused. A row larger than `max_bytes` is refused.
- age: rows older than `max_age_s` (wall clock) are deleted by `maintain`.
Every row that leaves without an ack is counted in `stats().dropped[kind][reason]`, reason one of: evicted (pushed out
by a newer row), full (refused: no room within `max_bytes`), too_large, expired, rejected (the broker or paho refused
it), disk_full / error (the database could not take it and memory had no room either), closed (held in memory at
`close` and nothing could store it).

A full disk never raises and, while lower classes hold room, never costs an event. In WAL mode even a DELETE needs
room, so: on SQLITE_FULL the outbox gives back its reserve (`reserve_bytes`, the ballast file, ballast.py) and
checkpoints, so that the WAL starts over in its own file (the reserve covers what the checkpoint adds to the
database: below LOW_SPACE_BYTES free the outbox checkpoints every quarter reserve stored); from then on each row goes
into free pages of the file, made by evicting results and telemetry (older rows of the same class too, for results
and telemetry; events are never evicted for the disk), so neither the insert nor the next checkpoint grows the file.
What still cannot be stored is held in memory. The storage condition (`storage()`: ok, read-only, full, unavailable,
with the reason; every change is kept for `take_storage_changes`) is full from the first SQLITE_FULL until the
reserve can be made again.

Durability bound:
- process crash (SIGKILL, OOM kill): nothing that `put` stored in the database is lost; each put is its own committed
  transaction, in the WAL file, which the OS keeps once the write() returned. Rows held in memory are lost.
- power cut, `sync = "normal"` (default): SQLite does not fsync on commit, so the puts since the last checkpoint can be
  lost: at most `checkpoint_interval_s` (default 5 s) of messages, plus a WAL auto-checkpoint's worth at 1000 pages.
  `maintain` checkpoints (which fsyncs the WAL) when something was written. The database itself stays consistent.
- power cut, `sync = "full"`: every commit is fsynced; nothing that `put` stored in the database is lost (slower: one
  fsync per put, and more SD card wear).
- acks are deletes: a power cut can undo recent deletes, which only re-sends (duplicates), never loses.
Measured on the development machine (scripts/bench_link.py, tests/test_outbox.py): `put` of a 200-byte event takes
about 40-60 µs with sync normal and about 200 µs with sync full.

Thread safety: one lock for puts, reads, claims and deletes (the loop thread puts, the link thread drains and acks,
the upkeep thread retries); opening a database happens outside it; checkpoints use a second connection outside it,
so an fsync never stalls another put (only on a full disk does a put checkpoint inside it, to make room).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agent.link.ballast import free_bytes
from agent.link.config import OutboxConfig
from agent.link.dbstore import DbStore
from agent.link.errors import OutboxError
from agent.link.kinds import KINDS, PRIORITY, Kind, OutboxRow
from agent.link.outbox_faults import OutboxStorage
from agent.link.outboxstats import OutboxStats, StorageStatus
from agent.link.sqlitedb import is_disk_full

log = logging.getLogger("agent.link")

LOW_SPACE_BYTES = 16 * 1024 * 1024
"""Below this much free disk the outbox checkpoints every quarter reserve of rows stored (see `_tight`)."""


class Outbox(OutboxStorage):
    """A bounded, prioritized, durable queue of MQTT messages, held in memory while its disk fails."""

    def __init__(
        self, path: Path, config: OutboxConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(path, config or OutboxConfig(), clock)  # opens the database, or holds rows in memory
        self._puts = 0
        self._last_checkpoint = 0.0
        self._unchecked = 0
        """Bytes stored since the last checkpoint: a checkpoint may have to grow the file by about that much."""
        self._tight = False
        """Free disk is below LOW_SPACE_BYTES: checkpoint every reserve_bytes / 4 stored, so that on a full disk the
        reserve covers the checkpoint that lets the WAL start over (the checkpoint adds the new pages to the file)."""
        self._held_seq = 0

    # -- writing -------------------------------------------------------------------------------------------------

    def put(self, kind: Kind, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Stores a message to send; False if it was dropped (counted in stats); never raises for a storage failure."""
        if kind not in PRIORITY:
            raise OutboxError(f"unknown outbox kind {kind!r}; expected one of {', '.join(KINDS)}")
        if qos not in (0, 1, 2):
            raise OutboxError(f"invalid QoS {qos!r}")
        size = len(payload) + len(topic.encode("utf-8"))
        with self._lock:
            if self._closed:
                self._count_drop(kind, "closed")
                return False
            if size > self.config.max_bytes:
                self._count_drop(kind, "too_large")
                return False
            created = self._clock()
            stored: bool | BaseException = False
            if self._writable and self._store is not None:
                stored = self._put_in_database(self._store, kind, topic, payload, qos, retain, size, created)
                if stored is True:
                    self._puts += 1
                    self._dirty = True
                    self._unchecked += size
                elif stored is False:
                    return False
                else:
                    self._degrade(stored)
            if stored is not True:
                return self._hold(OutboxRow(0, kind, topic, payload, qos, retain, created), size)
            due = self._tight and self._unchecked >= self.config.reserve_bytes // 4
        if due:  # low on disk: keep what a checkpoint must add to the file well within the reserve
            self._checkpoint()
        return True

    def _put_in_database(
        self,
        store: DbStore,
        kind: Kind,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        size: int,
        created: float,
    ) -> bool | BaseException:
        """True: stored; False: refused by the byte bound (counted); else the storage failure."""
        prio = PRIORITY[kind]
        evicted: dict[Kind, int] = {}
        try:
            for attempt in range(3):
                try:
                    if attempt >= 1:
                        # The disk is full: give back the reserve and checkpoint, so that the WAL starts over in
                        # its own file instead of growing (what the checkpoint adds to the database is covered by
                        # the reserve: see `_tight`), then try again.
                        self._disk_full_seen()
                        self._checkpoint_here(store)
                    if self._full_seen and attempt < 2:
                        # No room to grow: the row goes into pages freed by evicting the lower classes.
                        store.ensure_free_pages(size, prio, evicted)
                    if not store.make_room(size, prio, self.config.max_bytes, evicted):
                        self._count_drop(kind, "full")
                        return False
                    store.insert(kind, topic, payload, qos, retain, size, created)
                    return True
                except (sqlite3.Error, OSError) as problem:
                    store.rollback()
                    if not is_disk_full(problem) or attempt == 2:
                        return problem
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            for victim, count in evicted.items():
                self._count_drop(victim, "evicted", count)

    def _hold(self, row: OutboxRow, size: int) -> bool:
        self._held_seq += 1
        row = OutboxRow(-self._held_seq, row.kind, row.topic, row.payload, row.qos, row.retain, row.created)
        added, evicted = self._held.add(row, size)
        for victim, count in evicted.items():
            self._count_drop(victim, "evicted", count)
        if not added:
            self._count_drop(row.kind, "disk_full" if self._condition == "full" else "error")
            return False
        self._puts += 1
        return True

    # -- handing out and settling --------------------------------------------------------------------------------

    def claim(self, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows not yet handed out, in send order; handed out until acked, unclaimed or released."""
        with self._lock:
            if self._closed:
                return []
            found, problem = self._out.claim(self._store, self._held, limit)
            if problem is not None:  # what the file holds waits until it can be read again; memory goes on
                self._lose_store(problem)
                found += self._out.claim(None, self._held, limit - len(found))[0]
            return found

    def unclaim(self, rows: Iterable[OutboxRow]) -> None:
        """Gives back rows that were claimed but not sent (paho would not take them now); they go out next."""
        with self._lock:
            self._out.unclaim(self._held, rows)

    def release(self) -> None:
        """Forgets what was handed out (the connection is gone): every waiting row will be handed out again."""
        with self._lock:
            self._out.release(self._held)

    def pending(self, limit: int, after: Mapping[int, int] | None = None) -> list[OutboxRow]:
        """A look at up to `limit` waiting rows in send order, skipping stored ids at or below `after[prio]`."""
        after = after or {}
        found: list[OutboxRow] = []
        with self._lock:
            if self._closed:
                return []
            for prio, kind in enumerate(KINDS):
                store = self._store
                if len(found) < limit and store is not None and store.rows[kind] > 0:
                    try:
                        rows = store.scan(
                            prio, after.get(prio, 0), limit - len(found) + len(self._out.settled)
                        )
                    except sqlite3.Error as problem:
                        self._lose_store(problem)
                        rows = []
                    found.extend(row for row in rows if row.id not in self._out.settled)
                    del found[limit:]
                for entry in self._held.of_class(prio):
                    if len(found) >= limit:
                        break
                    found.append(entry.row)
        return found

    def ack(self, ids: Iterable[int]) -> int:
        """Deletes delivered rows (ids already gone are ignored); returns how many were taken out."""
        return self._remove(list(ids), reason=None)

    def reject(self, ids: Iterable[int], reason: str = "rejected") -> int:
        """Deletes rows that will never be delivered (the broker refused them), counting them as dropped."""
        return self._remove(list(ids), reason=reason)

    def _remove(self, ids: list[int], reason: str | None) -> int:
        if not ids:
            return 0
        with self._lock:
            if self._closed:
                return 0
            removed: list[Kind] = []
            held_ids, targets = self._out.split(ids)
            for row_id in held_ids:
                entry = self._held.remove(row_id)
                if entry is not None:
                    removed.append(entry.row.kind)
            if targets:
                removed += self._remove_stored(targets)
            if reason is not None:
                for kind in removed:
                    self._count_drop(kind, reason)
            return len(removed)

    def _remove_stored(self, targets: list[tuple[int, float | None]]) -> list[Kind]:
        store = self._store
        if store is None:
            return []
        if store.writable:
            try:
                removed = store.delete(targets)
                self._dirty = True
                return removed
            except (sqlite3.Error, OSError) as problem:
                if self._writable:
                    log.warning(
                        "outbox %s: cannot delete delivered rows (%s); deleting them later",
                        self.path,
                        problem,
                    )
                    self._degrade(problem)
        try:  # remember them: excluded from now on, deleted once the database can be written
            return self._out.settle(store, targets)
        except sqlite3.Error as problem:
            self._lose_store(problem)
            return []

    # -- upkeep --------------------------------------------------------------------------------------------------

    def maintain(self, force_checkpoint: bool = False) -> None:
        """Drops expired rows, retries a failed database when due, remakes the reserve, checkpoints when due."""
        if self._closed:
            return
        self._expire()
        now = time.monotonic()
        with self._lock:
            retry = not self._writable and now >= self._next_retry
            full = self._full_seen
            remake = self._writable and (full or not self._ballast.present)
        if retry:
            with self._lock:
                self._next_retry = now + self._retry.next_delay()
            self.retry_storage()
        elif remake and self._ballast.ensure() and full:  # the reserve is back: the disk has room again
            with self._lock:
                if self._writable:
                    self._recovered()
        free = free_bytes(self.path.parent)
        self._tight = self.config.reserve_bytes > 0 and free is not None and free < LOW_SPACE_BYTES
        due = now - self._last_checkpoint >= self.config.checkpoint_interval_s
        if self._dirty and self._writable and (due or force_checkpoint):
            self._checkpoint()

    def _expire(self) -> None:
        cutoff = self._clock() - self.config.max_age_s
        with self._lock:
            if self._closed:
                return
            for entry in self._held.older_than(cutoff):
                self._held.remove(entry.row.id)
                self._count_drop(entry.row.kind, "expired")
            store = self._store
            if store is None or not self._writable:  # stored rows expire once the database can be written
                return
            try:
                expired = store.expire(cutoff)
            except (sqlite3.Error, OSError) as problem:
                store.rollback()
                self._errors += 1
                log.warning("outbox %s: cannot drop expired rows (%s)", self.path, problem)
                return
            for kind, count in expired.items():
                self._count_drop(kind, "expired", count)
            if expired:
                self._dirty = True

    def _checkpoint(self) -> None:
        """A passive checkpoint on the second connection (outside the main lock: its fsync never stalls a put)."""
        self._dirty = False
        self._unchecked = 0
        self._last_checkpoint = time.monotonic()
        failure: sqlite3.Error | None = None
        for attempt in range(2):
            with self._checkpoint_lock:
                try:
                    if self._checkpointer is None:
                        self._checkpointer = sqlite3.connect(
                            self.path, isolation_level=None, check_same_thread=False
                        )
                    self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    failure = None
                except sqlite3.Error as problem:
                    failure = problem
            if failure is None or attempt == 1 or not is_disk_full(failure):
                break
            with self._lock:  # the disk just filled up: the reserve is for this checkpoint
                self._disk_full_seen()
        if failure is not None:
            self._dirty = True
            with self._lock:
                self._errors += 1
                known = self._condition != "ok"
            (log.debug if known else log.warning)("outbox %s: checkpoint failed (%s)", self.path, failure)

    def stats(self) -> OutboxStats:
        """Rows and bytes waiting by class (stored and held), drops by class and reason, and the storage condition."""
        with self._lock:
            store = self._store
            rows: dict[str, int] = {kind: count for kind, count in self._held.rows.items()}
            sizes: dict[str, int] = {kind: size for kind, size in self._held.bytes.items()}
            oldest = self._held.oldest()
            if store is not None:
                for kind in KINDS:
                    rows[kind] += store.rows[kind]
                    sizes[kind] += store.bytes[kind]
                if not self._closed and any(store.rows.values()):
                    with contextlib.suppress(sqlite3.Error):
                        first = store.oldest()
                        if first is not None:
                            oldest = first if oldest is None else min(first, oldest)
            return OutboxStats(
                rows=rows,
                bytes=sizes,
                max_bytes=self.config.max_bytes,
                dropped={kind: dict(reasons) for kind, reasons in self._dropped.items()},
                puts=self._puts,
                disk_full=self._condition == "full",
                errors=self._errors,
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
                path=str(self.path),
                storage=self._condition,
                storage_reason=self._reason,
                held_rows={kind: count for kind, count in self._held.rows.items()},
                held_bytes=self._held.total_bytes,
                memory_max_bytes=self._held.max_bytes,
            )

    def close(self) -> None:
        """Writes what is held in memory if it can, checkpoints and closes; later puts are dropped (closed)."""
        with self._lock:
            if self._closed:
                return
            held = len(self._held) > 0
        if held:
            self.retry_storage()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._held:
                log.warning(
                    "outbox %s: %d messages held in memory are lost (%s)",
                    self.path,
                    len(self._held),
                    self._reason,
                )
                for entry in self._held.in_order():
                    self._held.remove(entry.row.id)
                    self._count_drop(entry.row.kind, "closed")
            if self._store is not None:
                self._store.close()
            self._close_checkpointer()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_outbox(state_dir: Path, config: OutboxConfig | None = None) -> Outbox:
    """Opens (creating if needed) the outbox at `config.path` or `state_dir/outbox.sqlite`."""
    config = config or OutboxConfig()
    return Outbox(config.resolve_path(state_dir), config)


__all__ = [
    "KINDS",
    "PRIORITY",
    "Kind",
    "Outbox",
    "OutboxRow",
    "OutboxStats",
    "StorageStatus",
    "open_outbox",
]
