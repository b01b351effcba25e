"""The outbox's reserve on a full disk: a ballast file next to the database, given back when SQLite reports it full.

At 100 % full a WAL database cannot even delete (a DELETE appends pages to the WAL), so the outbox could not evict
telemetry to make room for an event. The ballast holds `size` bytes of the disk while there is room to spare; on
SQLITE_FULL the outbox removes it, which lets the DELETE of lower classes and the INSERT of the event run, and the
outbox lives on the pages it frees from then on. It is made again only when the disk has room for it twice over, so
it never takes the last free space.

Invariants: the file is the device's own (mode 0600); it is fully allocated (posix_fallocate, then fsync), never
sparse, so removing it really frees `size` bytes; size 0 disables it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOM_FACTOR = 2
"""The ballast is made only when the disk has ROOM_FACTOR times its size free."""


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in `folder`'s file system, or None if unknown."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


class Ballast:
    """A reserve of `size` bytes at `path`."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def present(self) -> bool:
        """True if the reserve is in place (always True when disabled: there is nothing to give)."""
        return self.size <= 0 or self.path.is_file()

    def ensure(self) -> bool:
        """Makes the reserve if it is missing and the disk has room for it twice over; True if it is in place."""
        if self.present:
            return True
        free = free_bytes(self.path.parent)
        if free is None or free < ROOM_FACTOR * self.size:
            return False
        temp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.posix_fallocate(fd, 0, self.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            temp.replace(self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            return False
        return True

    def release(self) -> bool:
        """Removes the reserve, freeing its bytes; True if there was one to remove."""
        if self.size <= 0:
            return False
        try:
            self.path.unlink()
        except OSError:
            return False
        return True


__all__ = ["ROOM_FACTOR", "Ballast", "free_bytes"]
