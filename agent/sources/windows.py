"""Building blocks of the sensor sources: samples to windows, and the garbage filter.

Invariants:
- a window is float32 [window, channels], a fresh array each time (it is handed to another thread), holding the newest
  `window` samples in arrival order; windows start `hop` samples apart, and when hop > window the samples between two
  windows are skipped;
- an unusable sample (unparsable, wrong column count, NaN or inf) is counted and never reaches a window; `limit`
  unusable samples in a row raise SourceError, so a sensor sending only garbage shows as an error, not as silence.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from agent.errors import SourceError
from agent.sources.base import EndOfStream, ItemKind
from agent.types import Array, FloatArray

log = logging.getLogger("agent.sources")

_SEPARATORS = re.compile(r"[,;\s]+")


class Windower:
    """Cuts a stream of samples into windows of `window` samples, `hop` samples apart."""

    def __init__(self, window: int, hop: int, channels: int) -> None:
        self.window = window
        self.hop = hop
        self.channels = channels
        self._buf = np.zeros((window, channels), dtype=np.float32)
        self._needed = window

    @property
    def needed(self) -> int:
        """Samples still to come before the next window is complete."""
        return self._needed

    def reset(self) -> None:
        """Forgets the samples so far (after a reconnect: a window never spans two connections)."""
        self._needed = self.window

    def push(self, rows: FloatArray) -> list[FloatArray]:
        """Adds samples ([n, channels]); returns the windows they complete, oldest first."""
        done: list[FloatArray] = []
        start, total = 0, len(rows)
        while start < total:
            take = min(self._needed, total - start)
            self._append(rows[start : start + take])
            start += take
            self._needed -= take
            if self._needed == 0:
                done.append(self._buf.copy())
                self._needed = self.hop
        return done

    def _append(self, chunk: FloatArray) -> None:
        count = len(chunk)
        if count >= self.window:
            self._buf[:] = chunk[-self.window :]
        else:
            self._buf[:-count] = self._buf[count:]
            self._buf[-count:] = chunk


class GarbageGuard:
    """Counts unusable samples; raises SourceError when `limit` of them come in a row."""

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self.total = 0
        self.in_a_row = 0

    def good(self) -> None:
        """Records a usable sample."""
        self.in_a_row = 0

    def bad(self, sample: object, reason: str) -> None:
        """Records an unusable sample; SourceError when there were too many in a row."""
        self.total += 1
        self.in_a_row += 1
        if self.total == 1 or self.total % 1000 == 0:
            log.warning(
                "%s: skipped unusable sample (%s; %d so far): %.80r", self.label, reason, self.total, sample
            )
        if self.in_a_row >= self.limit:
            self.in_a_row = 0
            raise SourceError(
                f"{self.label}: {self.limit} unusable samples in a row ({reason}: {sample!r:.80})"
            )


def finite_row(values: Sequence[float]) -> FloatArray | None:
    """The values as a [1, n] float32 row, or None when one is NaN or infinite."""
    if not all(math.isfinite(v) for v in values):
        return None
    return np.asarray(values, dtype=np.float32).reshape(1, -1)


def parse_numbers(line: str, channels: int) -> tuple[FloatArray | None, str]:
    """A text line of `channels` numbers, or `channels + 1` with a leading timestamp; (row, '') or (None, why)."""
    fields = [f for f in _SEPARATORS.split(line.strip()) if f]
    if len(fields) not in (channels, channels + 1):
        return None, f"{len(fields)} values for {channels} channels"
    try:
        values = [float(f) for f in fields[-channels:]]
    except ValueError:
        return None, "not a number"
    row = finite_row(values)
    return (row, "") if row is not None else (None, "NaN or infinite value")


def parse_json_sample(line: str, names: Sequence[str]) -> tuple[FloatArray | None, str]:
    """A JSON object with a number per channel name, or an array like `parse_numbers`; (row, '') or (None, why)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None, "not JSON"
    if isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            return None, f"missing channels {missing}"
        raw = [data[n] for n in names]
    elif isinstance(data, list):
        if len(data) not in (len(names), len(names) + 1):
            return None, f"{len(data)} values for {len(names)} channels"
        raw = data[-len(names) :]
    else:
        return None, "neither an object nor an array"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        return None, "not a number"
    row = finite_row([float(v) for v in raw])
    return (row, "") if row is not None else (None, "NaN or infinite value")


class LineBuffer:
    """Splits a byte stream into text lines (appended to `lines`, which several buffers may share).

    A line longer than `max_line` bytes is dropped whole, however the bytes were split into chunks.
    """

    def __init__(self, lines: deque[str] | None = None, max_line: int = 4096) -> None:
        self.max_line = max_line
        self._partial = b""
        self._discarding = False
        self.lines: deque[str] = deque() if lines is None else lines

    def feed(self, data: bytes) -> int:
        """Adds bytes; complete lines go to `lines`. Returns how many overlong lines were dropped."""
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        dropped = 0
        for chunk in chunks:
            if self._discarding:  # the end of a line already dropped (and counted)
                self._discarding = False
                continue
            if len(chunk) > self.max_line:
                dropped += 1
                continue
            text = chunk.decode("utf-8", errors="replace").strip()
            if text:
                self.lines.append(text)
        if len(self._partial) > self.max_line:
            dropped += 0 if self._discarding else 1
            self._discarding = True
            self._partial = b""
        return dropped

    def flush(self) -> None:
        """Treats what is left as a last line (at the end of the input)."""
        text = "" if self._discarding else self._partial.decode("utf-8", errors="replace").strip()
        self._partial = b""
        self._discarding = False
        if text:
            self.lines.append(text)


class LineSensor:
    """Base of the sensors that send one sample per text line (serial, JSON lines).

    Subclasses implement `_parse(line)` and `_receive(timeout_s)`, which waits at most `timeout_s` for bytes, hands
    them to `_feed(buffer, data)` and sets `_eof` at the end of the input; they call `_reset()` when they (re)open.
    """

    kind: ItemKind = "window"

    def __init__(
        self, name: str, label: str, window: int, hop: int, channels: Sequence[str], garbage_limit: int
    ):
        self.name = name
        self.label = label
        self.channel_names = tuple(channels)
        self._windower = Windower(window, hop, len(channels))
        self._guard = GarbageGuard(label, garbage_limit)
        self._lines: deque[str] = deque()
        self._ready: deque[FloatArray] = deque()
        self._eof = False

    @property
    def garbage(self) -> int:
        """Unusable samples skipped so far."""
        return self._guard.total

    def _parse(self, line: str) -> tuple[FloatArray | None, str]:
        raise NotImplementedError

    def _receive(self, timeout_s: float) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        self._windower.reset()
        self._lines.clear()
        self._ready.clear()
        self._eof = False

    def _feed(self, buffer: LineBuffer, data: bytes) -> None:
        for _ in range(buffer.feed(data)):
            self._guard.bad(data[-80:], f"line longer than {buffer.max_line} bytes")

    def _next_window(self) -> FloatArray | None:
        lines = self._lines
        while not self._ready and lines:
            line = lines.popleft()
            row, why = self._parse(line)
            if row is None:
                self._guard.bad(line, why)
                continue
            self._guard.good()
            self._ready.extend(self._windower.push(row))
        return self._ready.popleft() if self._ready else None

    def read(self, timeout_s: float) -> Array | None:
        """The next window, or None when none was complete within `timeout_s`; EndOfStream at the end of input."""
        deadline = time.monotonic() + timeout_s
        while True:
            window = self._next_window()
            if window is not None:
                return window
            if self._eof:
                raise EndOfStream(f"{self.label}: end of input")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._receive(remaining)
