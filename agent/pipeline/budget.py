"""A folder of numbered entries kept under a byte budget, oldest out first: the store under event snapshots and
hard-example samples.

Invariants:
- an entry is one or more files whose names match the store's pattern, the first group being an 8-digit number
  shared by the entry's files; the number grows by one per entry across restarts (it continues from the highest
  found), and eviction goes by it, never by the clock (a device's clock may be unset or jump at boot);
- every file is written atomically (`fsutil.write_atomic`, fsync of file and folder), in the order given, so the
  last file of an entry can mark it complete: at the first use the folder is scanned once, incomplete entries
  (a power cut between two files) and stray temp files are removed, and an in-memory index holds the rest;
- the managed files never exceed `max_bytes` in total (0 keeps nothing); other files are left alone and not
  counted; a full disk while writing evicts a few of the store's own oldest entries, then gives up;
- a failure is counted and logged once per kind, never raised from `add`: the caller gets None. Thread-safe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.fsutil import fsync_dir, write_atomic

ENOSPC_RETRIES = 3


@dataclass
class Entry:
    """One stored entry: its number and its files (name -> size)."""

    number: int
    files: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of all its files."""
        return sum(self.files.values())


class BudgetFolder:
    """Numbered entries in one folder, under a byte budget (see the module docstring)."""

    def __init__(
        self,
        folder: Path | str,
        max_bytes: int,
        name: re.Pattern[str],
        temp: re.Pattern[str],
        *,
        complete: Callable[[Entry], bool] = lambda _entry: True,
        what: str = "file",
        logger: logging.Logger | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.saved = 0
        self.evicted = 0
        self.removed = 0
        self.failures = 0
        self.last_error: str | None = None
        self._name = name
        self._temp = temp
        self._complete = complete
        self._what = what
        self._log = logger or logging.getLogger("agent.budget")
        self._entries: dict[
            int, Entry
        ] = {}  # in number order: sorted at the scan, appended with growing numbers
        self._total = 0
        self._next = 1
        self._scanned = False
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    @property
    def total_bytes(self) -> int:
        """Bytes held by the managed entries."""
        return self._total

    def entries(self) -> list[Entry]:
        """The entries held, oldest first (copies)."""
        with self._lock:
            self._scan()
            return [Entry(e.number, dict(e.files)) for e in self._entries.values()]

    def get(self, number: int) -> Entry | None:
        """The entry with this number (a copy), or None."""
        with self._lock:
            self._scan()
            found = self._entries.get(number)
            return None if found is None else Entry(found.number, dict(found.files))

    def add(self, files_for: Callable[[int], Sequence[tuple[str, bytes]]]) -> Entry | None:
        """Writes the files `files_for(number)` names as a new entry; None (counted, logged once) when it cannot."""
        with self._lock:
            if self.max_bytes <= 0 or not self._scan():
                return None
            number = self._next
            files = list(files_for(number))
            size = sum(len(data) for _, data in files)
            if size > self.max_bytes:
                self.fail("size", f"{self._what} of {size} bytes exceeds the budget of {self.max_bytes}")
                return None
            self._evict(self.max_bytes - size)
            written: list[str] = []
            for name, data in files:
                if not self._write(name, data):
                    for done in written:
                        with contextlib.suppress(OSError):
                            (self.folder / done).unlink()
                    return None
                written.append(name)
            entry = Entry(number, {name: len(data) for name, data in files})
            self._next = number + 1
            self._entries[number] = entry
            self._total += size
            self.saved += 1
            return Entry(number, dict(entry.files))

    def remove(self, number: int) -> bool:
        """Deletes an entry on request (not an eviction), last file first; False if unknown; OSError if it cannot."""
        with self._lock:
            self._scan()
            entry = self._entries.pop(number, None)
            if entry is None:
                return False
            self._total -= entry.size
            self.removed += 1
            try:
                for name in reversed(list(entry.files)):
                    with contextlib.suppress(FileNotFoundError):
                        (self.folder / name).unlink()
                fsync_dir(self.folder)
            except OSError as problem:
                self.fail("remove", f"cannot remove {self._what} {number:08d}: {_reason(problem)}")
                raise
            return True

    def status(self) -> dict[str, Any]:
        """JSON-ready figures."""
        with self._lock:
            return {
                "folder": str(self.folder),
                "count": len(self._entries),
                "bytes": self._total,
                "max_bytes": self.max_bytes,
                "saved": self.saved,
                "evicted": self.evicted,
                "failures": self.failures,
                "last_error": self.last_error,
            }

    # ------------------------------------------------------------------ internals (lock held)

    def _write(self, name: str, data: bytes) -> bool:
        for attempt in range(ENOSPC_RETRIES + 1):
            try:
                write_atomic(self.folder / name, data)
                return True
            except OSError as problem:
                if problem.errno == errno.ENOSPC and attempt < ENOSPC_RETRIES and self._entries:
                    self._evict_oldest()  # a full disk: make room from our own oldest, a few at most
                    continue
                self.fail(_kind(problem), f"{self._what} not saved in {self.folder}: {_reason(problem)}")
                return False
        return False  # pragma: no cover - the loop always returns

    def _scan(self) -> bool:
        if self._scanned:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            listing = list(self.folder.iterdir())
        except OSError as problem:
            self.fail(_kind(problem), f"{self._what} folder {self.folder} unusable: {_reason(problem)}")
            return False
        found: dict[int, Entry] = {}
        for path in listing:
            match = self._name.match(path.name)
            try:
                if match and path.is_file():
                    number = int(match.group(1))
                    found.setdefault(number, Entry(number)).files[path.name] = path.stat().st_size
                elif self._temp.match(path.name):
                    path.unlink()  # left by a power cut during a write
            except OSError:
                continue
        for number in sorted(found):
            entry = found[number]
            if self._complete(entry):
                self._entries[number] = entry
                continue
            for name in entry.files:  # a power cut between the files of one entry
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
        self._total = sum(entry.size for entry in self._entries.values())
        self._next = max(found, default=0) + 1
        self._scanned = True
        self._evict(self.max_bytes)
        return True

    def _evict(self, room: int) -> None:
        while self._entries and self._total > max(room, 0):
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        number = next(iter(self._entries))
        entry = self._entries.pop(number)
        for name in reversed(list(entry.files)):
            try:
                (self.folder / name).unlink()
            except FileNotFoundError:
                pass
            except (
                OSError
            ) as problem:  # reported, and forgotten: the budget must not wedge on one stubborn file
                self.fail("evict", f"cannot remove old {self._what} {name}: {_reason(problem)}")
        self._total -= entry.size
        self.evicted += 1

    def fail(self, kind: str, message: str) -> None:
        """Counts a failure of `kind` and logs it (a warning the first time of each kind, debug after)."""
        self.failures += 1
        self.last_error = message
        if kind in self._reported:
            self._log.debug("%s", message)
        else:
            self._reported.add(kind)
            self._log.warning("%s", message)


def _kind(problem: OSError) -> str:
    return errno.errorcode.get(problem.errno or 0, type(problem).__name__)


def _reason(problem: OSError) -> str:
    return problem.strerror or str(problem)


__all__ = ["BudgetFolder", "Entry"]
