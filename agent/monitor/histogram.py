"""Latency histograms with fixed log-spaced buckets: O(1) recording, true quantiles within the bucket resolution.

Invariants:
- the bucket layout is fixed at construction: bucket 0 holds values below `low_s` (zero included), buckets
  1..n cover `[low_s * growth**(i-1), low_s * growth**i)`, and the last bucket holds values at or above `high_s`;
  two histograms merge or subtract only when their layouts are equal;
- `record` costs one `bisect` on a precomputed edge list and a few attribute updates (no allocation), so it can stay on
  in a loop doing hundreds of items per second; negative values count as 0 and NaN is ignored;
- a quantile is estimated by the numpy "linear" rule (`numpy.percentile`'s default) over values placed
  log-uniformly inside their bucket, then clamped to the recorded min and max: the relative error is below
  `growth - 1` (5 % by default) for values inside `[low_s, high_s)`;
- a histogram is not thread-safe on its own; `LoopMetrics` guards its histograms with a lock.

Interval views do not reset the lifetime histogram: a reader keeps a `copy()` as a baseline and later takes
`current.since(baseline)`, so several readers (status, telemetry) each get their own interval without a second writer.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

SUMMARY_QUANTILES = (50.0, 95.0, 99.0)


class LatencyHistogram:
    """Counts of durations (seconds) in fixed log-spaced buckets, with count, sum, min and max."""

    __slots__ = ("_counts", "_edges", "count", "growth", "high_s", "low_s", "max", "min", "total")

    def __init__(self, low_s: float = 1e-6, high_s: float = 100.0, growth: float = 1.05) -> None:
        if not (0 < low_s < high_s) or growth <= 1.0:
            raise ValueError("a histogram needs 0 < low_s < high_s and growth > 1")
        size = math.ceil(math.log(high_s / low_s) / math.log(growth))
        self.low_s, self.high_s, self.growth = low_s, high_s, growth
        self._edges: list[float] = [low_s * growth**i for i in range(size)] + [high_s]
        self._counts: list[int] = [0] * (size + 2)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    # ------------------------------------------------------------------ writing

    def record(self, seconds: float) -> None:
        """Counts one duration."""
        if seconds != seconds:  # NaN
            return
        if seconds < 0.0:
            seconds = 0.0
        self._counts[bisect_right(self._edges, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def reset(self) -> None:
        """Forgets every recorded value."""
        self._counts = [0] * len(self._counts)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def merge(self, other: LatencyHistogram) -> None:
        """Adds the values recorded in `other` (same layout) to this histogram."""
        self._check_layout(other)
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LatencyHistogram:
        """An independent copy (a baseline for `since`, or a snapshot to read outside a lock)."""
        clone = LatencyHistogram.__new__(LatencyHistogram)
        clone.low_s, clone.high_s, clone.growth = self.low_s, self.high_s, self.growth
        clone._edges = self._edges  # never mutated: shared
        clone._counts = list(self._counts)
        clone.count, clone.total, clone.min, clone.max = self.count, self.total, self.min, self.max
        return clone

    def snapshot_and_reset(self) -> LatencyHistogram:
        """A copy of the values recorded so far, leaving this histogram empty (for a single interval reader)."""
        clone = self.copy()
        self.reset()
        return clone

    def since(self, baseline: LatencyHistogram) -> LatencyHistogram:
        """The values recorded after `baseline` was copied from this histogram; min and max to bucket resolution."""
        self._check_layout(baseline)
        delta = LatencyHistogram.__new__(LatencyHistogram)
        delta.low_s, delta.high_s, delta.growth = self.low_s, self.high_s, self.growth
        delta._edges = self._edges
        delta._counts = [max(a - b, 0) for a, b in zip(self._counts, baseline._counts, strict=True)]
        delta.count = sum(delta._counts)
        delta.total = max(self.total - baseline.total, 0.0) if delta.count else 0.0
        delta.min, delta.max = math.inf, -math.inf
        if delta.count:
            first = next(i for i, c in enumerate(delta._counts) if c)
            last = max(i for i, c in enumerate(delta._counts) if c)
            delta.min = max(self._lower(first), self.min)
            delta.max = min(self._upper(last), self.max)
        return delta

    # ------------------------------------------------------------------ reading

    @property
    def mean(self) -> float | None:
        """Mean of the recorded values, or None when empty."""
        return self.total / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) in seconds, or None when empty."""
        return self.percentiles((q,))[0]

    def percentiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several percentiles (0..100) in one pass over the buckets."""
        if any(not 0.0 <= q <= 100.0 for q in qs):
            raise ValueError("percentiles are between 0 and 100")
        if not self.count:
            return [None for _ in qs]
        cumulative = list(accumulate(self._counts))
        out: list[float | None] = []
        for q in qs:
            rank = q / 100.0 * (self.count - 1)
            below = math.floor(rank)
            value = self._value_at(below, cumulative)
            if rank > below:
                upper = self._value_at(below + 1, cumulative)
                value += (rank - below) * (upper - value)
            out.append(value)
        return out

    @property
    def p50(self) -> float | None:
        """Median, seconds."""
        return self.percentile(50.0)

    @property
    def p95(self) -> float | None:
        """95th percentile, seconds."""
        return self.percentile(95.0)

    @property
    def p99(self) -> float | None:
        """99th percentile, seconds."""
        return self.percentile(99.0)

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures in milliseconds: count, mean, min, p50, p95, p99, max (None when empty)."""
        p50, p95, p99 = self.percentiles(SUMMARY_QUANTILES)
        return {
            "count": self.count,
            "mean": _ms(self.mean),
            "min": _ms(self.min if self.count else None),
            "p50": _ms(p50),
            "p95": _ms(p95),
            "p99": _ms(p99),
            "max": _ms(self.max if self.count else None),
        }

    def buckets(self) -> Iterable[tuple[float, float, int]]:
        """The non-empty buckets as (lower_s, upper_s, count), lowest first."""
        for index, count in enumerate(self._counts):
            if count:
                yield self._lower(index), self._upper(index), count

    # ------------------------------------------------------------------ internals

    def _lower(self, index: int) -> float:
        return 0.0 if index == 0 else self._edges[index - 1]

    def _upper(self, index: int) -> float:
        return self._edges[index] if index < len(self._edges) else max(self.max, self.high_s)

    def _value_at(self, k: int, cumulative: list[int]) -> float:
        """Estimate of the k-th smallest value (0-based)."""
        if k <= 0:
            return self.min
        if k >= self.count - 1:
            return self.max
        index = bisect_right(cumulative, k)
        inside = self._counts[index]
        position = (k - (cumulative[index] - inside) + 0.5) / inside
        low, high = self._lower(index), self._upper(index)
        low, high = max(low, self.min), min(high, self.max)
        linear = low <= 0.0 or high <= low  # the underflow bucket, or a bucket squeezed to one value
        value = low + position * (high - low) if linear else low * (high / low) ** position
        return min(max(value, self.min), self.max)

    def _check_layout(self, other: LatencyHistogram) -> None:
        if (other.low_s, other.high_s, other.growth) != (self.low_s, self.high_s, self.growth):
            raise ValueError("histograms with different bucket layouts cannot be combined")

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, p50={self.p50}, p99={self.p99})"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)
