"""JPEG snapshots of the frames behind events, kept under a byte budget; and JPEGs squeezed under a size cap.

Invariants:
- a snapshot is written atomically (`fsutil.write_atomic`): a power cut leaves the old set plus, at most, a stray
  temp file, which the next start removes;
- names are `{number:08d}_{UTC time}_{event id}.jpg`; the number grows by one per snapshot across restarts (it
  continues from the highest one found), and eviction goes by that number, not by the clock, which on a device may
  be unset or jump at boot;
- the folder is scanned once (on first use); afterwards an in-memory index holds names and sizes, and the managed
  files (names in the pattern above) never exceed `max_bytes` in total: the oldest go first. Other files are left
  alone and not counted. `max_bytes` 0 keeps nothing;
- a failure (unwritable folder, full disk, a frame that will not encode) is counted and logged once per kind, and
  `save` returns None: it never raises into the loop. `save` fsyncs (tens of ms on an SD card), so call it off the
  inference thread. The store is thread-safe.
"""

from __future__ import annotations

import errno
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.errors import InputError
from agent.fsutil import write_atomic
from agent.types import Array

log = logging.getLogger("agent.snapshots")

_NAME = re.compile(r"^(\d{8})_\d{8}T\d{6}Z_[A-Za-z0-9_-]{1,64}\.jpg$")
_TEMP = re.compile(r"^\.\d{8}_.*\.jpg\..*\.tmp$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MIN_SIDE = 16


@dataclass(frozen=True)
class SnapshotRef:
    """A saved snapshot: its file name in the store and its size."""

    name: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True)
class EncodedJpeg:
    """JPEG bytes with the quality and the size they were made at."""

    data: bytes
    quality: int
    width: int
    height: int


def encode_jpeg(frame: Array, quality: int = 85) -> bytes:
    """A JPEG of a BGR (or grey) uint8 frame; InputError when it is not one."""
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or min(frame.shape[:2]) < 1:
        raise InputError(f"cannot encode a {frame.dtype} array of shape {list(frame.shape)} as JPEG")
    try:
        ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    except cv2.error as problem:
        raise InputError(f"JPEG encoding failed: {problem}") from None
    if not ok:
        raise InputError("JPEG encoding failed")
    return bytes(buffer)


def encode_capped(frame: Array, max_bytes: int, quality: int = 85, min_quality: int = 40) -> EncodedJpeg:
    """A JPEG of at most `max_bytes`: lower quality first (down to `min_quality`), then smaller; InputError if none fits."""
    if max_bytes <= 0:
        raise InputError("the JPEG size cap must be positive")
    height, width = frame.shape[:2]
    ladder = sorted(
        {q for q in (quality, 75, 60, 50, min_quality) if min_quality <= q <= quality}, reverse=True
    )
    data = b""
    for step in ladder or [quality]:
        data = encode_jpeg(frame, step)
        if len(data) <= max_bytes:
            return EncodedJpeg(data, step, width, height)
    step = ladder[-1] if ladder else quality
    scale = 1.0
    while True:
        # bytes grow roughly with the pixel count: aim a little under the cap, and always shrink by 10 % at least
        scale *= min(math.sqrt(max_bytes / len(data)) * 0.95, 0.9)
        size = (round(width * scale), round(height * scale))
        if min(size) < MIN_SIDE:
            raise InputError(f"no JPEG of this {width}x{height} frame fits in {max_bytes} bytes")
        data = encode_jpeg(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), step)
        if len(data) <= max_bytes:
            return EncodedJpeg(data, step, size[0], size[1])


