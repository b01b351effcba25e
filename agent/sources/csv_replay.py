"""Replay of a recorded CSV file (a header row, then one sample per row) as windows of sensor samples.

Invariants:
- with native pacing a window is released when its last sample is due: at the recorded time since the first sample,
  divided by `speed` (the samples between are taken at once, so replay costs one sleep per window, not per sample);
  a replay that falls more than a second behind, or a timestamp that goes backwards, moves the schedule instead of
  bursting; with `max` windows come as fast as they can be cut;
- a row with a wrong column count, a non-number or a NaN/inf is counted as garbage and skipped (too many in a row is
  an error); a loop starts the next pass one sample interval after the last sample;
- the file is streamed row by row: memory does not grow with its length.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator
from typing import IO

from agent.errors import SourceError
from agent.sources.base import EndOfStream, ItemKind
from agent.sources.config import CsvConfig
from agent.sources.windows import GarbageGuard, Windower, finite_row
from agent.types import Array, FloatArray

MAX_LAG_S = 1.0


class CsvReplaySource:
    """A CSV recording replayed at its recorded pace (scaled) or as fast as possible."""

    kind: ItemKind = "window"

    def __init__(self, config: CsvConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"csv {config.path}"
        self.channel_names: tuple[str, ...] = tuple(config.channels)
        self._guard = GarbageGuard(self.label, config.garbage_limit)
        self._file: IO[str] | None = None
        self._rows: Iterator[list[str]] = iter(())
        self._columns: list[int] = []
        self._time_column: int | None = None
        self._width = 0
        self._windower = Windower(config.window, config.hop, max(1, len(config.channels)))
        self._pending: tuple[float, FloatArray] | None = None
        self._index = 0
        self._anchor: tuple[float, float] | None = None
        self._last_t: float | None = None
        self._interval = 0.0
        self._samples_this_pass = 0

    @property
    def garbage(self) -> int:
        """Unusable rows skipped so far."""
        return self._guard.total

    def open(self) -> None:
        """Opens the file and maps the header's columns."""
        self._open_file()
        self._windower = Windower(self.config.window, self.config.hop, len(self._columns))
        self._pending = None
        self._anchor = None
        self._last_t = None

    def _open_file(self) -> None:
        self.close()
        path = self.config.path
        try:
            self._file = path.open(newline="", encoding="utf-8", errors="replace")
        except OSError as problem:
            raise SourceError(f"{self.label}: cannot open ({problem.strerror or problem})") from None
        self._rows = csv.reader(self._file)
        header = [name.strip() for name in next(self._rows, [])]
        if not header:
            raise SourceError(f"{self.label}: empty file (a header row is needed)")
        wanted_time = self.config.timestamp_column
        if wanted_time is not None and wanted_time not in header:
            raise SourceError(f"{self.label}: no timestamp column '{wanted_time}' in the header {header}")
        self._time_column = header.index(wanted_time) if wanted_time is not None else None
        names = self.config.channels or [name for name in header if name != wanted_time]
        missing = [name for name in names if name not in header]
        if missing or not names:
            raise SourceError(f"{self.label}: no column(s) {missing or 'of data'} in the header {header}")
        self.channel_names = tuple(names)
        self._columns = [header.index(name) for name in names]
        self._width = len(header)
        self._index = 0
        self._samples_this_pass = 0

    def _next_sample(self) -> tuple[float, FloatArray] | None:
        """The next usable (time, row), or None at the end of the file."""
        for fields in self._rows:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != self._width:
                self._guard.bad(fields, f"{len(fields)} columns, the header has {self._width}")
                continue
            try:
                values = [float(fields[i]) for i in self._columns]
                t = float(fields[self._time_column]) if self._time_column is not None else math.nan
            except ValueError:
                self._guard.bad(fields, "not a number")
                continue
            row = finite_row(values)
            if row is None or (self._time_column is not None and not math.isfinite(t)):
                self._guard.bad(fields, "NaN or infinite value")
                continue
            self._guard.good()
            if self._time_column is None:
                t = self._index / (self.config.sample_rate_hz or 1.0)
            self._index += 1
            self._samples_this_pass += 1
            return t, row
        return None

    def _due(self, t: float) -> float:
        """Monotonic time at which the sample recorded at `t` is due (moves the schedule when far behind)."""
        now = time.monotonic()
        if self._anchor is None:
            self._anchor = (now, t)
        start, t0 = self._anchor
        due = start + (t - t0) / self.config.speed
        if now - due > MAX_LAG_S:
            self._anchor = (now, t)
            due = now
        return due

    def _rewind(self) -> None:
        if self._samples_this_pass == 0:
            raise SourceError(f"{self.label}: no usable sample in the file")
        last_due = self._due(self._last_t) if self._last_t is not None else time.monotonic()
        self._open_file()
        first = self._next_sample()
        if first is None:
            raise SourceError(f"{self.label}: no usable sample in the file")
        self._anchor = (last_due + self._interval / self.config.speed, first[0])
        self._last_t = None
        self._pending = first

    def read(self, timeout_s: float) -> Array | None:
        """The next window when it is due; None when it is not due within `timeout_s`; EndOfStream at the end."""
        if self._file is None:
            raise SourceError(f"{self.label}: not open")
        deadline = time.monotonic() + timeout_s
        paced = self.config.rate == "native"
        while True:
            if self._pending is None:
                sample = self._next_sample()
                if sample is None:
                    if not self.config.loop:
                        raise EndOfStream(self.label)
                    self._rewind()
                    continue
                self._pending = sample
            t, row = self._pending
            if self._last_t is not None and t < self._last_t:
                self._anchor = None  # the clock went backwards: the schedule starts again here
            if paced and self._anchor is None:
                self._anchor = (time.monotonic(), t)
            if paced and self._windower.needed == 1:
                delay = self._due(t) - time.monotonic()
                if delay > deadline - time.monotonic():
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    return None
                if delay > 0:
                    time.sleep(delay)
            self._pending = None
            if self._last_t is not None and t > self._last_t:
                self._interval = t - self._last_t
            self._last_t = t
            windows = self._windower.push(row)
            if windows:
                return windows[0]
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        """Closes the file."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
