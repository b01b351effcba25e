"""The outbox's vocabulary: message classes, their priority, and one waiting row (pure data, shared by its stores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["event", "result", "telemetry"]
PRIORITY: dict[str, int] = {"event": 0, "result": 1, "telemetry": 2}
"""Send order and keep order: a lower number leaves first and is evicted last."""
KINDS: tuple[Kind, ...] = ("event", "result", "telemetry")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One waiting message; `id` > 0: stored in the database, `id` < 0: held in memory."""

    id: int
    kind: Kind
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


__all__ = ["KINDS", "PRIORITY", "Kind", "OutboxRow"]
