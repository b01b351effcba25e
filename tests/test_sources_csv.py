"""CSV replay: the bundled motion recordings and hand-made files with garbage rows."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES
from streams import Harness

from agent.backoff import BackoffConfig
from agent.errors import SourceError
from agent.sources import CsvConfig, EndOfStream, SourceState
from agent.sources.csv_replay import CsvReplaySource

WALKING = SAMPLES / "motion_walking.csv"  # 100 rows, t = 0.0 .. 9.9 s at 10 Hz, t + six IMU channels


def recorded() -> np.ndarray:
    return np.loadtxt(WALKING, delimiter=",", skiprows=1, dtype=np.float32)


def windows_until_end(source: CsvReplaySource, limit: int = 10_000) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    source.open()
    try:
        for _ in range(limit):
            try:
                window = source.read(1.0)
            except EndOfStream:
                return out
            if window is not None:
                out.append(window)
    finally:
        source.close()
    raise AssertionError("no end of stream")


def test_csv_replay_as_fast_as_possible_gives_the_recorded_windows() -> None:
    rows = recorded()
    source = CsvReplaySource(CsvConfig(path=WALKING, window=20, hop=10, rate="max"))
    windows = windows_until_end(source)
    assert len(windows) == 9  # windows end at samples 20, 30, ... 100
    assert source.channel_names == ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
    for index, window in enumerate(windows):
        assert window.dtype == np.float32 and window.shape == (20, 6)
        np.testing.assert_array_equal(window, rows[index * 10 : index * 10 + 20, 1:])


def test_csv_replay_follows_the_recorded_timestamps_scaled_by_speed() -> None:
    # 10 s recorded at speed 10: the last window (sample 100, t = 9.9 s) is due about 0.99 s after the start
    source = CsvReplaySource(CsvConfig(path=WALKING, window=50, hop=25, speed=10.0))
    started = time.monotonic()
    windows = windows_until_end(source)
    elapsed = time.monotonic() - started
    assert len(windows) == 3
    assert 0.7 < elapsed < 2.5, elapsed


def test_csv_channels_pick_and_order_columns() -> None:
    rows = recorded()
    source = CsvReplaySource(
        CsvConfig(path=WALKING, channels=["gyr_z", "acc_x"], window=5, hop=5, rate="max")
    )
    first = windows_until_end(source)[0]
    np.testing.assert_array_equal(first, rows[:5][:, [6, 1]])


def test_csv_missing_column_names_what_the_header_has(tmp_path: Path) -> None:
    source = CsvReplaySource(CsvConfig(path=WALKING, channels=["acc_x", "mag_x"]))
    with pytest.raises(SourceError, match=r"no column\(s\) \['mag_x'\] in the header \['t', 'acc_x'"):
        source.open()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty file"):
        CsvReplaySource(CsvConfig(path=empty)).open()
    with pytest.raises(SourceError, match="cannot open"):
        CsvReplaySource(CsvConfig(path=tmp_path / "none.csv")).open()


def test_csv_garbage_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "noisy.csv"
    lines = ["t,a,b"]
    for i in range(12):
        lines.append(f"{i * 0.01:.2f},{i},{-i}")
        if i == 3:
            lines += ["0.035,oops,1", "0.036,1", "0.037,nan,1", "0.038,1,inf", "", "x,1,2"]
    path.write_text("\n".join(lines) + "\n")
    source = CsvReplaySource(CsvConfig(path=path, window=4, hop=4, rate="max"))
    windows = windows_until_end(source)
    assert source.garbage == 5
    assert [w[:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_csv_of_persistent_garbage_becomes_an_error_state(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text("t,a\n" + "\n".join(f"{i},#{i}" for i in range(50)) + "\n")
    config = CsvConfig(
        path=path, garbage_limit=10, rate="max", reconnect=BackoffConfig(initial_s=0.05, max_s=0.1)
    )
    with Harness(config) as harness:
        harness.wait_state(SourceState.RECONNECTING, 5)
    status = harness.runner.status()
    assert "10 unusable samples in a row" in (status.last_error or "")
    assert status.garbage >= 10 and status.items == 0


def test_csv_loop_keeps_going_past_the_end_at_the_recorded_pace(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("t,a\n" + "\n".join(f"{i * 0.02:.2f},{i}" for i in range(10)) + "\n")  # 50 Hz, 0.2 s
    with Harness(CsvConfig(path=path, window=5, hop=5, loop=True, stall_timeout_s=1.0)) as harness:
        started = time.monotonic()
        items = harness.wait_items(6, 5)  # three passes
        elapsed = time.monotonic() - started
    assert [i.data[:, 0].tolist() for i in items[:4]] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] * 2
    assert 0.3 < elapsed < 2.0, elapsed  # about 0.5 s: 2.5 passes of 0.2 s
    assert "ended" not in harness.state_names


def test_csv_without_timestamps_uses_the_sample_rate(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("a,b\n" + "\n".join(f"{i},{i * 2}" for i in range(20)) + "\n")
    source = CsvReplaySource(
        CsvConfig(path=path, timestamp_column=None, sample_rate_hz=100.0, window=10, hop=10)
    )
    started = time.monotonic()
    windows = windows_until_end(source)
    assert len(windows) == 2 and windows[1][0].tolist() == [10, 20]
    assert 0.1 < time.monotonic() - started < 1.5
