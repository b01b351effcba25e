"""LatencyHistogram: quantiles agree with numpy.percentile within the bucket resolution; merge, reset, intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.monitor.histogram import LatencyHistogram

RESOLUTION = 0.05  # the default growth factor 1.05 bounds the relative error of a quantile

QUANTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


def _distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "lognormal invoke times around 12 ms": rng.lognormal(math.log(0.012), 0.35, 20_000),
        "gamma preprocess times around 2 ms": rng.gamma(2.0, 0.001, 5_000),
        "bimodal: fast path plus 10 % slow garbage-collected frames": np.concatenate(
            [rng.normal(0.004, 0.0004, 1_800), rng.normal(0.045, 0.004, 200)]
        ),
        "heavy tail: pareto sensor waits": 0.0005 * (1 + rng.pareto(1.5, 3_000)),
        "two values far apart": np.array([0.001, 0.2]),
    }


@pytest.mark.parametrize("name", list(_distributions()))
def test_quantiles_match_numpy_within_bucket_resolution(name: str) -> None:
    data = _distributions()[name]
    histogram = LatencyHistogram()
    for value in data:
        histogram.record(float(value))
    for q in QUANTILES:
        expected = float(np.percentile(data, q))
        got = histogram.percentile(q)
        assert got is not None
        assert abs(got - expected) <= RESOLUTION * expected, (q, got, expected)
    assert histogram.count == data.size
    assert histogram.min == pytest.approx(float(data.min()))
    assert histogram.max == pytest.approx(float(data.max()))
    assert histogram.mean == pytest.approx(float(data.mean()))


def test_constant_latency_reports_that_value_exactly() -> None:
    histogram = LatencyHistogram()
    for _ in range(100):
        histogram.record(0.02)
    assert histogram.p50 == histogram.p95 == histogram.p99 == pytest.approx(0.02)


def test_empty_histogram_summary_is_json_ready_nones() -> None:
    summary = LatencyHistogram().summary()
    assert summary == {
        "count": 0,
        "mean": None,
        "min": None,
        "p50": None,
        "p95": None,
        "p99": None,
        "max": None,
    }


def test_summary_is_in_milliseconds() -> None:
    histogram = LatencyHistogram()
    for value in (0.010, 0.020, 0.030):
        histogram.record(value)
    summary = histogram.summary()
    assert summary["count"] == 3
    assert summary["min"] == pytest.approx(10.0)
    assert summary["p50"] == pytest.approx(20.0, rel=RESOLUTION)
    assert summary["max"] == pytest.approx(30.0)
    assert summary["mean"] == pytest.approx(20.0)


def test_values_outside_the_bucket_range_are_kept_and_bounded_by_min_and_max() -> None:
    histogram = LatencyHistogram(low_s=1e-6, high_s=100.0)
    for value in (0.0, 5e-7, 250.0, 400.0):
        histogram.record(value)
    assert histogram.count == 4
    assert histogram.percentile(0) == 0.0
    assert histogram.percentile(100) == 400.0
    p75 = histogram.percentile(75)
    assert p75 is not None and 100.0 <= p75 <= 400.0


def test_negative_durations_count_as_zero_and_nan_is_ignored() -> None:
    histogram = LatencyHistogram()
    histogram.record(-0.001)  # a clock step between two readings
    histogram.record(float("nan"))
    assert histogram.count == 1
    assert histogram.min == 0.0


def test_merge_equals_recording_everything_in_one() -> None:
    rng = np.random.default_rng(3)
    first, second = rng.lognormal(-4, 0.5, 1_000), rng.lognormal(-3, 0.5, 1_000)
    a, b, whole = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for value in first:
        a.record(float(value))
        whole.record(float(value))
    for value in second:
        b.record(float(value))
        whole.record(float(value))
    a.merge(b)
    assert a.count == whole.count
    assert a.percentiles([50, 95, 99]) == whole.percentiles([50, 95, 99])
    assert a.min == whole.min and a.max == whole.max


def test_merging_histograms_of_different_layouts_is_refused() -> None:
    with pytest.raises(ValueError, match="layout"):
        LatencyHistogram().merge(LatencyHistogram(growth=1.1))


def test_reset_forgets_everything() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.5)
    histogram.reset()
    assert histogram.count == 0 and histogram.p50 is None and histogram.mean is None


def test_snapshot_and_reset_hands_over_the_interval_and_starts_a_new_one() -> None:
    histogram = LatencyHistogram()
    for value in (0.01, 0.02):
        histogram.record(value)
    interval = histogram.snapshot_and_reset()
    histogram.record(0.5)
    assert interval.count == 2 and interval.max == 0.02
    assert histogram.count == 1 and histogram.min == 0.5


def test_since_baseline_reports_only_the_values_recorded_after_it() -> None:
    rng = np.random.default_rng(11)
    histogram = LatencyHistogram()
    for value in rng.lognormal(math.log(0.005), 0.2, 2_000):  # an earlier, faster period
        histogram.record(float(value))
    baseline = histogram.copy()
    later = rng.lognormal(math.log(0.05), 0.2, 500)  # the model got ten times slower
    for value in later:
        histogram.record(float(value))
    interval = histogram.since(baseline)
    assert interval.count == later.size
    assert interval.total == pytest.approx(float(later.sum()))
    for q in (5, 50, 95):
        expected = float(np.percentile(later, q))
        assert interval.percentile(q) == pytest.approx(expected, rel=RESOLUTION)
    assert interval.min == pytest.approx(float(later.min()), rel=RESOLUTION)
    assert interval.max == pytest.approx(float(later.max()), rel=RESOLUTION)
    assert baseline.count == 2_000  # the baseline itself is untouched


def test_percentile_outside_0_100_is_refused() -> None:
    with pytest.raises(ValueError):
        LatencyHistogram().percentile(101)
