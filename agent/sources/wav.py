"""Replay of a WAV file as windows of audio samples (float32 in [-1, 1], [window, channels]).

Plain integer PCM (8, 16, 24, 32-bit) is read with the standard library's `wave`; what `wave` refuses (float samples,
and WAVE_FORMAT_EXTENSIBLE before Python 3.12) goes through a small RIFF chunk reader here, which also gives the
reason a file cannot be read (not a WAV file, an unsupported encoding such as ADPCM or mu-law).

Invariants:
- the file is read in chunks of at most CHUNK_FRAMES frames: memory does not grow with its length;
- windows start `hop` samples apart; samples after the last whole window are not delivered (as with the other sensor
  sources); with `loop` the signal continues at the start of the file, so a window may span the seam;
- pacing: `native` releases a window when its last sample is over in real time at the file's sample rate; a number
  releases that many windows per second; `max` as fast as they are cut. A replay more than MAX_LAG_S behind moves
  its schedule instead of bursting; `read` sleeps only within its timeout;
- a file that fails the configured `sample_rate` or channel names is refused when the source opens, with both
  values in the reason; a float sample that is NaN or infinite is counted as garbage and skipped.
"""

from __future__ import annotations

import logging
import struct
import time
import wave
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from agent.errors import SourceError
from agent.sources.base import EndOfStream, ItemKind
from agent.sources.config import WavConfig
from agent.sources.pcm import PcmFormat, PcmFormatError, checked_format, decode, parse_fmt_chunk
from agent.sources.windows import GarbageGuard, Windower
from agent.types import Array, FloatArray

log = logging.getLogger("agent.sources")

CHUNK_FRAMES = 65_536
MAX_LAG_S = 1.0


class FrameReader(Protocol):
    """What the source needs of an open WAV file (`wave.Wave_read` has it)."""

    def readframes(self, nframes: int) -> bytes:
        """Up to `nframes` frames; fewer (or none) at the end."""

    def rewind(self) -> None:
        """Goes back to the first frame."""

    def close(self) -> None:
        """Closes the file."""


class RiffData:
    """The data chunk of a WAV file, read in frames from an open file."""

    def __init__(self, file: BinaryIO, offset: int, size: int, frame_bytes: int) -> None:
        self._file = file
        self._offset = offset
        self._size = size
        self._frame_bytes = frame_bytes
        self._left = size

    def readframes(self, nframes: int) -> bytes:
        """Up to `nframes` frames; fewer (or none) at the end of the chunk or of a truncated file."""
        data = self._file.read(min(nframes * self._frame_bytes, self._left))
        self._left -= len(data)
        return data

    def rewind(self) -> None:
        """Goes back to the first frame."""
        self._file.seek(self._offset)
        self._left = self._size

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


def open_riff(path: Path) -> tuple[PcmFormat, RiffData]:
    """The format and data chunk of a WAV file, walking its RIFF chunks; PcmFormatError when it is not usable."""
    file = path.open("rb")
    try:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise PcmFormatError("not a WAV file (no RIFF/WAVE header)")
        fmt: PcmFormat | None = None
        while True:
            header = file.read(8)
            if len(header) < 8:
                raise PcmFormatError(
                    "no data chunk" if fmt is not None else "no fmt chunk (a truncated file?)"
                )
            name, size = header[:4], struct.unpack("<I", header[4:])[0]
            if name == b"fmt ":
                body = file.read(size)
                if len(body) < size:
                    raise PcmFormatError("the fmt chunk is cut short (a truncated file?)")
                fmt = parse_fmt_chunk(body)
                file.seek(size & 1, 1)
            elif name == b"data":
                if fmt is None:
                    raise PcmFormatError("the data chunk comes before the fmt chunk")
                return fmt, RiffData(file, file.tell(), size, fmt.frame_bytes)
            else:
                file.seek(size + (size & 1), 1)  # chunks are padded to an even length
    except BaseException:
        file.close()
        raise


def open_wav(path: Path) -> tuple[PcmFormat, FrameReader]:
    """The file's format and a reader of its frames; PcmFormatError (unusable file) or OSError (cannot open)."""
    try:
        # the reader outlives this function: the source closes it (a `with` block would close it here)
        reader = wave.open(str(path), "rb")  # noqa: SIM115
    except (wave.Error, EOFError, struct.error):
        return open_riff(path)  # float or extensible samples, or not a WAV file: open_riff says which
    try:
        fmt = checked_format("int", reader.getsampwidth(), reader.getnchannels(), reader.getframerate())
    except PcmFormatError:
        reader.close()
        raise
    return fmt, reader


