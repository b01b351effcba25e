"""What the outbox reports: its depth, bounds and drops (`OutboxStats`) and whether it can store (`StorageStatus`).

Pure data, JSON-ready through `to_dict`; made by `Outbox.stats()` and `Outbox.storage()` under the outbox's lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.link.payloads import StorageCondition


@dataclass(frozen=True)
class StorageStatus:
    """Whether the outbox can store, why not, and what it holds in memory meanwhile."""

    condition: StorageCondition
    reason: str | None
    since: float
    """Wall-clock time of the last change of condition."""
    writable: bool
    """True when new rows go to the database (also while full, as long as evicting makes room)."""
    held_rows: dict[str, int]
    held_bytes: int
    memory_max_bytes: int
    moved: int = 0
    """Held rows written to the database since start."""

    @property
    def held_total(self) -> int:
        """Rows held in memory, all classes."""
        return sum(self.held_rows.values())

    def describe(self) -> str:
        """One line for a person."""
        held = f"{self.held_total} messages held in memory (bound {self.memory_max_bytes} bytes)"
        if self.condition == "ok":
            return "outbox storage recovered: messages are stored on disk again"
        if self.condition == "full" and self.writable:
            return f"disk full: the outbox's reserve is spent; results and telemetry are evicted for events; {held}"
        return f"cannot store: {self.reason}; {held}"


@dataclass
class OutboxStats:
    """Depth, bound and drops of the outbox."""

    rows: dict[str, int]
    bytes: dict[str, int]
    max_bytes: int
    dropped: dict[str, dict[str, int]]
    puts: int
    disk_full: bool
    errors: int
    oldest_age_s: float | None = None
    path: str = ""
    storage: StorageCondition = "ok"
    storage_reason: str | None = None
    held_rows: dict[str, int] = field(default_factory=dict)
    held_bytes: int = 0
    memory_max_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        """Rows waiting, all classes (in the database and in memory)."""
        return sum(self.rows.values())

    @property
    def total_bytes(self) -> int:
        """Bytes waiting, all classes."""
        return sum(self.bytes.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for telemetry and get-status)."""
        return {
            "rows": dict(self.rows),
            "bytes": dict(self.bytes),
            "total_rows": self.total_rows,
            "total_bytes": self.total_bytes,
            "max_bytes": self.max_bytes,
            "dropped": {kind: dict(reasons) for kind, reasons in self.dropped.items() if reasons},
            "puts": self.puts,
            "disk_full": self.disk_full,
            "errors": self.errors,
            "oldest_age_s": self.oldest_age_s,
            "storage": self.storage,
            "storage_reason": self.storage_reason,
            "held_rows": dict(self.held_rows),
            "held_bytes": self.held_bytes,
            "memory_max_bytes": self.memory_max_bytes,
        }


__all__ = ["OutboxStats", "StorageStatus"]
