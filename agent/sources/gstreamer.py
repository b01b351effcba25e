"""Cameras behind a GStreamer pipeline (Jetson CSI `nvarguscamerasrc`, Raspberry Pi `libcamerasrc`, anything else).

Two ways to run the pipeline, picked by `backend` (auto: the first that is available):
- `opencv`: OpenCV's own GStreamer backend, present in JetPack's OpenCV (`cv2.getBuildInformation()` says
  `GStreamer: YES`), read on a grab thread;
- `gi`: GStreamer's Python bindings (PyGObject), an appsink pulled with a timeout, each sample copied into a BGR array.
When neither is there (PyPI's OpenCV has no GStreamer, and a virtualenv does not see Debian's python3-gi unless it
was made with --system-site-packages), `open` raises SourceError saying what to install.

Invariants: the frame is BGR uint8 [H, W, 3], C-contiguous and writable; a pipeline error, an end of stream or a
refused state change becomes a SourceError carrying GStreamer's own message, so the runner restarts the pipeline
(a camera pipeline that ends has failed: use the `video` source for files).
"""

from __future__ import annotations

import functools
import re
import sys
import time
from typing import Any

import cv2
import numpy as np

from agent.errors import SourceError
from agent.sources.base import ItemKind
from agent.sources.capture import Grabber, capture_grabber
from agent.sources.config import GStreamerConfig
from agent.types import Array

BGR_TAIL = " ! videoconvert ! video/x-raw,format=BGR ! appsink name=agent_sink"
INSTALL_HINT = (
    "install python3-gi, gir1.2-gstreamer-1.0, gstreamer1.0-plugins-base and gstreamer1.0-plugins-good "
    "(and make the virtualenv with --system-site-packages so it sees them), or use an OpenCV built with GStreamer "
    "(JetPack's python3-opencv)"
)


@functools.cache
def opencv_has_gstreamer() -> bool:
    """True when this OpenCV was built with its GStreamer backend."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def import_gst() -> Any:
    """GStreamer's `Gst` module through PyGObject, initialised; SourceError naming what to install when missing."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as problem:
        raise SourceError(
            f"gstreamer: GStreamer's Python bindings are not available to {sys.executable} ({problem}); {INSTALL_HINT}"
        ) from None
    Gst.init(None)
    return Gst


def full_pipeline(description: str) -> str:
    """The pipeline with a BGR appsink appended when it has none."""
    return description if "appsink" in description else description.rstrip(" !") + BGR_TAIL


