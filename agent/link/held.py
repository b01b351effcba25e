"""Rows held in memory while the outbox's database cannot be written (pure: no I/O, no clock, no lock).

Invariants:
- the bytes held (payload + topic) never exceed `max_bytes`; to make room, rows of the lowest class are evicted
  first, oldest first within it, never a row of a higher class than the incoming one; when even that cannot make
  room nothing is evicted and the incoming row is refused;
- ids are negative, from the outbox's own sequence (so they never collide with a database id), and rows keep the
  order they were added in, overall and within a class;
- within a class the rows handed out (`claimed`) come before the others: `claim` takes the first unclaimed one and
  rows are only ever added at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from agent.link.kinds import KINDS, Kind, OutboxRow


@dataclass(slots=True)
class Held:
    """One row held in memory."""

    row: OutboxRow
    size: int
    claimed: bool = False


class HeldRows:
    """A bounded, prioritized in-memory queue of outbox rows."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._all: dict[int, Held] = {}
        self._by_class: list[dict[int, Held]] = [{} for _ in KINDS]
        self.rows = dict.fromkeys(KINDS, 0)
        self.bytes = dict.fromkeys(KINDS, 0)

    def __len__(self) -> int:
        return len(self._all)

    @property
    def total_bytes(self) -> int:
        """Bytes held, all classes."""
        return sum(self.bytes.values())

    def fits(self, size: int, prio: int) -> bool:
        """True if a row of `size` bytes and class `prio` can be added (evicting lower or equal classes)."""
        evictable = sum(self.bytes[KINDS[p]] for p in range(prio, len(KINDS)))
        return size <= self.max_bytes and self.total_bytes - evictable + size <= self.max_bytes

    def add(self, row: OutboxRow, size: int) -> tuple[bool, dict[Kind, int]]:
        """Adds `row` at the end of its class; returns whether it was added and how many rows were evicted, by class."""
        prio = KINDS.index(row.kind)
        evicted: dict[Kind, int] = {}
        if not self.fits(size, prio):
            return False, evicted
        for victim in range(len(KINDS) - 1, prio - 1, -1):
            queue = self._by_class[victim]
            while self.total_bytes + size > self.max_bytes and queue:
                oldest = next(iter(queue.values()))
                self.remove(oldest.row.id)
                evicted[oldest.row.kind] = evicted.get(oldest.row.kind, 0) + 1
        entry = Held(row, size)
        self._all[row.id] = entry
        self._by_class[prio][row.id] = entry
        self.rows[row.kind] += 1
        self.bytes[row.kind] += size
        return True, evicted

    def get(self, row_id: int) -> Held | None:
        """The held row with this id, if it is still here."""
        return self._all.get(row_id)

    def remove(self, row_id: int) -> Held | None:
        """Takes the row out (delivered, refused, evicted, expired or moved to the database); None if not here."""
        entry = self._all.pop(row_id, None)
        if entry is None:
            return None
        del self._by_class[KINDS.index(entry.row.kind)][row_id]
        self.rows[entry.row.kind] -= 1
        self.bytes[entry.row.kind] -= entry.size
        return entry

    def in_order(self) -> Iterator[Held]:
        """Every row, in the order they were added (a copy: the caller may remove while iterating)."""
        return iter(list(self._all.values()))

    def first(self, count: int) -> list[Held]:
        """The `count` rows added first."""
        return list(itertools.islice(self._all.values(), count))

    def oldest(self) -> float | None:
        """Creation time of the row added first, or None."""
        entry = next(iter(self._all.values()), None)
        return None if entry is None else entry.row.created

    def of_class(self, prio: int) -> Iterator[Held]:
        """The rows of one class, oldest first."""
        return iter(self._by_class[prio].values())

    def release(self) -> None:
        """Marks every row as not handed out."""
        for entry in self._all.values():
            entry.claimed = False

    def older_than(self, cutoff: float) -> list[Held]:
        """Rows created before `cutoff`."""
        return [entry for entry in self._all.values() if entry.row.created < cutoff]


__all__ = ["Held", "HeldRows"]
