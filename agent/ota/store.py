"""The update record on disk (ota/state.json): written atomically, read back defensively.

A missing file is a device that never updated; a damaged one (truncated by a failing card, another schema, not JSON)
is reported as `RecordDamaged` and then treated as missing, so the device goes on with what `models/` holds: the
record never decides what is installed, only where an update stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from agent.fsutil import write_atomic
from agent.ota.state import UpdateRecord

MAX_RECORD_BYTES = 64 * 1024

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class RecordDamaged:
    """The record file exists but cannot be used; `reason` says why."""

    path: Path
    reason: str


def load_record(path: Path) -> UpdateRecord | RecordDamaged | None:
    """The saved update record, None when there is none, or what is wrong with it."""
    return load_as(path, UpdateRecord)


def load_as(path: Path, kind: type[R]) -> R | RecordDamaged | None:
    """A saved record of `kind`, None when there is none, or what is wrong with it."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as problem:
        return RecordDamaged(path, f"cannot read {path}: {problem.strerror or problem}")
    if len(data) > MAX_RECORD_BYTES:
        return RecordDamaged(path, f"{path} is over {MAX_RECORD_BYTES} bytes")
    try:
        return kind.model_validate_json(data)
    except ValidationError as problem:
        first = problem.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        return RecordDamaged(path, f"{path} is not a {kind.__name__} ({where}: {first['msg']})")


def save_record(path: Path, record: BaseModel) -> None:
    """Replaces the saved record atomically (temp file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, record.model_dump_json(by_alias=True).encode() + b"\n")


__all__ = ["MAX_RECORD_BYTES", "RecordDamaged", "load_as", "load_record", "save_record"]
