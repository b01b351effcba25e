"""The agent's one event vocabulary: severities, event types and the in-process event, defined once. Pure data.

Every part that reports something (the monitors, the sources' supervisor, the model service, the updater, the daemon)
makes an `AgentEvent`; the daemon's event log keeps and forwards it, and the uplink converts it to the wire payload
(`agent.link.payloads.Event`) in one place. The wire payload takes its `EventType` and `Severity` from here.

Invariants: an event is immutable; it gets a unique id (the fleet's dedupe key) and its wall-clock time when made;
`phase` (an episode starting, going on, ending) is in-process only and never goes on the wire.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

EventType = Literal["anomaly", "drift", "source", "model", "update", "error"]
"""What an event is about."""
Severity = Literal["info", "warning", "error", "critical"]
"""How much it matters, lowest first."""
Phase = Literal["start", "ongoing", "end"]
"""Where an episode (an anomaly, a drift) stands; events that are not episodes are `start`."""

EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
SEVERITIES: tuple[Severity, ...] = get_args(Severity)
LOG_LEVELS: dict[Severity, int] = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


@dataclass(frozen=True)
class AgentEvent:
    """Something the fleet should hear about; `evidence` is JSON-ready."""

    type: EventType
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    snapshot: str | None = None
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    phase: Phase = "start"

    @property
    def wants_snapshot(self) -> bool:
        """Whether the input behind this event is worth keeping (an anomaly starting or going on)."""
        return self.type == "anomaly" and self.phase != "end"

    def with_details(self, evidence: dict[str, Any], snapshot: str | None) -> AgentEvent:
        """The same event (same id and time) with its evidence and snapshot reference filled in."""
        return replace(self, evidence=evidence, snapshot=snapshot)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `edge-agent status`)."""
        return {
            "id": self.id,
            "type": self.type,
            "severity": self.severity,
            "time": round(self.time, 3),
            "message": self.message,
            "evidence": self.evidence,
            "snapshot": self.snapshot,
        }


__all__ = ["EVENT_TYPES", "LOG_LEVELS", "SEVERITIES", "AgentEvent", "EventType", "Phase", "Severity"]