class WavSource:
    """A WAV file replayed in real time, at a number of windows per second, or as fast as possible."""

    kind: ItemKind = "window"

    def __init__(self, config: WavConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"wav {config.path}"
        self.channel_names: tuple[str, ...] = tuple(config.channels)
        self.format: PcmFormat | None = None
        """The open file's format (None before the first open)."""
        self._guard = GarbageGuard(self.label, config.garbage_limit)
        self._reader: FrameReader | None = None
        self._windower = Windower(config.window, config.hop, max(1, len(config.channels)))
        self._pending: tuple[float, FloatArray] | None = None
        self._frames = 0
        self._frames_this_pass = 0
        self._released = 0
        self._started = 0.0

    @property
    def garbage(self) -> int:
        """Unusable (NaN or infinite) samples skipped so far."""
        return self._guard.total

    def open(self) -> None:
        """Opens the file and checks its sample rate and channels against the config."""
        self.close()
        try:
            fmt, reader = open_wav(self.config.path)
        except OSError as problem:
            raise SourceError(f"{self.label}: cannot open ({problem.strerror or problem})") from None
        except PcmFormatError as problem:
            raise SourceError(f"{self.label}: {problem}") from None
        try:
            self.channel_names = self._check(fmt)
        except SourceError:
            reader.close()
            raise
        self._reader, self.format = reader, fmt
        self._windower = Windower(self.config.window, self.config.hop, fmt.channels)
        self._pending = None
        self._frames = self._frames_this_pass = self._released = 0
        self._started = time.monotonic()

    def _check(self, fmt: PcmFormat) -> tuple[str, ...]:
        """The channel names for the file; SourceError when it does not fit the config."""
        config = self.config
        if config.sample_rate is not None and fmt.sample_rate != config.sample_rate:
            raise SourceError(
                f"{self.label}: the file is sampled at {fmt.sample_rate} Hz, the config expects "
                f"sample_rate = {config.sample_rate} Hz"
            )
        names = tuple(config.channels) or tuple(f"ch{i}" for i in range(fmt.channels))
        if len(names) != fmt.channels:
            raise SourceError(
                f"{self.label}: the file has {fmt.channels} channel(s), the config names {len(names)}: {list(names)}"
            )
        interval = config.hop / fmt.sample_rate
        if config.rate == "native" and interval >= config.stall_timeout_s:
            log.warning(
                "%s: windows come every %g s at %d Hz, not less than stall_timeout_s (%g s): it will report stalls",
                self.label,
                interval,
                fmt.sample_rate,
                config.stall_timeout_s,
            )
        return names

    def read(self, timeout_s: float) -> Array | None:
        """The next window when it is due; None when it is not due within `timeout_s`; EndOfStream at the end."""
        if self._reader is None or self.format is None:
            raise SourceError(f"{self.label}: not open")
        deadline = time.monotonic() + timeout_s
        if self._pending is None:
            self._pending = self._next_window(self._reader, self.format)
        position_s, window = self._pending
        if self.config.rate != "max":
            now = time.monotonic()
            due = self._started + position_s
            if now - due > MAX_LAG_S:  # fell far behind (a suspended host): move the schedule, do not burst
                self._started += now - due
                due = now
            if due > deadline:
                time.sleep(max(0.0, deadline - now))
                return None
            if due > now:
                time.sleep(due - now)
        self._pending = None
        self._released += 1
        return window

    def _next_window(self, reader: FrameReader, fmt: PcmFormat) -> tuple[float, FloatArray]:
        """The next window and when it is due (seconds after the schedule's start)."""
        while True:
            try:
                data = reader.readframes(min(self._windower.needed, CHUNK_FRAMES))
            except (OSError, wave.Error, EOFError) as problem:
                raise SourceError(f"{self.label}: read failed: {problem}") from None
            rows = decode(data, fmt)
            if len(rows) == 0:
                self._end_of_pass(reader)
                continue
            self._frames += len(rows)
            self._frames_this_pass += len(rows)
            if fmt.encoding == "float":
                rows = self._finite(rows)
            # at most `needed` frames were read, so a window can only be completed by the last of them
            windows = self._windower.push(rows)
            if windows:
                return self._position(fmt), windows[-1]

    def _position(self, fmt: PcmFormat) -> float:
        rate = self.config.rate
        if rate == "native":
            return self._frames / fmt.sample_rate
        return self._released / rate if isinstance(rate, float) else 0.0

    def _end_of_pass(self, reader: FrameReader) -> None:
        if self._frames_this_pass == 0:
            raise SourceError(f"{self.label}: no samples in the file")
        if not self.config.loop:
            raise EndOfStream(self.label)
        try:
            reader.rewind()
        except (OSError, wave.Error) as problem:
            raise SourceError(f"{self.label}: cannot rewind: {problem}") from None
        self._frames_this_pass = 0

    def _finite(self, rows: FloatArray) -> FloatArray:
        """The rows without NaN or infinite values, each one skipped counted as garbage."""
        usable = np.asarray(np.isfinite(rows).all(axis=1), dtype=np.bool_)
        if usable.all():
            self._guard.good()
            return rows
        for index in range(len(rows)):
            if usable[index]:
                self._guard.good()
            else:
                self._guard.bad(rows[index].tolist(), "NaN or infinite value")
        return rows[usable]

    def close(self) -> None:
        """Closes the file."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
