"""Opening the outbox's SQLite file: WAL mode, the schema, recovery from a corrupt file, and what a full disk looks like.

Invariants: the database returned is in WAL mode with the requested synchronous level and the current schema (a file
from a newer agent is refused, not altered); a file that is not a database or is malformed is moved aside
(`NAME.corrupt-TIME`) and replaced by an empty one, so a damaged SD card sector costs the queued messages, not the
link; every failure to open is an `OutboxError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.link.errors import OutboxError

log = logging.getLogger("agent.link")

SCHEMA_VERSION = 1
SQLITE_FULL = 13
"""sqlite3.SQLITE_FULL, which Python 3.10 does not name."""

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


def is_disk_full(problem: BaseException) -> bool:
    """True for SQLite's "database or disk is full" and for ENOSPC."""
    if isinstance(problem, sqlite3.OperationalError):
        code = getattr(problem, "sqlite_errorcode", None)
        return code == SQLITE_FULL or "database or disk is full" in str(problem)
    return isinstance(problem, OSError) and problem.errno == errno.ENOSPC


def open_database(
    path: Path, sync: Literal["normal", "full"], clock: Callable[[], float]
) -> sqlite3.Connection:
    """The outbox database at `path`, created if missing, moved aside and recreated if corrupt."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _connect_and_prepare(path, sync)
    except sqlite3.DatabaseError as problem:
        if isinstance(problem, sqlite3.OperationalError) and not _looks_corrupt(problem):
            raise OutboxError(f"cannot open the outbox {path}: {problem}") from None
        aside = path.with_name(f"{path.name}.corrupt-{int(clock())}")
        log.error("outbox %s is corrupt (%s); moved aside to %s, starting empty", path, problem, aside)
        try:
            path.replace(aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
            return _connect_and_prepare(path, sync)
        except (OSError, sqlite3.Error) as again:
            raise OutboxError(f"cannot recreate the outbox {path}: {again}") from None
    except OSError as problem:
        raise OutboxError(f"cannot open the outbox {path}: {problem}") from None


def _connect_and_prepare(path: Path, sync: Literal["normal", "full"]) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        db.execute("PRAGMA journal_size_limit=4194304")
        db.executescript(_SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise OutboxError(f"outbox {path} has schema {version}, this agent knows {SCHEMA_VERSION}")
        db.execute("SELECT count(*) FROM outbox").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _looks_corrupt(problem: sqlite3.Error) -> bool:
    text = str(problem).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


__all__ = ["SCHEMA_VERSION", "is_disk_full", "open_database"]
