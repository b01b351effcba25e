"""The synthetic sensor: signal shape, injected faults where they were configured, determinism and pacing."""

from __future__ import annotations

import time

import numpy as np
import pytest
from streams import Harness

from agent.sources import FaultConfig, SyntheticConfig
from agent.sources.synthetic import SyntheticSource

RATE = 100.0


def generate(config: SyntheticConfig, windows: int) -> np.ndarray:
    """`windows` consecutive windows (hop == window) stacked into one [samples, channels] array."""
    assert config.hop == config.window and config.rate == "max"
    source = SyntheticSource(config)
    source.open()
    try:
        parts = [source.read(1.0) for _ in range(windows)]
    finally:
        source.close()
    assert all(p is not None for p in parts)
    return np.concatenate(parts)  # type: ignore[arg-type,unused-ignore]


def base(**changes: object) -> SyntheticConfig:
    options: dict[str, object] = {
        "channels": ["a", "b"],
        "rate_hz": RATE,
        "rate": "max",
        "window": 50,
        "hop": 50,
        "amplitude": [1.0, 2.0],
        "frequency_hz": [1.0, 5.0],
        "offset": [0.0, 10.0],
        "noise_std": 0.0,
    }
    options.update(changes)
    return SyntheticConfig(**options)  # type: ignore[arg-type,unused-ignore]


def test_clean_signal_is_offset_plus_sine_per_channel() -> None:
    samples = generate(base(), 4)
    t = np.arange(200) / RATE
    np.testing.assert_allclose(samples[:, 0], np.sin(2 * np.pi * t), atol=1e-5)
    np.testing.assert_allclose(samples[:, 1], 10 + 2 * np.sin(2 * np.pi * 5 * t), atol=1e-5)
    assert samples.dtype == np.float32


def test_spikes_appear_exactly_at_the_configured_times_and_channels() -> None:
    spike = FaultConfig(kind="spike", channels=["a"], at_s=[0.3, 1.25], magnitude=8.0)
    clean = generate(base(), 4)
    faulty = generate(base(faults=[spike]), 4)
    diff = faulty - clean
    rows, cols = np.nonzero(np.abs(diff) > 1e-6)
    assert rows.tolist() == [30, 125] and cols.tolist() == [0, 0]
    np.testing.assert_allclose(diff[rows, cols], 8.0, atol=1e-5)


def test_stuck_at_holds_the_value_for_its_duration_across_windows() -> None:
    stuck = FaultConfig(
        kind="stuck", channels=["b"], at_s=[0.45], duration_s=0.2
    )  # samples 45..64, spans 2 windows
    clean = generate(base(), 2)
    faulty = generate(base(faults=[stuck]), 2)
    assert np.all(faulty[45:65, 1] == clean[45, 1])
    np.testing.assert_array_equal(faulty[:45], clean[:45])
    np.testing.assert_array_equal(faulty[65:], clean[65:])
    np.testing.assert_array_equal(faulty[:, 0], clean[:, 0])


def test_dropout_is_nan_for_its_duration() -> None:
    dropout = FaultConfig(kind="dropout", at_s=[0.1], duration_s=0.05)
    faulty = generate(base(faults=[dropout]), 1)
    nan_rows = np.nonzero(np.isnan(faulty).all(axis=1))[0]
    assert nan_rows.tolist() == [10, 11, 12, 13, 14]
    assert not np.isnan(faulty[15:]).any()


def test_random_faults_follow_their_probability_and_the_seed() -> None:
    spikes = FaultConfig(kind="spike", probability=0.01, magnitude=100.0)
    config = base(faults=[spikes], noise_std=0.1, seed=7)
    first, again = generate(config, 40), generate(config, 40)
    np.testing.assert_array_equal(first, again)  # same seed, same samples
    count = int((np.abs(first[:, 0]) > 50).sum() + (np.abs(first[:, 1] - 10) > 50).sum())
    assert 20 <= count <= 65, count  # 4000 chances at 1 %
    other = generate(base(faults=[spikes], noise_std=0.1, seed=8), 40)
    assert not np.array_equal(first, other)


def test_native_pacing_runs_in_real_time() -> None:
    config = SyntheticConfig(channels=["a"], rate_hz=200.0, window=20, hop=20)  # a window every 0.1 s
    with Harness(config) as harness:
        started = time.monotonic()
        items = harness.wait_items(6, 5)
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 1.5, elapsed
    assert items[0].data.shape == (20, 1) and items[0].kind == "window"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"amplitude": [1.0, 2.0, 3.0]}, "amplitude has 3 values for 2 channels"),
        ({"faults": [{"kind": "spike", "channels": ["zz"], "at_s": [1]}]}, "fault channels"),
        ({"faults": [{"kind": "stuck"}]}, "needs at_s times or a probability"),
        ({"rate": "native", "rate_hz": 1.0, "stall_timeout_s": 5.0}, "stall_timeout_s must exceed"),
    ],
)
def test_synthetic_config_mistakes_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        base(**changes)
