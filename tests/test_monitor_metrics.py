"""LoopMetrics: counters from sequence gaps, per-stage histograms, sliding-window rates, the snapshot contract."""

from __future__ import annotations

import json
import threading

import pytest

from agent.monitor.metrics import COUNTERS, STAGES, LoopMetrics, RateWindow
from agent.pipeline.records import StageTimes

SNAPSHOT_KEYS = {
    "schema",
    "uptime_s",
    "counters",
    "errors_by_kind",
    "rates",
    "latency_ms",
    "frame_age_ms",
    "last_result_age_s",
}
SUMMARY_KEYS = {"count", "mean", "min", "p50", "p95", "p99", "max"}
TIMES = StageTimes(wait_s=0.001, preprocess_s=0.002, invoke_s=0.010, decode_s=0.0005)


def _feed(
    metrics: LoopMetrics, start: float, count: int, rate_hz: float, first_seq: int = 1, step: int = 1
) -> float:
    now = start
    for index in range(count):
        now = start + index / rate_hz
        metrics.record_result(now, TIMES, age_s=0.015, seq=first_seq + index * step)
    return now


def test_snapshot_has_the_documented_keys_and_is_json_ready() -> None:
    metrics = LoopMetrics(now=100.0)
    _feed(metrics, 100.0, 10, 10.0)
    snapshot = metrics.snapshot(101.0)
    assert set(snapshot) == SNAPSHOT_KEYS
    assert set(snapshot["counters"]) == set(COUNTERS)
    assert set(snapshot["latency_ms"]) == set(STAGES)
    assert set(snapshot["rates"]) == {
        "window_s",
        "in_per_s",
        "processed_per_s",
        "dropped_per_s",
        "drop_ratio",
    }
    for summary in [*snapshot["latency_ms"].values(), snapshot["frame_age_ms"]]:
        assert set(summary) == SUMMARY_KEYS
    json.dumps(snapshot, allow_nan=False)


def test_stage_latencies_and_total_are_reported_in_milliseconds() -> None:
    metrics = LoopMetrics(now=0.0)
    _feed(metrics, 0.0, 20, 10.0)
    latency = metrics.snapshot(2.0)["latency_ms"]
    assert latency["invoke"]["p50"] == pytest.approx(10.0)
    assert latency["preprocess"]["p99"] == pytest.approx(2.0)
    assert latency["capture_wait"]["max"] == pytest.approx(1.0)
    assert latency["total"]["p50"] == pytest.approx(12.5)  # pre-process + invoke + decode
    assert latency["monitors"]["count"] == 0
    assert metrics.snapshot(2.0)["frame_age_ms"]["p95"] == pytest.approx(15.0)


def test_sequence_gaps_count_as_mailbox_drops() -> None:
    metrics = LoopMetrics(now=0.0)
    _feed(metrics, 0.0, 100, 10.0, first_seq=1, step=3)  # the camera delivers 3 frames per handled one
    counters = metrics.counters()
    assert counters["processed"] == 100
    assert counters["frames_in"] == 1 + 99 * 3
    assert counters["dropped"] == 99 * 2


def test_rates_over_the_sliding_window_follow_the_frame_rate() -> None:
    metrics = LoopMetrics(now=0.0, rate_window_s=10.0)
    end = _feed(metrics, 0.0, 600, 30.0, step=2)  # 30 handled/s out of 60 delivered/s, for 20 s
    rates = metrics.snapshot(end)["rates"]
    assert rates["processed_per_s"] == pytest.approx(30.0, rel=0.06)
    assert rates["in_per_s"] == pytest.approx(60.0, rel=0.06)
    assert rates["dropped_per_s"] == pytest.approx(30.0, rel=0.06)
    assert rates["drop_ratio"] == pytest.approx(0.5, rel=0.06)


