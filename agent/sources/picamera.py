"""Raspberry Pi cameras through Picamera2 (libcamera).

Invariants: frames are BGR uint8 [H, W, 3] as OpenCV expects them. libcamera names its formats by the order within a
little-endian word, so Picamera2's "RGB888" main stream is laid out B, G, R in memory: that is the format asked for
(the Picamera2 manual, appendix "Pixel and image formats"; "BGR888" would give R, G, B). Picamera2 is a Debian package
(python3-picamera2), not on PyPI for the Pi's libcamera: when it cannot be imported, `open` says how to get it.
capture_array blocks until the next frame, so it runs on a grab thread and `read` keeps its timeout.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from agent.errors import SourceError
from agent.sources.base import ItemKind
from agent.sources.capture import GrabbedSource, Grabber
from agent.sources.config import Picamera2Config
from agent.types import Array

MAIN_FORMAT = "RGB888"
"""libcamera's name for B, G, R bytes in memory (OpenCV's order)."""


def import_picamera2() -> Any:
    """The Picamera2 class; SourceError naming what to install when it is missing."""
    try:
        from picamera2 import Picamera2
    except ImportError as problem:
        raise SourceError(
            f"picamera2: the picamera2 package is not available to {sys.executable} ({problem}); on Raspberry Pi OS "
            "install it with `sudo apt install python3-picamera2` and make the virtualenv with --system-site-packages"
        ) from None
    return Picamera2


class Picamera2Source(GrabbedSource):
    """A Raspberry Pi camera."""

    kind: ItemKind = "frame"

    def __init__(self, config: Picamera2Config) -> None:
        self.config = config
        self.name = config.name
        self.label = f"picamera2 camera {config.camera}"
        self._grabber: Grabber | None = None

    def open(self) -> None:
        """Opens and starts the camera with a BGR main stream of the configured size."""
        picamera2 = import_picamera2()
        config = self.config
        camera: Any = None
        try:
            camera = picamera2(config.camera)
            controls = {"FrameRate": config.fps} if config.fps else {}
            video = camera.create_video_configuration(
                main={"size": (config.width, config.height), "format": MAIN_FORMAT}, controls=controls
            )
            camera.configure(video)
            camera.start()
        except Exception as problem:
            if camera is not None:
                _release(camera)
            raise SourceError(f"{self.label}: cannot start: {type(problem).__name__}: {problem}") from None

        def grab() -> Array:
            try:
                frame: Array = camera.capture_array("main")
            except Exception as problem:
                raise SourceError(f"{self.label}: capture failed: {problem}") from None
            # rows may carry stride padding cut off by a view: hand on a contiguous array (no copy when it is one)
            return np.ascontiguousarray(frame)

        self._grabber = Grabber(self.label, grab, lambda: _release(camera), f"grab-{self.name}")
        self._grabber.start()


def _release(camera: Any) -> None:
    try:
        camera.stop()
    finally:
        camera.close()
