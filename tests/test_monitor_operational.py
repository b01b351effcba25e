"""Operational anomalies: latency over budget, error bursts, throttling, a stalled source, frame drops, each one episode."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import MODELS

from agent.config import OperationalConfig
from agent.daemon.operations import OperationsWatch
from agent.events import AgentEvent
from agent.inference.manifest import Manifest
from agent.monitor.metrics import LoopMetrics
from agent.monitor.operational import OperationalMonitor, OperationalRules, Window, budget_for
from agent.pipeline import StageTimes
from agent.platform.system import SystemProbe

MOTION = Manifest.model_validate_json((MODELS / "motion-ae-onnx" / "manifest.json").read_bytes())


def _run(monitor: OperationalMonitor, windows: list[Window], window_s: float = 10.0) -> list[AgentEvent]:
    events: list[AgentEvent] = []
    for index, window in enumerate(windows, start=1):
        now = index * window_s
        assert monitor.due(now)
        events.extend(monitor.observe(now, window))
    return events


def _of(events: list[AgentEvent], kind: str) -> list[str]:
    return [event.phase for event in events if event.evidence["kind"] == kind]


def _slow(p99_ms: float) -> Window:
    return Window(duration_s=10.0, results=100, invoke_p99_ms=p99_ms, frames_in=100)


def test_a_persistent_latency_overrun_is_one_episode_with_updates_not_a_storm() -> None:
    rules = OperationalRules(
        latency_budget_ms=5.0, latency_windows=3, cooldown_s=60.0, clear_windows=2, clear_s=30.0
    )
    monitor = OperationalMonitor(rules, now=0.0, budget_source="manifest, rpi4")
    windows = [_slow(4.0)] * 2 + [_slow(9.5)] * 60 + [_slow(4.0)] * 6  # ten minutes over the budget
    events = _run(monitor, windows)
    phases = _of(events, "latency")
    assert phases[0] == "start" and phases[-1] == "end"
    assert phases.count("start") == 1 and phases.count("end") == 1
    assert 8 <= phases.count("ongoing") <= 10  # one update a minute, not one a window
    start = events[0]
    assert start.type == "anomaly" and start.severity == "warning"
    assert (
        start.evidence["value"] == 9.5 and start.evidence["bound"] == 5.0 and start.evidence["unit"] == "ms"
    )
    assert start.evidence["windows"] == 3  # it took three windows in a row to start
    assert "rpi4" in start.message
    assert len(events) == len(phases)  # no other condition fired
    json.dumps([event.to_dict() for event in events], allow_nan=False)


def test_a_latency_overrun_shorter_than_latency_windows_raises_nothing() -> None:
    monitor = OperationalMonitor(OperationalRules(latency_budget_ms=5.0, latency_windows=3), now=0.0)
    assert _run(monitor, [_slow(9.0), _slow(9.0), _slow(4.0), _slow(9.0), _slow(4.0)]) == []


def test_a_window_with_too_few_results_neither_extends_nor_ends_a_latency_episode() -> None:
    rules = OperationalRules(
        latency_budget_ms=5.0, latency_windows=1, min_results=10, clear_windows=1, clear_s=0.0
    )
    monitor = OperationalMonitor(rules, now=0.0)
    few = Window(duration_s=10.0, results=3, invoke_p99_ms=1.0)
    events = _run(monitor, [_slow(9.0), few, few, few, _slow(4.0)])
    assert _of(events, "latency") == ["start", "end"]
    assert events[-1].evidence["duration_s"] == 40.0


def test_the_budget_is_the_manifests_for_the_configured_device_class_unless_configured() -> None:
    assert budget_for(MOTION.latency_budgets, "rpi4", None) == (5.0, "manifest, rpi4")
    assert budget_for(MOTION.latency_budgets, "jetson-orin-nano", None) == (None, "none")
    assert budget_for(MOTION.latency_budgets, None, None) == (None, "none")
    assert budget_for(MOTION.latency_budgets, "rpi4", 12.0) == (12.0, "config")


def test_an_error_burst_is_one_episode_that_ends_after_quiet_windows() -> None:
    monitor = OperationalMonitor(OperationalRules(max_errors=10, clear_windows=2, clear_s=30.0), now=0.0)
    burst = Window(duration_s=10.0, results=50, errors=40)
    calm = Window(duration_s=10.0, results=90, errors=1)
    events = _run(monitor, [calm, burst, burst, calm, burst, calm, calm, calm, calm])
    assert _of(events, "errors") == ["start", "end"]  # the burst after one calm window is the same episode
    start, end = events
    assert start.severity == "error" and start.evidence["value"] == 40 and start.evidence["bound"] == 10
    assert end.evidence["breaches"] == 3 and end.severity == "info" and end.evidence["current"] == 1


def test_a_source_that_claims_to_run_but_delivers_nothing_is_one_stalled_episode() -> None:
    monitor = OperationalMonitor(OperationalRules(stalled_s=30.0, clear_s=0.0, clear_windows=1), now=0.0)

    def source(state: str, quiet_s: float) -> Window:
        return Window(duration_s=10.0, source_state=state, source_quiet_s=quiet_s)

    windows = [
        source("connected", 0.1),
        source("connected", 20.0),
        *[source("connected", q) for q in (30, 40, 50)],
    ]
    windows += [source("stalled", 60.0), source("connected", 0.2), source("ended", 300.0)]
    events = _run(monitor, windows)
    assert _of(events, "stalled") == ["start", "end"]
    assert events[0].evidence["value"] == 30 and events[0].evidence["bound"] == 30.0
    assert "no item from the connected source" in events[0].message


def test_frame_drops_above_the_bound_for_n_windows_are_an_episode_and_by_design_drops_are_not() -> None:
    monitor = OperationalMonitor(OperationalRules(max_drop_ratio=0.9, drop_windows=2), now=0.0)
    by_design = Window(
        duration_s=10.0, results=100, frames_in=300, dropped=200
    )  # a 30 fps camera, a 10/s model
    starved = Window(duration_s=10.0, results=10, frames_in=300, dropped=290)
    events = _run(monitor, [by_design, by_design, starved, starved, starved])
    assert _of(events, "drops") == ["start"]
    assert events[0].evidence["value"] == round(290 / 300, 4) and events[0].evidence["dropped"] == 290


def _pi_sysfs(root: Path, throttled: str, millidegrees: int) -> Path:
    firmware = root / "devices/platform/soc/soc:firmware"
    firmware.mkdir(parents=True, exist_ok=True)
    (firmware / "get_throttled").write_text(throttled + "\n")
    zone = root / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{millidegrees}\n")
    return root


def test_firmware_throttling_read_from_a_pi_sysfs_tree_is_one_thermal_episode(tmp_path: Path) -> None:
    sysfs = _pi_sysfs(tmp_path / "sys", "50005", 82_300)  # under-voltage and throttled now
    probe = SystemProbe(sysfs_root=sysfs, procfs_root=tmp_path / "proc", vcgencmd=None)
    metrics = LoopMetrics(0.0)
    config = OperationalConfig(window_s=5.0, clear_windows=1, clear_s=0.0)
    watch = OperationsWatch(config, metrics, MOTION, now=0.0)
    events = watch.watch(5.0, None, probe.sample()) + watch.watch(10.0, None, probe.sample())
    assert _of(events, "thermal") == ["start"]
    start = events[0]
    assert start.evidence["value"] == "throttled" and start.evidence["throttling"] == [
        "under_voltage",
        "throttled",
    ]
    assert start.evidence["temperature_c"] == 82.3
    [active] = watch.status(10.0)
    assert active["kind"] == "thermal" and active["duration_s"] == 5.0 and active["since"] > 0
    _pi_sysfs(
        sysfs, "50000", 60_000
    )  # the throttling passed (only "occurred" bits left), the CPU cooled down
    assert _of(watch.watch(15.0, None, probe.sample()), "thermal") == ["end"]
    assert watch.status(15.0) == []


def test_a_hot_cpu_without_firmware_flags_counts_as_thermal(tmp_path: Path) -> None:
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("CPU-therm\n")  # a Jetson's zone, no Pi firmware
    (zone / "temp").write_text("91500\n")
    probe = SystemProbe(sysfs_root=tmp_path / "sys", procfs_root=tmp_path / "proc", vcgencmd=None)
    watch = OperationsWatch(OperationalConfig(window_s=5.0), LoopMetrics(0.0), MOTION, now=0.0)
    [event] = watch.watch(5.0, None, probe.sample())
    assert event.evidence["kind"] == "thermal" and event.evidence["value"] == 91.5
    assert event.evidence["bound"] == 85.0


def test_the_watch_cuts_windows_out_of_the_loop_metrics_and_the_source_status() -> None:
    metrics = LoopMetrics(0.0)
    config = OperationalConfig(window_s=10.0, device_class="rpi4", latency_windows=2, stalled_s=15.0)
    watch = OperationsWatch(config, metrics, MOTION, now=0.0)
    running = {"state": "connected", "since_item_s": 0.05}
    seq = 0
    events: list[AgentEvent] = []
    for window in range(1, 4):
        for _ in range(50):
            seq += 1
            metrics.record_result(window * 10.0 - 5.0, StageTimes(0.0, 0.001, 0.012, 0.0), 0.02, seq)
        assert watch.watch(window * 10.0 - 1.0, running, {}) == []  # not due before the window ends
        events += watch.watch(window * 10.0, running, {})
    assert _of(events, "latency") == [
        "start"
    ]  # two windows over the budget; the third is inside the cooldown
    [start] = events
    assert start.evidence["bound"] == 5.0 and 11.0 <= start.evidence["value"] <= 13.0
    assert start.evidence["results"] == 50
    quiet = {"state": "connected", "since_item_s": 16.0}
    assert _of(watch.watch(40.0, quiet, {}), "stalled") == ["start"]
