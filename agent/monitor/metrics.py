"""Loop metrics: counters, per-stage latency histograms, frame age and sliding-window rates. No I/O, no clock reads.

Every method takes the time (`now`, seconds of `time.monotonic()`) from the caller, so the figures are reproducible in
tests and the monitor never reads a clock on the hot path.

Threads: one writer (the inference thread calls `record_*`) and any number of readers (the status socket, telemetry)
calling `snapshot`/`processed_rate`. A single lock guards the state; a writer holds it for a few microseconds per item
and a reader only while it copies the histograms (percentiles are computed after the lock is released).

Items in and dropped: sources number their items one by one (`Item.seq`), and the only place an item is lost between a
source and the loop is the single-slot mailbox, so a gap in `seq` between two handled items is the number of mailbox
overwrites. Pass `seq` to `record_result`/`record_error` and the counts follow; without `seq` each call counts one
item in and none dropped.

`snapshot(now)` returns JSON-ready data with these stable keys (the MQTT telemetry payload's `metrics` and the
`edge-agent status` table):

    schema              1
    uptime_s            seconds since the metrics were created
    counters            {frames_in, processed, dropped, errors, swaps}: totals since creation
    errors_by_kind      {kind: count}
    rates               {window_s, in_per_s, processed_per_s, dropped_per_s, drop_ratio}: over the last window_s
                        (drop_ratio = dropped / frames_in in that window, None when nothing came)
    latency_ms          {capture_wait, preprocess, invoke, decode, monitors, sinks, total}: one summary each
    frame_age_ms        summary of capture-to-decoded-result age
    last_result_age_s   seconds since the last result (None before the first)
    interval            only with `interval=True`: {duration_s, counters, latency_ms, frame_age_ms} covering the
                        time since the previous interval snapshot (the first covers everything)

A summary is `{count, mean, min, p50, p95, p99, max}` in milliseconds (None when empty). `total` is pre-process +
invoke + decode (the model's own latency, as in the latency budget); `monitors` and `sinks` are recorded separately
with `record_stage` by whoever measures them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from agent.monitor.histogram import LatencyHistogram

SCHEMA = 1
STAGES = ("capture_wait", "preprocess", "invoke", "decode", "monitors", "sinks", "total")
COUNTERS = ("frames_in", "processed", "dropped", "errors", "swaps")


class StageTimesLike(Protocol):
    """Seconds per stage of one item (agent.pipeline.StageTimes fits)."""

    @property
    def wait_s(self) -> float:
        """Time the loop waited for the item."""

    @property
    def preprocess_s(self) -> float:
        """Pre-processing time."""

    @property
    def invoke_s(self) -> float:
        """Model invoke time."""

    @property
    def decode_s(self) -> float:
        """Decoding time."""


class RateWindow:
    """Events per second over a sliding window, counted in fixed time slots (O(1) per event)."""

    __slots__ = ("_current", "_slot_s", "_slots", "_start", "window_s")

    def __init__(self, start: float, window_s: float = 10.0, slot_s: float = 0.5) -> None:
        if window_s <= 0 or slot_s <= 0 or slot_s > window_s:
            raise ValueError("a rate window needs 0 < slot_s <= window_s")
        self.window_s = window_s
        self._slot_s = slot_s
        self._slots = [0] * max(1, math.ceil(window_s / slot_s))
        self._start = start
        self._current = math.floor(start / slot_s)

    def add(self, now: float, count: int = 1) -> None:
        """Counts `count` events at time `now`."""
        slot = math.floor(now / self._slot_s)
        if slot > self._current:
            size = len(self._slots)
            for index in range(self._current + 1, min(slot, self._current + size) + 1):
                self._slots[index % size] = 0
            self._current = slot
        self._slots[self._current % len(self._slots)] += count

    def rate(self, now: float) -> float:
        """Events per second in the window ending at `now` (0.0 before any time has passed)."""
        size = len(self._slots)
        slot = max(math.floor(now / self._slot_s), self._current)
        oldest = slot - size + 1
        total = sum(
            self._slots[i % size] for i in range(max(oldest, self._current - size + 1), self._current + 1)
        )
        span = now - max(oldest * self._slot_s, self._start)
        return total / span if span > 0 else 0.0


class LoopMetrics:
    """Counters, latency histograms and rates of the inference loop; see the module docstring for the keys."""

    def __init__(self, now: float, rate_window_s: float = 10.0, stages: Iterable[str] = STAGES) -> None:
        self._lock = threading.Lock()
        self._started = now
        self._stages = tuple(dict.fromkeys([*stages, "total"]))
        self._hist = {stage: LatencyHistogram() for stage in self._stages}
        self._age = LatencyHistogram()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._errors: dict[str, int] = {}
        self._last_seq: int | None = None
        self._last_result: float | None = None
        self._in = RateWindow(now, rate_window_s)
        self._done = RateWindow(now, rate_window_s)
        self._dropped = RateWindow(now, rate_window_s)
        self._baseline: tuple[float, dict[str, int], dict[str, LatencyHistogram], LatencyHistogram] | None = (
            None
        )
        self._hist_wait = self._hist.get("capture_wait")
        self._hist_pre = self._hist.get("preprocess")
        self._hist_inv = self._hist.get("invoke")
        self._hist_dec = self._hist.get("decode")
        self._hist_total = self._hist["total"]

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage names, in report order."""
        return self._stages

    # ------------------------------------------------------------------ writer side (the inference thread)

    def record_result(self, now: float, times: StageTimesLike, age_s: float, seq: int | None = None) -> None:
        """Counts one handled item: its stage times, its age (capture to result), and the items dropped before it."""
        pre, inv, dec = times.preprocess_s, times.invoke_s, times.decode_s
        with self._lock:
            self._account(now, seq)
            self._counts["processed"] += 1
            self._done.add(now)
            self._last_result = now
            if self._hist_wait is not None:
                self._hist_wait.record(times.wait_s)
            if self._hist_pre is not None:
                self._hist_pre.record(pre)
            if self._hist_inv is not None:
                self._hist_inv.record(inv)
            if self._hist_dec is not None:
                self._hist_dec.record(dec)
            self._hist_total.record(pre + inv + dec)
            self._age.record(age_s)

    def record_stage(self, stage: str, seconds: float) -> None:
        """Records one duration of a stage measured elsewhere (`monitors`, `sinks`); unknown stages are added."""
        with self._lock:
            histogram = self._hist.get(stage)
            if histogram is None:
                histogram = self._hist[stage] = LatencyHistogram()
                self._stages = (*self._stages[:-1], stage, "total")
            histogram.record(seconds)

    def record_error(self, now: float, kind: str, seq: int | None = None) -> None:
        """Counts one item that failed, by kind (an exception class name, a stage name...)."""
        with self._lock:
            self._account(now, seq)
            self._counts["errors"] += 1
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def record_swap(self) -> None:
        """Counts one model swap."""
        with self._lock:
            self._counts["swaps"] += 1

    def _account(self, now: float, seq: int | None) -> None:
        """Items in and dropped up to `seq` (lock held)."""
        items, last = 1, self._last_seq
        if seq is not None:
            if last is not None and seq > last:
                items = seq - last
            self._last_seq = seq if last is None or seq > last else last
        self._counts["frames_in"] += items
        self._in.add(now, items)
        if items > 1:
            self._counts["dropped"] += items - 1
            self._dropped.add(now, items - 1)

    # ------------------------------------------------------------------ reader side (any thread)

    def processed_rate(self, now: float) -> float:
        """Items handled per second over the rate window."""
        with self._lock:
            return self._done.rate(now)

    def counters(self) -> dict[str, int]:
        """A copy of the totals (frames_in, processed, dropped, errors, swaps)."""
        with self._lock:
            return dict(self._counts)

    def totals(self, stage: str = "invoke") -> tuple[dict[str, int], LatencyHistogram]:
        """A copy of the totals and of one stage's histogram (the operational monitor's windows are cut from these)."""
        with self._lock:
            histogram = self._hist.get(stage)
            return dict(self._counts), histogram.copy() if histogram is not None else LatencyHistogram()

    def snapshot(self, now: float, interval: bool = False) -> dict[str, Any]:
        """JSON-ready metrics; with `interval`, adds the figures since the previous interval snapshot."""
        with self._lock:
            counts = dict(self._counts)
            errors = dict(self._errors)
            hists = {stage: self._hist[stage].copy() for stage in self._stages}
            age = self._age.copy()
            rates = (self._in.rate(now), self._done.rate(now), self._dropped.rate(now))
            window_s = self._in.window_s
            last = self._last_result
            baseline = self._baseline
            if interval:
                self._baseline = (now, counts, hists, age)
        in_rate, done_rate, drop_rate = rates
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "uptime_s": round(now - self._started, 3),
            "counters": counts,
            "errors_by_kind": errors,
            "rates": {
                "window_s": window_s,
                "in_per_s": round(in_rate, 3),
                "processed_per_s": round(done_rate, 3),
                "dropped_per_s": round(drop_rate, 3),
                "drop_ratio": round(drop_rate / in_rate, 4) if in_rate > 0 else None,
            },
            "latency_ms": {stage: hist.summary() for stage, hist in hists.items()},
            "frame_age_ms": age.summary(),
            "last_result_age_s": round(now - last, 3) if last is not None else None,
        }
        if interval:
            data["interval"] = _interval(now, self._started, counts, hists, age, baseline)
        return data


def _interval(
    now: float,
    started: float,
    counts: dict[str, int],
    hists: dict[str, LatencyHistogram],
    age: LatencyHistogram,
    baseline: tuple[float, dict[str, int], dict[str, LatencyHistogram], LatencyHistogram] | None,
) -> dict[str, Any]:
    if baseline is None:
        return {
            "duration_s": round(now - started, 3),
            "counters": counts,
            "latency_ms": {stage: hist.summary() for stage, hist in hists.items()},
            "frame_age_ms": age.summary(),
        }
    since, base_counts, base_hists, base_age = baseline
    latency = {}
    for stage, hist in hists.items():
        base = base_hists.get(stage)
        latency[stage] = (hist.since(base) if base is not None else hist).summary()
    return {
        "duration_s": round(now - since, 3),
        "counters": {key: counts[key] - base_counts.get(key, 0) for key in counts},
        "latency_ms": latency,
        "frame_age_ms": age.since(base_age).summary(),
    }
