"""Network cameras: RTSP and HTTP(S) MJPEG streams through OpenCV's FFmpeg backend.

Invariants:
- connecting and reading are bounded by FFmpeg's open and read timeouts, so a dead camera never holds a thread for
  longer than `read_timeout_s`; a grab thread reads continuously, so frames never queue up behind a slow consumer;
- the RTSP transport goes to FFmpeg through the process-wide OPENCV_FFMPEG_CAPTURE_OPTIONS variable: it is set, the
  capture opened, and the variable restored under one lock, keeping any options the operator put there;
- credentials in a URL never appear in errors, logs or status.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import cv2

from agent.errors import SourceError
from agent.sources.base import ItemKind
from agent.sources.capture import GrabbedSource, Grabber, capture_grabber
from agent.sources.config import StreamConfig

FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ENV_LOCK = threading.Lock()


def redact(url: str) -> str:
    """The URL with its password (or whole user info) replaced by `***`."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def merge_ffmpeg_options(current: str | None, options: Mapping[str, str]) -> str:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS (`key;value|key;value`) with `options` set over what `current` has."""
    merged: dict[str, str] = {}
    for pair in (current or "").split("|"):
        key, _, value = pair.partition(";")
        if key.strip():
            merged[key.strip()] = value
    merged.update(options)
    return "|".join(f"{key};{value}" for key, value in merged.items())


def open_ffmpeg(
    url: str, options: Mapping[str, str], open_timeout_s: float, read_timeout_s: float
) -> cv2.VideoCapture:
    """An FFmpeg capture of `url` with the given demuxer options and timeouts (maybe not opened: check isOpened)."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_timeout_s * 1000),
    ]
    if not options:
        return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
    with _ENV_LOCK:
        saved = os.environ.get(FFMPEG_OPTIONS_ENV)
        os.environ[FFMPEG_OPTIONS_ENV] = merge_ffmpeg_options(saved, options)
        try:
            return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        finally:
            if saved is None:
                os.environ.pop(FFMPEG_OPTIONS_ENV, None)
            else:
                os.environ[FFMPEG_OPTIONS_ENV] = saved


class StreamSource(GrabbedSource):
    """An RTSP or HTTP MJPEG camera."""

    kind: ItemKind = "frame"

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"stream {redact(config.url)}"
        self._grabber: Grabber | None = None

    def open(self) -> None:
        """Connects to the stream (at most `open_timeout_s`)."""
        config = self.config
        scheme = urlsplit(config.url).scheme
        options = {"rtsp_transport": config.transport} if scheme in ("rtsp", "rtsps") else {}
        capture = open_ffmpeg(config.url, options, config.open_timeout_s, config.read_timeout_s)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"{self.label}: cannot connect or no video in it (within {config.open_timeout_s:g} s)"
            )
        self._grabber = capture_grabber(
            capture,
            self.label,
            f"stream lost (closed by the camera, or no frame within {config.read_timeout_s:g} s)",
            f"grab-{self.name}",
        )
        self._grabber.start()
