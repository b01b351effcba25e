"""Opening the outbox's SQLite file: WAL mode, the schema, recovery from a corrupt file, and what storage failures are.

Invariants: a database returned by `open_database` is in WAL mode with the requested synchronous level and the current
schema (a file from a newer agent is refused, not altered) and has just committed a write (so "opened" means
"writable now"); a file that is not a database or is malformed is moved aside (`NAME.corrupt-TIME`, with its `-wal`)
and replaced by an empty one, so a damaged SD card sector costs the queued messages, not the link, and the rows it
held are counted as far as they can be read (`Corrupt`); every failure to open is an `OutboxError` whose `cause` is
the underlying error, which `classify` turns into a storage condition (`read-only`, `full`, `unavailable`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.link.errors import OutboxError
from agent.link.payloads import StorageCondition

log = logging.getLogger("agent.link")

SCHEMA_VERSION = 1
SQLITE_FULL = 13
"""sqlite3.SQLITE_FULL, which Python 3.10 does not name."""
SQLITE_READONLY = 8
OUTBOX_COLUMNS = 8
"""Columns of an outbox row as SQLite stores it (the id, an alias of the rowid, is stored as NULL)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_prio_id ON outbox (prio, id);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A corrupt outbox that was moved aside: where, why, and how many rows it held (None: unreadable)."""

    path: Path
    moved_to: Path
    problem: str
    rows: int | None
    exact: bool
    """True when SQLite counted the rows; False when they were counted from the pages that remain."""


def _code(problem: BaseException) -> int | None:
    code = getattr(problem, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_disk_full(problem: BaseException) -> bool:
    """True for SQLite's "database or disk is full" and for ENOSPC."""
    if isinstance(problem, sqlite3.OperationalError):
        return _code(problem) == SQLITE_FULL or "database or disk is full" in str(problem)
    return isinstance(problem, OSError) and problem.errno in (errno.ENOSPC, errno.EDQUOT)


def is_read_only(problem: BaseException) -> bool:
    """True for SQLite's "attempt to write a readonly database" and for EROFS."""
    if isinstance(problem, sqlite3.OperationalError):
        return _code(problem) == SQLITE_READONLY or "readonly database" in str(problem)
    return isinstance(problem, OSError) and problem.errno == errno.EROFS


def probe_folder(folder: Path) -> OSError | None:
    """Writes and removes a small file in `folder`: None if that worked, else the OS error (EROFS, ENOSPC...).

    No fsync: the file systems of a device (ext4, f2fs, tmpfs) reserve the blocks at write(), which is where a full
    disk shows; this runs on the put that finds the database failing, once, and must stay quick."""
    probe = folder / f".outbox-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
    except OSError as problem:
        return problem
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def classify(problem: BaseException, folder: Path) -> tuple[StorageCondition, str]:
    """The storage condition a failure means, and a one-line reason; SQLite's vaguer errors are settled by a probe."""
    cause = problem.cause if isinstance(problem, OutboxError) and problem.cause is not None else problem
    if is_disk_full(cause):
        return "full", "disk full"
    if is_read_only(cause):
        return "read-only", "read-only file system"
    found = probe_folder(folder)  # "disk I/O error", "unable to open database file": ask the folder itself
    if found is not None and is_disk_full(found):
        return "full", f"disk full ({cause})"
    if found is not None and found.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "read-only file system" if found.errno == errno.EROFS else f"cannot write: {found.strerror}"
        return "read-only", f"{what} ({cause})"
    return "unavailable", str(cause) if found is None else f"{cause} ({found.strerror})"


def open_database(
    path: Path, sync: Literal["normal", "full"], clock: Callable[[], float]
) -> tuple[sqlite3.Connection, Corrupt | None]:
    """The outbox database at `path`, created if missing, moved aside and recreated if corrupt, and writable now."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _connect_and_prepare(path, sync), None
    except sqlite3.DatabaseError as problem:
        if isinstance(problem, sqlite3.OperationalError) and not _looks_corrupt(problem):
            raise OutboxError(f"cannot open the outbox {path}: {problem}", problem) from None
        corrupt = _move_aside(path, problem, clock)
        try:
            return _connect_and_prepare(path, sync), corrupt
        except (OSError, sqlite3.Error) as again:
            raise OutboxError(f"cannot recreate the outbox {path}: {again}", again) from None
    except OSError as problem:
        raise OutboxError(f"cannot open the outbox {path}: {problem}", problem) from None


def open_readonly(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to an existing outbox (to send what it holds while nothing can be written), or None."""
    if not path.is_file():
        return None
    for query in ("mode=ro", "mode=ro&immutable=1"):  # immutable: a WAL database whose -shm cannot be made
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(
                f"file:{path}?{query}", uri=True, isolation_level=None, check_same_thread=False
            )
            db.execute("SELECT count(*) FROM outbox").fetchone()
            return db
        except sqlite3.Error:
            if db is not None:
                db.close()
    return None