def test_rates_fall_to_zero_when_the_source_stalls() -> None:
    metrics = LoopMetrics(now=0.0)
    end = _feed(metrics, 0.0, 100, 10.0)
    assert metrics.processed_rate(end) > 9.0
    assert metrics.processed_rate(end + 5.0) == pytest.approx(10.0 * 5.0 / 10.0, rel=0.15)
    assert metrics.processed_rate(end + 11.0) == 0.0
    assert metrics.snapshot(end + 30.0)["last_result_age_s"] == pytest.approx(30.0)


def test_rate_just_after_start_is_not_inflated_by_an_empty_window() -> None:
    window = RateWindow(start=1000.0, window_s=10.0)
    for index in range(20):
        window.add(1000.0 + index * 0.1)
    assert window.rate(1002.0) == pytest.approx(10.0, rel=0.01)


def test_errors_are_counted_by_kind_and_consume_sequence_numbers() -> None:
    metrics = LoopMetrics(now=0.0)
    metrics.record_result(0.1, TIMES, 0.01, seq=1)
    metrics.record_error(0.2, "InputError", seq=2)
    metrics.record_error(0.3, "InputError", seq=3)
    metrics.record_error(0.4, "invoke", seq=4)
    metrics.record_result(0.5, TIMES, 0.01, seq=5)
    snapshot = metrics.snapshot(1.0)
    assert snapshot["errors_by_kind"] == {"InputError": 2, "invoke": 1}
    assert snapshot["counters"]["errors"] == 3
    assert snapshot["counters"]["frames_in"] == 5
    assert snapshot["counters"]["dropped"] == 0


def test_swaps_and_separately_measured_stages_are_recorded() -> None:
    metrics = LoopMetrics(now=0.0)
    metrics.record_swap()
    metrics.record_stage("monitors", 0.0002)
    metrics.record_stage("sinks", 0.003)
    metrics.record_stage("snapshot_write", 0.040)  # a stage the daemon adds later
    snapshot = metrics.snapshot(1.0)
    assert snapshot["counters"]["swaps"] == 1
    assert snapshot["latency_ms"]["sinks"]["p50"] == pytest.approx(3.0)
    assert snapshot["latency_ms"]["snapshot_write"]["count"] == 1
    assert list(snapshot["latency_ms"])[-1] == "total"


def test_interval_snapshots_cover_only_the_time_since_the_previous_one() -> None:
    metrics = LoopMetrics(now=0.0)
    _feed(metrics, 0.0, 50, 10.0)
    first = metrics.snapshot(5.0, interval=True)["interval"]
    assert first["counters"]["processed"] == 50
    slow = StageTimes(wait_s=0.001, preprocess_s=0.002, invoke_s=0.100, decode_s=0.0005)
    for index in range(10):
        metrics.record_result(5.0 + index * 0.1, slow, 0.2, seq=51 + index)
    status_view = metrics.snapshot(6.0)  # a status reader does not move the interval baseline
    assert "interval" not in status_view
    second = metrics.snapshot(6.0, interval=True)["interval"]
    assert second["duration_s"] == pytest.approx(1.0)
    assert second["counters"]["processed"] == 10
    assert second["latency_ms"]["invoke"]["p50"] == pytest.approx(100.0, rel=0.05)
    assert second["latency_ms"]["invoke"]["count"] == 10
    lifetime = metrics.snapshot(6.0)["latency_ms"]["invoke"]
    assert lifetime["count"] == 60 and lifetime["p50"] == pytest.approx(10.0, rel=0.05)


def test_snapshots_from_another_thread_while_the_loop_records_are_consistent() -> None:
    metrics = LoopMetrics(now=0.0)
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            snapshot = metrics.snapshot(1.0)
            counters = snapshot["counters"]
            if snapshot["latency_ms"]["invoke"]["count"] != counters["processed"]:
                problems.append(
                    f"histogram and counter disagree: {snapshot['latency_ms']['invoke']} {counters}"
                )

    thread = threading.Thread(target=reader, name="reader")
    thread.start()
    try:
        _feed(metrics, 0.0, 20_000, 1000.0)
    finally:
        stop.set()
        thread.join(5)
    assert not problems
    assert metrics.counters()["processed"] == 20_000
