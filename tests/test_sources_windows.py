"""Samples to windows, and the line splitter the text sensors share."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import SourceError
from agent.sources.windows import GarbageGuard, LineBuffer, Windower, parse_numbers


def column(values: range) -> np.ndarray:
    return np.asarray(list(values), dtype=np.float32).reshape(-1, 1)


def test_overlapping_windows_hold_the_newest_samples_in_order() -> None:
    windower = Windower(window=4, hop=2, channels=1)
    windows = windower.push(column(range(10)))
    assert [w[:, 0].tolist() for w in windows] == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    windows[0][0, 0] = 99  # each window is its own array
    assert windows[1][0, 0] == 2


def test_hop_larger_than_window_skips_samples_between_windows() -> None:
    windower = Windower(window=3, hop=5, channels=1)
    windows = windower.push(column(range(13)))
    assert [w[:, 0].tolist() for w in windows] == [[0, 1, 2], [5, 6, 7], [10, 11, 12]]


def test_windows_do_not_depend_on_how_samples_were_batched() -> None:
    whole = Windower(5, 3, 1).push(column(range(30)))
    pieces = Windower(5, 3, 1)
    batched = [w for n in range(30) for w in pieces.push(column(range(n, n + 1)))]
    assert [w.tolist() for w in whole] == [w.tolist() for w in batched]


def test_reset_starts_a_fresh_window() -> None:
    windower = Windower(3, 3, 1)
    windower.push(column(range(2)))
    windower.reset()
    assert windower.push(column(range(10, 13)))[0][:, 0].tolist() == [10, 11, 12]


def test_overlong_line_counts_once_however_it_is_chunked() -> None:
    data = b"1,2\n" + b"x" * 10_000 + b"\n3,4\n"
    for size in (1, 7, 100, 4097, len(data)):
        buffer = LineBuffer(max_line=4096)
        dropped = sum(buffer.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert dropped == 1, size
        assert list(buffer.lines) == ["1,2", "3,4"], size


def test_number_lines_with_optional_leading_timestamp() -> None:
    assert parse_numbers("12.5, 1, 2", 2)[0].tolist() == [[1, 2]]  # type: ignore[union-attr]
    assert parse_numbers("1 2", 2)[0].tolist() == [[1, 2]]  # type: ignore[union-attr]
    assert parse_numbers("1", 2) == (None, "1 values for 2 channels")
    assert parse_numbers("1,nan", 2) == (None, "NaN or infinite value")
    assert parse_numbers("1,two", 2) == (None, "not a number")


def test_garbage_guard_raises_only_for_garbage_in_a_row() -> None:
    guard = GarbageGuard("sensor", limit=3)
    for _ in range(10):
        guard.bad("x", "bad")
        guard.bad("x", "bad")
        guard.good()
    assert guard.total == 20
    guard.bad("x", "bad")
    guard.bad("x", "bad")
    with pytest.raises(SourceError, match="sensor: 3 unusable samples in a row"):
        guard.bad("x", "bad")