def probe_write(db: sqlite3.Connection) -> None:
    """Commits one small write (the schema version, unchanged); raises if the database cannot be written now."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _connect_and_prepare(path: Path, sync: Literal["normal", "full"]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA journal_size_limit=4194304")
        db.executescript(_SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise OutboxError(f"outbox {path} has schema {version}, this agent knows {SCHEMA_VERSION}")
        db.execute("SELECT count(*) FROM outbox").fetchone()
        probe_write(db)
    except BaseException:
        db.close()
        raise
    return db


def _looks_corrupt(problem: sqlite3.Error) -> bool:
    text = str(problem).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _move_aside(path: Path, problem: sqlite3.Error, clock: Callable[[], float]) -> Corrupt:
    aside = path.with_name(f"{path.name}.corrupt-{int(clock())}")
    try:
        path.replace(aside)
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}-wal").replace(Path(f"{aside}-wal"))
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}-shm").unlink()
    except OSError as again:
        raise OutboxError(
            f"outbox {path} is corrupt ({problem}) and cannot be moved aside: {again}", again
        ) from None
    rows, exact = count_rows(aside)
    lost = "an unknown number of" if rows is None else f"{'' if exact else 'about '}{rows}"
    log.error(
        "outbox %s is corrupt (%s); moved aside to %s with %s rows, starting empty",
        path,
        problem,
        aside,
        lost,
    )
    return Corrupt(path, aside, str(problem), rows, exact)


def count_rows(path: Path) -> tuple[int | None, bool]:
    """Rows in an outbox file: SQLite's count (read-only) if it can, else the rows on the table pages that remain."""
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0]), True
    except sqlite3.Error:
        pass
    finally:
        if db is not None:
            db.close()
    try:
        return count_leaf_rows(path.read_bytes()), False
    except (OSError, ValueError, struct.error, IndexError):
        return None, False


def count_leaf_rows(data: bytes) -> int | None:
    """Outbox rows on the table leaf pages of a (damaged) database image, freelist pages left out; None if no header.

    Reads the file format directly (https://sqlite.org/fileformat2.html): a cell whose record has the outbox's
    column count is a row. Pages lost to truncation are simply not there; the count is what remains."""
    if len(data) < 100 or not data.startswith(b"SQLite format 3\0"):
        return None
    page_size = struct.unpack(">H", data[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return None
    pages = len(data) // page_size
    free = _freelist(data, page_size, pages)
    count = 0
    for number in range(1, pages + 1):
        if number in free:
            continue
        start = (number - 1) * page_size
        header = start + (100 if number == 1 else 0)
        if data[header] != 0x0D:  # a table b-tree leaf
            continue
        cells = struct.unpack(">H", data[header + 3 : header + 5])[0]
        for i in range(cells):
            offset = start + struct.unpack(">H", data[header + 8 + 2 * i : header + 10 + 2 * i])[0]
            if _record_columns(data, offset) == OUTBOX_COLUMNS:
                count += 1
    return count


def _freelist(data: bytes, page_size: int, pages: int) -> set[int]:
    free: set[int] = set()
    trunk = struct.unpack(">I", data[32:36])[0]
    while 0 < trunk <= pages and trunk not in free:
        free.add(trunk)
        start = (trunk - 1) * page_size
        following, leaves = struct.unpack(">II", data[start : start + 8])
        for i in range(min(leaves, page_size // 4 - 2)):
            free.add(struct.unpack(">I", data[start + 8 + 4 * i : start + 12 + 4 * i])[0])
        trunk = following
    return free


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[offset + i]
        if i == 8:
            return (value << 8) | byte, offset + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, offset + i + 1
    raise ValueError("bad varint")  # pragma: no cover - the loop always returns


def _record_columns(data: bytes, offset: int) -> int:
    _payload_size, offset = _varint(data, offset)
    _rowid, offset = _varint(data, offset)
    header_size, position = _varint(data, offset)
    end = offset + header_size
    columns = 0
    while position < end:
        _serial, position = _varint(data, position)
        columns += 1
    return columns


__all__ = [
    "SCHEMA_VERSION",
    "Corrupt",
    "classify",
    "count_leaf_rows",
    "count_rows",
    "is_disk_full",
    "is_read_only",
    "open_database",
    "open_readonly",
    "probe_folder",
    "probe_write",
]
