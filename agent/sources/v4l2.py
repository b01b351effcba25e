"""USB and CSI cameras through Video4Linux2 (OpenCV's V4L2 backend).

Invariants: the pixel format is set before the size and the rate (drivers pick their modes in that order); the
driver's buffer queue is kept at one frame and a grab thread reads continuously, so a frame is never older than one
frame period when it is handed on; a missing device or a refused permission is reported before OpenCV is asked, in
words a technician can act on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2

from agent.errors import SourceError
from agent.sources.base import ItemKind
from agent.sources.capture import GrabbedSource, Grabber, capture_grabber
from agent.sources.config import V4L2Config

log = logging.getLogger("agent.sources")


def fourcc_code(fourcc: str) -> int:
    """The V4L2 four-character code as OpenCV's CAP_PROP_FOURCC takes it."""
    return sum(ord(char) << (8 * i) for i, char in enumerate(fourcc[:4]))


class V4L2Source(GrabbedSource):
    """A V4L2 camera by device path or index."""

    kind: ItemKind = "frame"

    def __init__(self, config: V4L2Config) -> None:
        self.config = config
        self.name = config.name
        self.label = f"v4l2 {config.device}"
        self._grabber: Grabber | None = None

    def _device(self) -> int | str:
        device = self.config.device
        if isinstance(device, int):
            return device
        if device.isdigit():
            return int(device)
        path = Path(device)
        if not path.exists():
            raise SourceError(
                f"{self.label}: no such device (is the camera plugged in? see `ls /dev/video*`)"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise SourceError(f"{self.label}: permission denied (add the agent's user to the 'video' group)")
        return device

    def open(self) -> None:
        """Opens the camera and asks for the configured format, size and rate."""
        config = self.config
        device = self._device()
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.label}: cannot open (busy in another program, or not a capture device)")
        if config.fourcc:
            capture.set(cv2.CAP_PROP_FOURCC, fourcc_code(config.fourcc))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        capture.set(cv2.CAP_PROP_FPS, config.fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        got = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if got != (config.width, config.height):
            log.warning(
                "%s: asked for %dx%d, the camera gives %dx%d", self.label, config.width, config.height, *got
            )
        self._grabber = capture_grabber(
            capture,
            self.label,
            "no frame from the camera (unplugged, or the driver timed out)",
            f"grab-{self.name}",
        )
        self._grabber.start()
