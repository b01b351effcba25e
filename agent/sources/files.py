"""Recorded frames: a video file, or a folder of images, replayed at a steady pace or as fast as possible.

Invariants: items are released on a fixed schedule (the file's frame rate, the configured rate, or none for `max`);
a consumer that falls more than one period behind moves the schedule instead of getting a burst; `read` sleeps only
within its timeout; at the end the source loops (same schedule) or raises EndOfStream; a file or folder that yields
no frame at all is an error, never an endless silent loop. Unreadable images are counted as garbage and skipped.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import cv2

from agent.errors import SourceError
from agent.sources.base import EndOfStream, ItemKind
from agent.sources.config import ImagesConfig, VideoConfig
from agent.types import Array

log = logging.getLogger("agent.sources")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
FALLBACK_FPS = 25.0


class Pacer:
    """Tells when the next item is due: `per_s` items per second, or at once when `per_s` is None."""

    def __init__(self, per_s: float | None) -> None:
        self.interval = 1.0 / per_s if per_s else None
        self._due: float | None = None

    def wait(self, timeout_s: float) -> bool:
        """Sleeps until the next item is due; False (after sleeping `timeout_s`) when that is later than `timeout_s`."""
        if self.interval is None or self._due is None:
            return True
        delay = self._due - time.monotonic()
        if delay > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return False
        if delay > 0:
            time.sleep(delay)
        return True

    def taken(self) -> None:
        """Records that an item was released now; schedules the next."""
        if self.interval is None:
            return
        now = time.monotonic()
        due = (self._due if self._due is not None else now) + self.interval
        self._due = due if due >= now - self.interval else now + self.interval


def _rate(rate: str | float, native: float) -> float | None:
    if rate == "max":
        return None
    return native if rate == "native" else float(rate)


class VideoSource:
    """A video file (any container OpenCV can decode)."""

    kind: ItemKind = "frame"

    def __init__(self, config: VideoConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"video {config.path}"
        self._capture: cv2.VideoCapture | None = None
        self._pacer = Pacer(None)
        self._frames_this_pass = 0

    def _open_capture(self) -> cv2.VideoCapture:
        path = self.config.path
        if not path.is_file():
            raise SourceError(f"{self.label}: no such file ({path.absolute()})")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.label}: cannot decode (not a video, or an unsupported codec)")
        return capture

    def open(self) -> None:
        """Opens the file and sets the pace from its frame rate."""
        capture = self._capture = self._open_capture()
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        if not math.isfinite(fps) or not 0 < fps <= 1000:
            log.warning(
                "%s: the file states no usable frame rate (%r); assuming %g", self.label, fps, FALLBACK_FPS
            )
            fps = FALLBACK_FPS
        self.fps = fps
        self._pacer = Pacer(_rate(self.config.rate, fps))
        self._frames_this_pass = 0

    def read(self, timeout_s: float) -> Array | None:
        """The next frame when it is due; None when it is not due within `timeout_s`; EndOfStream at the end."""
        if self._capture is None:
            raise SourceError(f"{self.label}: not open")
        if not self._pacer.wait(timeout_s):
            return None
        ok, frame = self._capture.read()
        if not ok:
            if self._frames_this_pass == 0:
                raise SourceError(f"{self.label}: no frame could be decoded")
            if not self.config.loop:
                raise EndOfStream(self.label)
            self._capture.release()
            self._capture = self._open_capture()
            self._frames_this_pass = 0
            ok, frame = self._capture.read()
            if not ok:
                raise SourceError(f"{self.label}: no frame could be decoded after rewinding")
        self._frames_this_pass += 1
        self._pacer.taken()
        result: Array = frame
        return result

    def close(self) -> None:
        """Closes the file."""
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


class ImageFolderSource:
    """The images of a folder, in file-name order."""

    kind: ItemKind = "frame"

    def __init__(self, config: ImagesConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"images {config.folder}"
        self.garbage = 0
        self._files: list[Path] = []
        self._next = 0
        self._pacer = Pacer(None)

    def open(self) -> None:
        """Lists the folder's images."""
        folder = self.config.folder
        if not folder.is_dir():
            raise SourceError(f"{self.label}: no such folder ({folder.absolute()})")
        self._files = sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._files:
            raise SourceError(f"{self.label}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
        self._next = 0
        self._pacer = Pacer(_rate(self.config.rate, self.config.fps))

    def read(self, timeout_s: float) -> Array | None:
        """The next image when it is due; None when it is not due within `timeout_s`; EndOfStream at the end."""
        if not self._files:
            raise SourceError(f"{self.label}: not open")
        if not self._pacer.wait(timeout_s):
            return None
        for _ in range(len(self._files)):
            if self._next >= len(self._files):
                if not self.config.loop:
                    raise EndOfStream(self.label)
                self._next = 0
            path = self._files[self._next]
            self._next += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                self._pacer.taken()
                result: Array = image
                return result
            self.garbage += 1
            log.warning("%s: skipped %s: not a readable image", self.label, path.name)
        raise SourceError(f"{self.label}: none of the {len(self._files)} images can be read")

    def close(self) -> None:
        """Forgets the listing."""
        self._files = []
