"""The fleet view: what is known of each device, folded from status, telemetry and event messages (pure: no I/O).

Invariants:
- Per device, the status with the highest `birth` wins; a status with an older birth than one already seen is stale
  (a late last will, a slow retained copy) and ignored. Within one birth, `offline` is final: an `online` of the
  same birth after it is ignored, an `offline` of the same birth replaces `online` (the last will and the clean stop
  carry the birth of the connection they end).
- Telemetry and anomalies only move forward in the device's time: an older snapshot or anomaly than the one shown is
  ignored (the outbox re-sends after a reconnect: delivery is at least once and may come late).
- A payload that does not parse, or whose `device` disagrees with its topic, is counted in `invalid` and changes
  nothing. Ages are computed from the caller's `now`, never from a clock read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.fleet.layout import FleetTopics
from agent.link.wire import Event, InboundMessage, ModelRef, PayloadError, Status, Telemetry, parse
from agent.term import drift_summary

DeviceState = Literal["online", "offline", "unknown"]


@dataclass(frozen=True)
class Anomaly:
    """The latest anomaly event of a device."""

    id: str
    time: float
    severity: str
    message: str


@dataclass
class DeviceRow:
    """One device as the operator sees it."""

    device: str
    state: DeviceState = "unknown"
    birth: int | None = None
    reason: str | None = None
    agent_version: str | None = None
    model: ModelRef | None = None
    sources: dict[str, str] = field(default_factory=dict)
    status_time: float | None = None
    fps: float | None = None
    latency_p95_ms: float | None = None
    dropped: int | None = None
    telemetry_time: float | None = None
    anomaly: Anomaly | None = None
    active_anomalies: tuple[str, ...] | None = None
    """Kinds of the anomaly episodes going on, from the latest telemetry (None: the device does not say)."""
    drift: str | None = None
    """The drift monitor's state from the latest telemetry: `learning 40%`, `calibrating`, `ok`, `DRIFT <statistic>`."""
    last_seen: float | None = None

    def seen(self, when: float) -> None:
        """Moves `last_seen` forward to `when` (device time)."""
        if self.last_seen is None or when > self.last_seen:
            self.last_seen = when

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready: every field, plus `last_seen_age_s` at `now`."""
        return {
            "device": self.device,
            "state": self.state,
            "birth": self.birth,
            "reason": self.reason,
            "agent_version": self.agent_version,
            "model": None if self.model is None else self.model.model_dump(),
            "sources": dict(self.sources),
            "fps": self.fps,
            "latency_p95_ms": self.latency_p95_ms,
            "dropped": self.dropped,
            "telemetry_time": self.telemetry_time,
            "last_anomaly": None
            if self.anomaly is None
            else {
                "id": self.anomaly.id,
                "time": self.anomaly.time,
                "severity": self.anomaly.severity,
                "message": self.anomaly.message,
            },
            "active_anomalies": None if self.active_anomalies is None else list(self.active_anomalies),
            "drift": self.drift,
            "last_seen": self.last_seen,
            "last_seen_age_s": None if self.last_seen is None else round(max(0.0, now - self.last_seen), 3),
        }


class FleetView:
    """Every device seen so far under one fleet's prefix."""

    def __init__(self, topics: FleetTopics) -> None:
        self.topics = topics
        self.devices: dict[str, DeviceRow] = {}
        self.invalid = 0
        self.stale = 0

    def rows(self) -> list[DeviceRow]:
        """The devices, sorted by id."""
        return [self.devices[name] for name in sorted(self.devices)]

    def apply(self, message: InboundMessage) -> bool:
        """Folds one message in; True if the view changed."""
        parsed = self.topics.parse(message.topic)
        if parsed is None or parsed.device is None or not message.payload.strip():
            return False  # not ours, or a retained status being cleared
        try:
            if parsed.kind == "status":
                return self.apply_status(parsed.device, parse(Status, message.payload))
            if parsed.kind == "telemetry":
                return self.apply_telemetry(parsed.device, parse(Telemetry, message.payload))
            if parsed.kind == "events":
                return self.apply_event(parsed.device, parse(Event, message.payload))
        except PayloadError:
            self.invalid += 1
        return False

    def _row(self, device: str) -> DeviceRow:
        row = self.devices.get(device)
        if row is None:
            row = self.devices[device] = DeviceRow(device)
        return row

    def apply_status(self, device: str, status: Status) -> bool:
        """A status message; False if stale (older birth, or online after offline within one birth)."""
        if status.device != device:
            self.invalid += 1
            return False
        row = self._row(device)
        if row.birth is not None and (
            status.birth < row.birth
            or (status.birth == row.birth and row.state == "offline" and status.state == "online")
        ):
            self.stale += 1
            return False
        row.state = status.state
        row.birth = status.birth
        row.reason = status.reason
        row.agent_version = status.agent_version
        row.model = status.model
        row.sources = dict(status.sources)
        row.status_time = status.time
        row.seen(status.time)
        return True

    def apply_telemetry(self, device: str, telemetry: Telemetry) -> bool:
        """A telemetry snapshot; False if older than the one shown."""
        if telemetry.device != device:
            self.invalid += 1
            return False
        row = self._row(device)
        row.seen(telemetry.time)
        if row.telemetry_time is not None and telemetry.time < row.telemetry_time:
            return False
        metrics = telemetry.metrics
        row.telemetry_time = telemetry.time
        row.fps = _number(_dig(metrics, "rates", "processed_per_s"))
        row.latency_p95_ms = _number(_dig(metrics, "latency_ms", "total", "p95"))
        if row.latency_p95_ms is None:
            row.latency_p95_ms = _number(_dig(metrics, "latency_ms", "invoke", "p95"))
        dropped = _number(_dig(metrics, "counters", "dropped"))
        row.dropped = None if dropped is None else int(dropped)
        active = _dig(metrics, "anomaly", "active")
        row.active_anomalies = (
            tuple(str(entry.get("kind")) for entry in active if isinstance(entry, dict))
            if isinstance(active, list)
            else None
        )
        row.drift = drift_summary(_dig(metrics, "drift"))
        return True

    def apply_event(self, device: str, event: Event) -> bool:
        """An event: moves last seen, and the last anomaly when it is a newer anomaly."""
        if event.device is not None and event.device != device:
            self.invalid += 1
            return False
        row = self._row(device)
        row.seen(event.time)
        if event.type != "anomaly" or (row.anomaly is not None and event.time < row.anomaly.time):
            return True
        row.anomaly = Anomaly(event.id, event.time, event.severity, event.message)
        return True

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready view: fleet, prefix, time, devices, and the count of invalid and stale messages ignored."""
        return {
            "fleet": self.topics.fleet,
            "prefix": self.topics.prefix,
            "time": now,
            "devices": [row.to_dict(now) for row in self.rows()],
            "ignored": {"invalid": self.invalid, "stale": self.stale},
        }


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


__all__ = ["Anomaly", "DeviceRow", "DeviceState", "FleetView"]
