"""The daemon's loop observer: metrics, the model's health, anomaly and drift monitors, event snapshots, error reports.

Runs on the inference thread for every result, so it stays cheap: metrics and monitors are pure and take microseconds;
anything that writes (a snapshot JPEG with fsync, the event that references it) is handed to one writer thread through
a bounded queue (overflow is counted, never blocks). Errors on items become one `error` event per `ERROR_EVENT_S`
with the count in between, so a broken input stream cannot flood the fleet.

It gets narrow ports (`MonitorPorts`: the config sections it reads, the state directory, a reporter), never the daemon.
The model's health counters (`ModelHealth`) start afresh at every switch, between the same two items as the swap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import MonitorConfig, SnapshotConfig
from agent.daemon.operations import OperationsWatch, anomaly_rules
from agent.daemon.ports import Reporter
from agent.errors import AgentError
from agent.events import AgentEvent
from agent.inference.reference import DriftReference
from agent.monitor.anomaly import AnomalyTracker
from agent.monitor.drift import DriftMonitor
from agent.monitor.health import ModelHealth
from agent.monitor.metrics import LoopMetrics
from agent.pipeline import ActiveModel, LoopObserver, ResultRecord
from agent.pipeline.sinks import ThreadedSink
from agent.pipeline.snapshots import SnapshotStore
from agent.sources.base import Item

log = logging.getLogger("agent.monitor")

ERROR_EVENT_S = 60.0


@dataclass(frozen=True)
class MonitorPorts:
    """What the monitors need from the daemon: their config sections, where snapshots go, and a reporter."""

    monitor: MonitorConfig
    snapshots: SnapshotConfig
    state_dir: Path
    report: Reporter


class Monitors(LoopObserver):
    """Everything the daemon watches on each result."""

    def __init__(self, ports: MonitorPorts, active: ActiveModel) -> None:
        self._ports = ports
        config = ports
        self.metrics = LoopMetrics(time.monotonic())
        self._rules = anomaly_rules(config.monitor.anomaly)
        self._anomaly = AnomalyTracker(self._rules)
        self.operations = OperationsWatch(
            config.monitor.operational, self.metrics, active.model.manifest, time.monotonic()
        )
        self._drift: DriftMonitor | None = None
        self._active = active
        self.health = ModelHealth(active.model.name, active.model.version, time.time())
        self.latest: Item | None = None
        self._error_count = 0
        self._errors_since_event = 0
        self._last_error_event = -ERROR_EVENT_S
        self._snapshots: SnapshotStore | None = None
        if config.snapshots.enabled and config.snapshots.max_bytes > 0:
            folder = config.snapshots.folder or ports.state_dir / "snapshots"
            self._snapshots = SnapshotStore(folder, config.snapshots.max_bytes, config.snapshots.jpeg_quality)
        self._writer: ThreadedSink[tuple[AgentEvent, Item | None]] = ThreadedSink("events", self._write)
        self.rebind(active, count_swap=False)

    # ------------------------------------------------------------------ model changes

    def rebind(self, active: ActiveModel, count_swap: bool = True) -> None:
        """Follows a model swap: fresh anomaly episode state and the new bundle's drift reference."""
        self.prepare_rebind(active, count_swap)()

    def prepare_rebind(self, active: ActiveModel, count_swap: bool = True) -> Callable[[], None]:
        """Reads the new bundle's drift reference now; the returned call switches to it (cheap: run it at the swap)."""
        drift: DriftMonitor | None = None
        drift_config = self._ports.monitor.drift
        reference_file = active.model.manifest.reference
        if drift_config.enabled and reference_file:
            try:
                path = active.model.bundle.file(reference_file)
                reference = DriftReference.model_validate_json(path.read_bytes())
                drift = DriftMonitor(
                    reference,
                    every_n=drift_config.every_n,
                    psi_threshold=drift_config.psi_threshold,
                    input_every=drift_config.input_every,
                )
            except (OSError, ValueError, AgentError) as problem:
                log.warning("drift monitoring off for %s: %s", active.model.name, problem)

        def switch() -> None:
            self._active = active
            self.health = ModelHealth(active.model.name, active.model.version, time.time())
            self._anomaly = AnomalyTracker(self._rules)
            self.operations.follow(active.model.manifest)
            self._drift = drift
            if count_swap:
                self.metrics.record_swap()

        return switch

    # ------------------------------------------------------------------ loop hooks (inference thread)

    def on_record(self, record: ResultRecord) -> None:
        """Metrics, anomaly and drift for one result."""
        now = time.monotonic()
        started = time.perf_counter()
        item = record.item
        self.metrics.record_result(now, record.times, record.age_s, item.seq)
        self.health.record(record.times.total_s, record.result.top_score())
        self.latest = item
        event = self._anomaly.update(record.result, now, item.seq)
        if event is not None:
            self._post(event, item if event.wants_snapshot and item.kind == "frame" else None)
        drift = self._drift
        if drift is not None:
            drift_event = drift.observe(self._active.adapt(item), record.result)
            if drift_event is not None:
                self._post(drift_event, None)
        self.metrics.record_stage("monitors", time.perf_counter() - started)

    def on_error(self, item: Item, problem: Exception) -> None:
        """Counts the error; one `error` event per minute at most."""
        now = time.monotonic()
        kind = type(problem).__name__
        self.metrics.record_error(now, kind, item.seq)
        self.health.error(kind)
        self._error_count += 1
        self._errors_since_event += 1
        if now - self._last_error_event >= ERROR_EVENT_S:
            message = str(problem) if isinstance(problem, AgentError) else f"{kind}: {problem}"
            count, self._errors_since_event = self._errors_since_event, 0
            self._last_error_event = now
            self._ports.report(
                "error",
                "error",
                f"inference failed on item {item.seq}: {message}",
                {"kind": kind, "errors_since_last_report": count, "errors_total": self._error_count},
            )

    def watch(self, now: float, source: Mapping[str, Any] | None, system: Mapping[str, Any]) -> None:
        """Main thread, every tick: reports the operational anomaly episodes of the window that ended, if one did."""
        for event in self.operations.watch(now, source, system):
            self._ports.report.emit(event)

    def on_sinks(self, seconds: float) -> None:
        """Records the sinks' time."""
        self.metrics.record_stage("sinks", seconds)

    # ------------------------------------------------------------------ events with snapshots (writer thread)

    def _post(self, event: AgentEvent, item: Item | None) -> None:
        self._writer.emit((event, item))  # never blocks: a full queue drops (and counts) the event

    def _write(self, work: tuple[AgentEvent, Item | None]) -> None:
        event, item = work
        snapshot: str | None = None
        if item is not None and self._snapshots is not None:
            ref = self._snapshots.save(item.data, f"{event.type}-{item.seq}", time.time())
            snapshot = ref.name if ref is not None else None
        evidence = dict(event.evidence)
        if item is not None:
            evidence.setdefault("seq", item.seq)
        self._ports.report.emit(event.with_details(evidence, snapshot))

    @property
    def write_drops(self) -> int:
        """Events dropped because the writer fell behind (or was stopped with a backlog)."""
        return self._writer.dropped

    def close(self, timeout_s: float = 0.5) -> None:
        """Stops the writer thread; events still queued after `timeout_s` are dropped (a stop must stay fast)."""
        self._writer.close(timeout_s)

    # ------------------------------------------------------------------ readers (any thread)

    def rate(self) -> float:
        """Inferences per second over the metrics window."""
        return self.metrics.processed_rate(time.monotonic())

    def snapshot(self, interval: bool = False) -> dict[str, Any]:
        """Metrics, drift state and snapshot store state, JSON-ready."""
        data = self.metrics.snapshot(time.monotonic(), interval=interval)
        drift = self._drift
        data["drift"] = drift.status() if drift is not None else None
        data["snapshots"] = self._snapshots.status() if self._snapshots is not None else None
        data["event_queue_drops"] = self.write_drops
        data["anomaly"] = self.anomaly_status()
        return data

    def anomaly_status(self) -> dict[str, Any]:
        """The anomaly episodes going on (from the model's results and operational), JSON-ready."""
        now = time.monotonic()
        active = self.operations.status(now)
        model = self._anomaly.status(now)
        if model is not None:
            active.insert(0, {**model, "since": round(time.time() - model["duration_s"], 3)})
        return {
            "active": active,
            "episodes": {"results": self._anomaly.episodes, **self.operations.monitor.episodes()},
        }
