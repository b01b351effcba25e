"""Live captures (cameras, network streams) read on their own grab thread, so that `read(timeout_s)` keeps its promise.

OpenCV's `VideoCapture.read` blocks until a frame comes or the backend gives up (FFmpeg's read timeout, the V4L2 select
timeout), and a capture must not be used from two threads. So:
- the grab thread alone calls the capture's read and release; it reads continuously, so no backlog builds up in the
  backend's buffers and the frame handed on is always the newest (an untaken frame is replaced, not queued);
- `read(timeout_s)` waits at most `timeout_s` for a frame newer than the last it returned;
- when the capture fails, the next `read` raises SourceError with the reason; `close` never waits longer than its
  timeout: a grab thread stuck in the backend releases the capture itself when the call returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import cv2

from agent.errors import SourceError
from agent.types import Array

log = logging.getLogger("agent.sources")


class Grabber:
    """Reads frames from a live capture on a named thread and keeps the newest one."""

    def __init__(
        self, label: str, grab: Callable[[], Array], release: Callable[[], None], thread_name: str
    ) -> None:
        self.label = label
        self._grab = grab
        self._release = release
        self._cond = threading.Condition(threading.Lock())
        self._frame: Array | None = None
        self._failure: str | None = None
        self._done = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.grabbed = 0
        self.replaced = 0

    def start(self) -> None:
        """Starts the grab thread."""
        self._thread.start()

    def read(self, timeout_s: float) -> Array | None:
        """The newest frame not yet returned, or None after `timeout_s`; SourceError once the capture failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._done, timeout_s)
            frame, self._frame = self._frame, None
            if frame is not None:
                return frame
            if self._done:
                raise SourceError(self._failure or f"{self.label}: capture closed")
            return None

    def close(self, timeout_s: float = 0.5) -> None:
        """Stops the grab thread (it releases the capture); waits at most `timeout_s` for it."""
        self._closing.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.info(
                    "%s: capture still busy after %.1f s; it is released when its read returns",
                    self.label,
                    timeout_s,
                )

    def _run(self) -> None:
        failure: str | None = None
        try:
            while not self._closing.is_set():
                frame = self._grab()
                with self._cond:
                    if self._frame is not None:
                        self.replaced += 1
                    self._frame = frame
                    self.grabbed += 1
                    self._cond.notify()
        except SourceError as problem:
            failure = str(problem)
        except Exception as problem:
            log.warning("%s: unexpected error in the grab thread", self.label, exc_info=True)
            failure = f"{self.label}: {type(problem).__name__}: {problem}"
        finally:
            with self._cond:
                self._failure = failure
                self._done = True
                self._cond.notify_all()
            try:
                self._release()
            except Exception:
                log.warning("%s: error while releasing the capture", self.label, exc_info=True)


def capture_grabber(capture: cv2.VideoCapture, label: str, why: str, thread_name: str) -> Grabber:
    """A grabber over an opened OpenCV capture; a failed read ends it with SourceError(`label: why`)."""

    def grab() -> Array:
        ok, frame = capture.read()
        if not ok or frame is None:
            raise SourceError(f"{label}: {why}")
        result: Array = frame
        return result

    return Grabber(label, grab, capture.release, thread_name)


class GrabbedSource:
    """Base of the live sources whose frames come from a `Grabber`: `read` and `close` for all of them."""

    label: str
    _grabber: Grabber | None = None

    def read(self, timeout_s: float) -> Array | None:
        """The newest frame, or None when none came within `timeout_s`."""
        if self._grabber is None:
            raise SourceError(f"{self.label}: not open")
        return self._grabber.read(timeout_s)

    def close(self) -> None:
        """Stops grabbing and releases the device or stream."""
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            grabber.close()