class SnapshotStore:
    """Saves event snapshots into a folder and keeps it under a byte budget (see the module docstring)."""

    def __init__(self, folder: Path | str, max_bytes: int, jpeg_quality: int = 85) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.jpeg_quality = jpeg_quality
        self.saved = 0
        self.evicted = 0
        self.failures = 0
        self.last_error: str | None = None
        self._index: list[tuple[int, str, int]] = []  # (number, name, size), oldest first
        self._total = 0
        self._next = 1
        self._scanned = False
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    @property
    def total_bytes(self) -> int:
        """Bytes held by the managed snapshots."""
        return self._total

    def names(self) -> list[str]:
        """The snapshots held, oldest first."""
        with self._lock:
            self._scan()
            return [name for _, name, _ in self._index]

    def path(self, name: str) -> Path | None:
        """The file of a held snapshot, or None for an unknown or malformed name."""
        if not _NAME.match(name):
            return None
        with self._lock:
            self._scan()
            return self.folder / name if any(n == name for _, n, _ in self._index) else None

    def save(self, frame: Array, event_id: str, now: float | None = None) -> SnapshotRef | None:
        """Stores a JPEG of `frame` for event `event_id`; None (counted, logged once) when it cannot."""
        if self.max_bytes <= 0:
            return None
        try:
            data = encode_jpeg(frame, self.jpeg_quality)
            if len(data) > self.max_bytes:
                data = encode_capped(frame, self.max_bytes, self.jpeg_quality).data
        except InputError as problem:
            self._fail("encode", f"snapshot not saved: {problem}")
            return None
        return self.save_jpeg(data, event_id, now)

    def save_jpeg(self, data: bytes, event_id: str, now: float | None = None) -> SnapshotRef | None:
        """Stores ready-made JPEG bytes for event `event_id`; None (counted, logged once) when it cannot."""
        if self.max_bytes <= 0 or len(data) > self.max_bytes:
            self._fail("size", f"snapshot of {len(data)} bytes exceeds the budget of {self.max_bytes}")
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        tag = _UNSAFE.sub("-", event_id).strip("-")[:64] or "event"
        with self._lock:
            if not self._scan():
                return None
            number = self._next
            name = f"{number:08d}_{stamp}_{tag}.jpg"
            self._evict(self.max_bytes - len(data))
            for attempt in range(4):
                try:
                    write_atomic(self.folder / name, data)
                    break
                except OSError as problem:
                    if problem.errno == errno.ENOSPC and attempt < 3 and self._index:
                        self._evict_oldest()  # a full disk: make room from our own oldest, a few at most
                        continue
                    self._fail(_kind(problem), f"snapshot not saved in {self.folder}: {_reason(problem)}")
                    return None
            self._next = number + 1
            self._index.append((number, name, len(data)))
            self._total += len(data)
            self.saved += 1
        return SnapshotRef(name, len(data))

    def status(self) -> dict[str, Any]:
        """JSON-ready figures for `status`."""
        with self._lock:
            return {
                "folder": str(self.folder),
                "count": len(self._index),
                "bytes": self._total,
                "max_bytes": self.max_bytes,
                "saved": self.saved,
                "evicted": self.evicted,
                "failures": self.failures,
                "last_error": self.last_error,
            }

    # ------------------------------------------------------------------ internals (lock held)

    def _scan(self) -> bool:
        if self._scanned:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entries = list(self.folder.iterdir())
        except OSError as problem:
            self._fail(_kind(problem), f"snapshot folder {self.folder} unusable: {_reason(problem)}")
            return False
        found = []
        for entry in entries:
            name = entry.name
            match = _NAME.match(name)
            try:
                if match and entry.is_file():
                    found.append((int(match.group(1)), name, entry.stat().st_size))
                elif _TEMP.match(name):
                    entry.unlink()  # left by a power cut during a write
            except OSError:
                continue
        found.sort()
        self._index = found
        self._total = sum(size for _, _, size in found)
        self._next = found[-1][0] + 1 if found else 1
        self._scanned = True
        self._evict(self.max_bytes)
        return True

    def _evict(self, room: int) -> None:
        while self._index and self._total > max(room, 0):
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, name, size = self._index.pop(0)
        try:
            (self.folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as problem:  # reported, and forgotten: the budget must not wedge on one stubborn file
            self._fail("evict", f"cannot remove old snapshot {name}: {_reason(problem)}")
        self._total -= size
        self.evicted += 1

    def _fail(self, kind: str, message: str) -> None:
        self.failures += 1
        self.last_error = message
        if kind in self._reported:
            log.debug("%s", message)
        else:
            self._reported.add(kind)
            log.warning("%s", message)


def _kind(problem: OSError) -> str:
    return errno.errorcode.get(problem.errno or 0, type(problem).__name__)


def _reason(problem: OSError) -> str:
    return problem.strerror or str(problem)
