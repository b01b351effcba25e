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

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.errors import InputError
from agent.inference import KeypointsResult, Result, SegmentationResult
from agent.pipeline.budget import BudgetFolder
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
    """Saves event snapshots into a folder and keeps it under a byte budget (see the module docstring).

    The budget, the scan and the full-disk handling are `BudgetFolder`'s (agent/pipeline/budget.py), which the
    hard-example store shares; a snapshot is an entry of one file."""

    def __init__(self, folder: Path | str, max_bytes: int, jpeg_quality: int = 85) -> None:
        self.jpeg_quality = jpeg_quality
        self._store = BudgetFolder(folder, max_bytes, _NAME, _TEMP, what="snapshot", logger=log)
        self._encode_failures = 0

    @property
    def folder(self) -> Path:
        """Where the snapshots are."""
        return self._store.folder

    @property
    def max_bytes(self) -> int:
        """The byte budget."""
        return self._store.max_bytes

    @property
    def saved(self) -> int:
        """Snapshots saved since start."""
        return self._store.saved

    @property
    def evicted(self) -> int:
        """Snapshots removed to keep the budget."""
        return self._store.evicted

    @property
    def failures(self) -> int:
        """Snapshots that could not be saved (or old ones that could not be removed)."""
        return self._store.failures

    @property
    def last_error(self) -> str | None:
        """The last failure, in one line."""
        return self._store.last_error

    @property
    def total_bytes(self) -> int:
        """Bytes held by the managed snapshots."""
        return self._store.total_bytes

    def names(self) -> list[str]:
        """The snapshots held, oldest first."""
        return [name for entry in self._store.entries() for name in entry.files]

    def path(self, name: str) -> Path | None:
        """The file of a held snapshot, or None for an unknown or malformed name."""
        match = _NAME.match(name)
        if not match:
            return None
        entry = self._store.get(int(match.group(1)))
        return self.folder / name if entry is not None and name in entry.files else None

    def save(self, frame: Array, event_id: str, now: float | None = None) -> SnapshotRef | None:
        """Stores a JPEG of `frame` for event `event_id`; None (counted, logged once) when it cannot."""
        if self.max_bytes <= 0:
            return None
        try:
            data = encode_jpeg(frame, self.jpeg_quality)
            if len(data) > self.max_bytes:
                data = encode_capped(frame, self.max_bytes, self.jpeg_quality).data
        except InputError as problem:
            self._store.fail("encode", f"snapshot not saved: {problem}")
            return None
        return self.save_jpeg(data, event_id, now)

    def save_jpeg(self, data: bytes, event_id: str, now: float | None = None) -> SnapshotRef | None:
        """Stores ready-made JPEG bytes for event `event_id`; None (counted, logged once) when it cannot."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        tag = _UNSAFE.sub("-", event_id).strip("-")[:64] or "event"
        entry = self._store.add(lambda number: [(f"{number:08d}_{stamp}_{tag}.jpg", data)])
        if entry is None:
            return None
        [(name, size)] = entry.files.items()
        return SnapshotRef(name, size)

    def status(self) -> dict[str, Any]:
        """JSON-ready figures for `status`."""
        return self._store.status()


def overlay(frame: Array, result: Result) -> Array:
    """The frame with what a segmentation or keypoints result reports drawn on it (a copy): each region's box and
    label with its share, each landmark as a dot; other results (and non-colour frames) come back as they are."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        return frame
    if isinstance(result, SegmentationResult) and result.regions:
        drawn: Array = np.array(frame, copy=True)
        for region in result.regions:
            x1, y1, x2, y2 = (round(v) for v in region.box)
            cv2.rectangle(drawn, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), (0, 255, 255), 2)
            text = f"{region.label} {region.share:.0%}"
            cv2.putText(
                drawn, text, (x1 + 2, max(y1 + 14, 14)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1
            )
        return drawn
    if isinstance(result, KeypointsResult) and result.keypoints and result.present:
        drawn = np.array(frame, copy=True)
        for point in result.keypoints:
            cv2.circle(drawn, (round(point.x), round(point.y)), 2, (0, 255, 0), -1)
        return drawn
    return frame
