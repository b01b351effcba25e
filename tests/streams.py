"""Helpers for the source tests: real cameras' protocols served locally, recorded files, and a runner harness.

- `MjpegServer`: an HTTP MJPEG camera (multipart/x-mixed-replace) on 127.0.0.1, which can pause (connection open,
  no frames), be stopped (connections cut) and be started again on the same port;
- `RtspServer`: tests/rtsp_server.py (GStreamer's RTSP server) run by the system python3, killed with SIGKILL and
  started again on the same port;
- `write_video`: an MJPG .avi written with cv2.VideoWriter;
- `Harness`: a SourceRunner whose items and state changes are recorded, with waits that poll (no fixed sleeps).
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.sources import Item, SourceConfig, SourceRunner, SourceState, SourceStatus, open_source
from agent.sources.base import Source

HERE = Path(__file__).resolve().parent
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str = "condition") -> None:
    """Polls `predicate` every 10 ms; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A temporary folder with a short path (unix socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="src", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def numbered_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray[Any, Any]:
    """A BGR frame whose mean brightness encodes `index` (mod 8), so that replayed frames can be told apart."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:] = (index % 8) * 30
    cv2.putText(frame, str(index), (10, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return frame


def write_video(path: Path, frames: int, fps: float, size: tuple[int, int] = (160, 120)) -> Path:
    """Writes an MJPG .avi of `frames` test frames at `fps`."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), f"cannot write {path}"
    for index in range(frames):
        writer.write(numbered_frame(index, *size))
    writer.release()
    return path


# ---------------------------------------------------------------- HTTP MJPEG camera


class MjpegServer:
    """An HTTP MJPEG camera on 127.0.0.1 that can pause, stop and restart on the same port."""

    def __init__(self, fps: float = 30.0, size: tuple[int, int] = (160, 120)) -> None:
        self.fps = fps
        self.port = 0
        ok, encoded = cv2.imencode(".jpg", numbered_frame(1, *size))
        assert ok
        self.jpeg = encoded.tobytes()
        self.paused = threading.Event()
        self.served = 0
        self.generation = 0
        self._server: http.server.HTTPServer | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The stream's URL."""
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        """Listens (on the same port as before after a stop)."""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner._connections.append(self.connection)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(owner.jpeg)
                generation = owner.generation
                try:
                    while owner.generation == generation:
                        if not owner.paused.is_set():
                            self.wfile.write(head + owner.jpeg + b"\r\n")
                            owner.served += 1
                        time.sleep(1.0 / owner.fps)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        server = self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, name="mjpeg-server", daemon=True).start()

    def stop(self) -> None:
        """Stops listening and cuts every open connection (a camera losing power)."""
        self.generation += 1  # handlers of the old connections end, even paused ones
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection.close()


# ---------------------------------------------------------------- RTSP camera


def rtsp_server_missing() -> str | None:
    """Why the RTSP test server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import Gst, GstRtspServer",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} cannot import gi's GstRtspServer ({last}); install python3-gi gir1.2-gst-rtsp-server-1.0"
    return None


class RtspServer:
    """tests/rtsp_server.py as a subprocess serving rtsp://127.0.0.1:PORT/cam."""

    def __init__(self, size: tuple[int, int] = (320, 240), fps: int = 30) -> None:
        self.port = free_port()
        self.size = size
        self.fps = fps
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        """The stream's URL."""
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout_s: float = 10.0) -> None:
        """Starts the server and waits for its READY line."""
        command = [
            SYSTEM_PYTHON,
            str(HERE / "rtsp_server.py"),
            str(self.port),
            *map(str, self.size),
            str(self.fps),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.process = process
        ready = threading.Event()

        def watch() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.strip() == "READY":
                    ready.set()

        threading.Thread(target=watch, name="rtsp-ready", daemon=True).start()
        if not ready.wait(timeout_s):
            self.kill()
            raise AssertionError(f"the RTSP test server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as when a camera loses power."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        if process is not None and process.stdout is not None:
            process.stdout.close()


# ---------------------------------------------------------------- runner harness


class Harness:
    """A SourceRunner with its items and state changes recorded."""

    def __init__(self, config: SourceConfig, source: Source | None = None, **runner_options: Any) -> None:
        self.items: list[Item] = []
        self.states: list[SourceStatus] = []
        self._lock = threading.Lock()
        self.source = source if source is not None else open_source(config)
        self.runner = SourceRunner(
            self.source, config, self._deliver, on_state=self._on_state, **runner_options
        )

    def _deliver(self, item: Item) -> None:
        with self._lock:
            self.items.append(item)

    def _on_state(self, status: SourceStatus) -> None:
        with self._lock:
            self.states.append(status)

    def __enter__(self) -> Harness:
        self.runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.stop()

    @property
    def state_names(self) -> list[str]:
        """The states reported so far, in order."""
        with self._lock:
            return [s.state.value for s in self.states]

    def count(self) -> int:
        """Items delivered so far."""
        with self._lock:
            return len(self.items)

    def wait_items(self, count: int, timeout_s: float) -> list[Item]:
        """Waits until `count` items came in total; returns them all."""
        wait_until(lambda: self.count() >= count, timeout_s, f"{count} items (got {self.count()})")
        with self._lock:
            return list(self.items)

    def wait_state(self, state: SourceState, timeout_s: float, after: int = 0) -> int:
        """Waits for `state` among the state changes from index `after`; returns its index."""

        def seen() -> bool:
            return state.value in self.state_names[after:]

        wait_until(seen, timeout_s, f"state {state.value} (states so far: {self.state_names})")
        return self.state_names.index(state.value, after)
