"""Latency measurement: percentiles of invoke alone and of the whole pre-process + invoke + decode path."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.inference.model import Model


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds and the throughput they imply."""

    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        """Sequential throughput: 1 / mean latency."""
        return 1000.0 / self.mean_ms if self.mean_ms > 0 else 0.0


def latency_stats(seconds: Sequence[float]) -> LatencyStats:
    """Percentiles of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99]) if ms.size else (0.0, 0.0, 0.0)
    return LatencyStats(
        int(ms.size), float(ms.mean()) if ms.size else 0.0, float(p50), float(p90), float(p99)
    )


def time_calls(call: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Durations of `runs` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    durations = []
    clock = time.perf_counter
    for _ in range(runs):
        start = clock()
        call()
        durations.append(clock() - start)
    return durations


def rss_mb() -> float:
    """Resident set size of this process in MiB (current, from /proc; peak where /proc is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass(frozen=True)
class BenchReport:
    """What `edge-agent bench` prints."""

    invoke: LatencyStats
    full: LatencyStats
    preprocess: LatencyStats
    decode: LatencyStats
    rss_mb: float


def bench_model(model: Model, data: np.ndarray, runs: int, warmup: int = 10) -> BenchReport:
    """Times invoke alone, then pre-process + invoke + decode, on the same input."""
    prepared = model.prepare(data)
    tensor = prepared.tensor.copy()
    invoke = latency_stats(time_calls(lambda: model.invoke(tensor), runs, warmup))
    stages: list[tuple[float, float, float]] = []
    for index in range(runs + warmup):
        _, timings = model.infer_timed(data)
        if index >= warmup:
            stages.append((timings.preprocess_s, timings.invoke_s, timings.decode_s))
    pre, inv, dec = zip(*stages, strict=True) if stages else ((), (), ())
    full = latency_stats([a + b + c for a, b, c in zip(pre, inv, dec, strict=True)])
    return BenchReport(invoke, full, latency_stats(pre), latency_stats(dec), rss_mb())
