"""The daemon's loop observer: metrics, the model's health, anomaly and drift monitors, event snapshots, hard examples
(agent/daemon/capture.py), error reports.

Runs on the inference thread for every result, so it stays cheap: metrics and monitors are pure and take microseconds;
anything that writes (a snapshot JPEG with fsync, the event that references it) is handed to one writer thread through
a bounded queue (overflow is counted, never blocks). Errors on items become one `error` event per `ERROR_EVENT_S`
with the count in between, so a broken input stream cannot flood the fleet.

It gets narrow ports (`MonitorPorts`: the config sections it reads, the state directory, a reporter), never the daemon.
The model's health counters (`ModelHealth`) start afresh at every switch, between the same two items as the swap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import MonitorConfig, SnapshotConfig
from agent.daemon.baseline import BaselineStore, Calibrator
from agent.daemon.capture import CaptureJob, HardExamples
from agent.daemon.operations import OperationsWatch, anomaly_rules
from agent.daemon.ports import Reporter
from agent.errors import AgentError
from agent.events import AgentEvent
from agent.inference import Result
from agent.inference.reference import DriftReference
from agent.monitor.anomaly import AnomalyTracker
from agent.monitor.calibration import Calibration
from agent.monitor.drift import BaselineJob, DriftMonitor
from agent.monitor.health import ModelHealth
from agent.monitor.metrics import LoopMetrics
from agent.monitor.reference import bundle_calibration, spec_of
from agent.pipeline import ActiveModel, LoopObserver, ResultRecord
from agent.pipeline.samples import SampleStore
from agent.pipeline.sinks import ThreadedSink
from agent.pipeline.snapshots import SnapshotStore, overlay
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
    samples: SampleStore | None = None
    """Where hard examples go (one store for the daemon's life, shared with the sample commands); None: none kept."""


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
        self._baselines = BaselineStore(ports.state_dir / "drift")
        self._reset_baseline: DriftMonitor | None = None
        self._baseline_lock = threading.Lock()
        self._owners: dict[int, tuple[str, int]] = {}
        """The model (name, version) each drift monitor belongs to, by id: saves go under the monitor's own model."""
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
        capture = config.monitor.capture
        self._capture = (
            HardExamples(capture, ports.samples) if capture.enabled and ports.samples is not None else None
        )
        self._writer: ThreadedSink[
            tuple[AgentEvent | None, Item | None, CaptureJob | None, Result | None]
        ] = ThreadedSink("events", self._write)
        self.rebind(active, count_swap=False)

    # ------------------------------------------------------------------ model changes

    def rebind(self, active: ActiveModel, count_swap: bool = True) -> None:
        """Follows a model swap: fresh anomaly episode state and the new bundle's drift reference."""
        self.prepare_rebind(active, count_swap)()

    def prepare_rebind(self, active: ActiveModel, count_swap: bool = True) -> Callable[[], None]:
        """Reads the new bundle's drift reference now; the returned call switches to it (cheap: run it at the swap)."""
        drift = self._drift_monitor(active) if self._ports.monitor.drift.enabled else None

        def switch() -> None:
            self._active = active
            self.health = ModelHealth(active.model.name, active.model.version, time.time())
            self._anomaly = AnomalyTracker(self._rules)
            self.operations.follow(active.model.manifest)
            self._drift = drift
            self._owners = {
                key: owner for key, owner in self._owners.items() if drift is not None and key == id(drift)
            }
            if count_swap:
                self.metrics.record_swap()

        return switch

    def _drift_monitor(self, active: ActiveModel) -> DriftMonitor | None:
        """The drift monitor of a model: its bundle's thresholds, and its site baseline if one is stored.

        A bundle reference that cannot be used turns off only the comparison with the training data; a stored
        baseline that cannot be used is relearnt. Neither keeps the model out of service.
        """
        config, model = self._ports.monitor.drift, active.model
        manifest = model.manifest
        try:
            spec = spec_of(manifest.input, manifest.task, model.bundle.labels)
        except (ValueError, AgentError) as problem:
            log.warning("drift monitoring off for %s: %s", model.name, problem)
            return None
        bundle: Calibration | None = None
        if manifest.reference:
            try:
                reference = DriftReference.model_validate_json(
                    model.bundle.file(manifest.reference).read_bytes()
                )
                bundle = bundle_calibration(
                    reference.features,
                    spec,
                    every_n=config.every_n,
                    input_every=config.input_every,
                    ert_items=config.ert_items,
                )
            except Exception as problem:  # a bundle's malformed features must not stop the site baseline
                log.warning("%s: no comparison with the training data: %s", model.name, problem)
        drift = DriftMonitor(
            spec,
            every_n=config.every_n,
            input_every=config.input_every,
            ert_items=config.ert_items,
            baseline_items=config.baseline_items,
            clear_windows=config.clear_windows,
            update_windows=config.update_windows,
            bundle=bundle,
        )
        stored = self._baselines.load(spec, model.name, model.version, config.input_every)
        if stored is not None and not (stored.calibration is not None and drift.install(stored.calibration)):
            try:
                drift.resume(
                    stored.inputs, stored.outputs
                )  # the rows fit, the thresholds do not: calibrate again
            except Exception as problem:
                log.warning(
                    "the stored baseline of %s cannot be reused (%s): learning a new one", model.name, problem
                )
                drift.reset()
        self._owners[id(drift)] = (model.name, model.version)
        return drift

    def reset_baseline(self) -> dict[str, Any]:
        """Forgets the serving model's site baseline: a calibration under way is made stale at once, the files
        removed, the monitor relearns from its next item. Raises AgentError without a drift monitor."""
        drift = self._drift
        if drift is None:
            raise AgentError("drift monitoring is off for this model: there is no baseline to reset")
        name, version = self._owners.get(id(drift), (self._active.model.name, self._active.model.version))
        with self._baseline_lock:
            drift.generation += 1  # an in-flight calibration's result is now stale
            self._reset_baseline = drift
        try:
            removed = self._baselines.remove(name, version)
        except OSError as problem:
            raise AgentError(f"the stored baseline cannot be removed: {problem}") from None
        return {"model": name, "version": version, "removed_stored": removed, "learning": True}

    def _calibrated(self, drift: DriftMonitor, job: BaselineJob, calibration: Calibration) -> None:
        owner = self._owners.get(id(drift))
        with self._baseline_lock:
            if owner is None or self._drift is not drift or job.generation != drift.generation:
                return  # the model changed, or the baseline was reset, while it calibrated
            kept = "kept in memory only"
            try:
                self._baselines.save(owner[0], owner[1], job, calibration)
                kept = "saved"
            except OSError as problem:
                log.warning("the site baseline of %s could not be saved: %s", owner[0], problem)
            if not drift.install(calibration, job.generation):
                return
        self._ports.report(
            "drift",
            "info",
            f"site baseline learnt from {len(job.outputs)} items ({calibration.items} calibrate it, the rest held out: "
            f"{calibration.held_out_alarms} of {calibration.held_out_windows} windows over; {kept}); drift alarms from now on, "
            f"thresholds for one false alarm per {calibration.ert_items:g} items",
            {
                "baseline_items": calibration.items,
                "every_n": calibration.every_n,
                "ert_items": calibration.ert_items,
                "level": calibration.level,
                "block_items": calibration.block_items,
                "held_out_windows": calibration.held_out_windows,
                "held_out_alarms": calibration.held_out_alarms,
                "thresholds": {k: float(f"{v:.4g}") for k, v in calibration.thresholds.items()},
            },
        )

    # ------------------------------------------------------------------ loop hooks (inference thread)

    def on_record(self, record: ResultRecord) -> None:
        """Metrics, anomaly and drift for one result."""
        now = time.monotonic()
        started = time.perf_counter()
        item = record.item
        self.metrics.record_result(now, record.times, record.age_s, item.seq)
        self.health.record(record.times.total_s, record.result.top_score())
        self.latest = item
        self._capture_result(record)
        event = self._anomaly.update(record.result, now, item.seq)
        if event is not None:
            self._post(event, item if event.wants_snapshot and item.kind == "frame" else None, record.result)
        drift = self._drift
        if drift is not None:
            if self._reset_baseline is drift:
                self._reset_baseline = None
                drift.reset()
            drift_event = drift.observe(self._active.adapt(item), record.result)
            if drift_event is not None:
                self._post(drift_event, None)
            job = drift.pending()
            if job is not None:
                self._calibrate(drift, job)
        self.metrics.record_stage("monitors", time.perf_counter() - started)

    def _calibrate(self, drift: DriftMonitor, job: BaselineJob) -> None:
        def done(job: BaselineJob, calibration: Calibration) -> None:
            self._calibrated(drift, job, calibration)

        def failed(problem: str) -> None:
            drift.calibration_failed(problem)
            self._ports.report("drift", "warning", problem, {"baseline_items": len(job.outputs)})

        Calibrator(job, done, failed).start()

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

    def _capture_result(self, record: ResultRecord) -> None:
        job = self._capture.observe(record) if self._capture is not None else None
        if job is not None:
            self._writer.emit((None, None, job, None))  # a low-confidence hard example: no event

    def _post(self, event: AgentEvent, item: Item | None, result: Result | None = None) -> None:
        # The hard example behind an anomaly or drift event is the newest record's item (drift events carry none).
        job = self._capture.for_event(event) if self._capture is not None else None
        self._writer.emit(
            (event, item, job, result)
        )  # never blocks: a full queue drops (and counts) the event

    def _write(self, work: tuple[AgentEvent | None, Item | None, CaptureJob | None, Result | None]) -> None:
        event, item, job, result = work
        sample = self._capture.save(job) if job is not None and self._capture is not None else None
        if event is None:
            return
        snapshot: str | None = None
        if item is not None and self._snapshots is not None:
            frame = overlay(item.data, result) if result is not None else item.data
            ref = self._snapshots.save(frame, f"{event.type}-{item.seq}", time.time())
            snapshot = ref.name if ref is not None else None
        evidence = dict(event.evidence)
        if item is not None:
            evidence.setdefault("seq", item.seq)
        if sample is not None:
            evidence.setdefault("sample", sample)
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
        data["samples"] = self._capture.status() if self._capture is not None else None
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
