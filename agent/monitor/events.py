"""What the monitors hand to the daemon: a small event that it logs, keeps and publishes. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MonitorEventType = Literal["anomaly", "drift"]
Severity = Literal["info", "warning", "error", "critical"]
Phase = Literal["start", "ongoing", "end"]


@dataclass(frozen=True)
class MonitorEvent:
    """An anomaly or drift episode starting, going on, or ending; `evidence` is JSON-ready."""

    type: MonitorEventType
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    phase: Phase = "start"

    @property
    def wants_snapshot(self) -> bool:
        """Whether the input behind this event is worth keeping (an anomaly starting or going on)."""
        return self.type == "anomaly" and self.phase != "end"