class GiPipeline:
    """A pipeline run through PyGObject, frames pulled from its appsink."""

    def __init__(self, description: str, label: str, open_timeout_s: float) -> None:
        self.description = description
        self.label = label
        self.open_timeout_s = open_timeout_s
        self._gst: Any = None
        self._pipeline: Any = None
        self._sink: Any = None

    def open(self) -> None:
        """Builds the pipeline and waits until it plays."""
        gst = self._gst = import_gst()
        try:
            pipeline = gst.parse_launch(self.description)
        except Exception as problem:  # GLib.Error: unknown element, bad syntax
            raise SourceError(f"{self.label}: bad pipeline: {problem}") from None
        self._pipeline = pipeline
        sink = pipeline.get_by_name("agent_sink") or self._find_appsink(pipeline)
        if sink is None:
            raise SourceError(f"{self.label}: the pipeline has no appsink")
        for key, value in (("max-buffers", 1), ("drop", True), ("sync", False), ("emit-signals", False)):
            sink.set_property(key, value)
        self._sink = sink
        if pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
            raise SourceError(f"{self.label}: cannot start: {self._bus_error() or 'state change refused'}")
        result, _state, _pending = pipeline.get_state(int(self.open_timeout_s * gst.SECOND))
        if result == gst.StateChangeReturn.FAILURE:
            raise SourceError(f"{self.label}: cannot start: {self._bus_error() or 'state change failed'}")
        if result == gst.StateChangeReturn.ASYNC:
            raise SourceError(f"{self.label}: did not start within {self.open_timeout_s:g} s")

    def _find_appsink(self, pipeline: Any) -> Any:
        iterator = pipeline.iterate_sinks()
        while True:
            result, element = iterator.next()
            if result != self._gst.IteratorResult.OK:
                return None
            if element.get_factory() is not None and element.get_factory().get_name() == "appsink":
                return element

    def _bus_error(self) -> str | None:
        gst = self._gst
        message = self._pipeline.get_bus().pop_filtered(gst.MessageType.ERROR | gst.MessageType.EOS)
        if message is None:
            return None
        if message.type == gst.MessageType.EOS:
            return "end of stream"
        error, debug = message.parse_error()
        return f"{error.message}" + (f" ({debug.splitlines()[0]})" if debug else "")

    def read(self, timeout_s: float) -> Array | None:
        """The next frame, or None when none came within `timeout_s`."""
        gst = self._gst
        sample = self._sink.emit("try-pull-sample", int(timeout_s * gst.SECOND))
        if sample is None:
            problem = self._bus_error() or ("end of stream" if self._sink.get_property("eos") else None)
            if problem:
                raise SourceError(f"{self.label}: {problem}")
            return None
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        if structure.get_value("format") != "BGR":
            raise SourceError(
                f"{self.label}: the appsink gets {structure.get_value('format')}, not BGR: end the pipeline with "
                "`videoconvert ! video/x-raw,format=BGR ! appsink`"
            )
        buffer = sample.get_buffer()
        data = buffer.extract_dup(0, buffer.get_size())
        stride = len(data) // height
        # rows are padded to 4 bytes: view them with their stride, and make one writable, contiguous copy
        view = np.ndarray((height, width, 3), dtype=np.uint8, buffer=data, strides=(stride, 3, 1))
        return np.array(view, copy=True, order="C")

    def close(self) -> None:
        """Stops the pipeline."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.set_state(self._gst.State.NULL)
            # wait for the state change so that a camera (nvargus) is free before a reopen
            pipeline.get_state(int(2 * self._gst.SECOND))
        self._sink = None


class GStreamerSource:
    """A GStreamer pipeline through OpenCV or PyGObject."""

    kind: ItemKind = "frame"

    def __init__(self, config: GStreamerConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"gstreamer {config.name}"
        self.pipeline = full_pipeline(config.pipeline)
        self.backend: str | None = None
        self._grabber: Grabber | None = None
        self._gi: GiPipeline | None = None

    def _pick_backend(self) -> str:
        wanted = self.config.backend
        if wanted in ("auto", "opencv") and opencv_has_gstreamer():
            return "opencv"
        if wanted == "opencv":
            raise SourceError(
                f"{self.label}: this OpenCV ({cv2.__version__}) has no GStreamer backend; use an OpenCV built with "
                'GStreamer (JetPack\'s python3-opencv) or backend = "gi"'
            )
        if wanted == "auto":
            try:
                import_gst()
            except SourceError:
                raise SourceError(
                    f"{self.label}: neither OpenCV with GStreamer (this one, {cv2.__version__}, has none) nor "
                    f"GStreamer's Python bindings (gi) are available to {sys.executable}; {INSTALL_HINT}"
                ) from None
        return "gi"

    def open(self) -> None:
        """Starts the pipeline."""
        self.backend = self._pick_backend()
        if self.backend == "gi":
            self._gi = GiPipeline(self.pipeline, self.label, self.config.open_timeout_s)
            try:
                self._gi.open()
            except SourceError:
                self._gi.close()
                self._gi = None
                raise
            return
        started = time.monotonic()
        capture = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"{self.label}: OpenCV cannot start the pipeline (after {time.monotonic() - started:.1f} s; "
                "run it with gst-launch-1.0 to see why)"
            )
        self._grabber = capture_grabber(
            capture, self.label, "the pipeline stopped giving frames", f"grab-{self.name}"
        )
        self._grabber.start()

    def read(self, timeout_s: float) -> Array | None:
        """The next frame, or None when none came within `timeout_s`."""
        if self._gi is not None:
            return self._gi.read(timeout_s)
        if self._grabber is not None:
            return self._grabber.read(timeout_s)
        raise SourceError(f"{self.label}: not open")

    def close(self) -> None:
        """Stops the pipeline."""
        gi_pipeline, self._gi = self._gi, None
        if gi_pipeline is not None:
            gi_pipeline.close()
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            grabber.close()
