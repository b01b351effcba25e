"""A live microphone through ALSA: `arecord` (alsa-utils) as a child process writing raw S16_LE PCM to a pipe.

Why a child process and not a Python ALSA binding: alsa-utils is in every Debian-based image (or one `apt install`
away), needs no compiled wheel on 32-bit ARM, and a hung driver then hangs a process the agent can kill, never one
of its threads.

Invariants:
- the runner's thread alone starts, reads and stops the child; `read` waits on the pipe with `select`, so it never
  blocks longer than its timeout; the child's stderr is read as it comes (it can never fill its pipe and stall the
  child) and its last lines are kept for the error report;
- `open` returns once the first samples came: arecord that cannot open the device exits at once, and that is a
  SourceError carrying arecord's own last stderr line, as is arecord exiting later (the runner reopens the source
  with backoff);
- `close` terminates the child (SIGKILL after TERMINATE_GRACE_S) and reaps it: no zombie, no orphan holding the
  device; the child runs in its own session, so a Ctrl-C meant for the agent reaches the agent, which stops it;
- windows never span two runs of arecord; samples are float32 in [-1, 1), [window, channels].
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import time
from collections import deque

from agent.errors import SourceError
from agent.sources.base import ItemKind
from agent.sources.config import AlsaConfig
from agent.sources.pcm import PcmFormat, decode
from agent.sources.windows import LineBuffer, Windower
from agent.types import Array, FloatArray

log = logging.getLogger("agent.sources")

ARECORD = "arecord"
INSTALL_HINT = "install alsa-utils (`sudo apt install alsa-utils`)"
READ_BYTES = 65_536
TERMINATE_GRACE_S = 1.0
STDERR_LINES = 20


def arecord_command(executable: str, config: AlsaConfig) -> list[str]:
    """The arecord command line: quiet, raw signed 16-bit little-endian PCM on standard output."""
    return [
        executable,
        "-q",
        "-t",
        "raw",
        "-f",
        "S16_LE",
        "-r",
        str(config.sample_rate),
        "-c",
        str(len(config.channels)),
        "-D",
        config.device,
    ]


class AlsaSource:
    """Windows of samples from an ALSA capture device."""

    kind: ItemKind = "window"

    def __init__(self, config: AlsaConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"alsa {config.device}"
        self.channel_names = tuple(config.channels)
        self.format = PcmFormat("int", 2, len(config.channels), config.sample_rate)
        self._process: subprocess.Popen[bytes] | None = None
        self._windower = Windower(config.window, config.hop, len(config.channels))
        self._ready: deque[FloatArray] = deque()
        self._partial = b""
        self._received = 0
        self._stderr = LineBuffer(deque(maxlen=STDERR_LINES))
        self._stderr_open = False

    def open(self) -> None:
        """Starts arecord and waits (at most `open_timeout_s`) for its first samples."""
        self.close()
        executable = shutil.which(ARECORD)
        if executable is None:
            raise SourceError(f"{self.label}: {ARECORD} is not installed (not found on PATH): {INSTALL_HINT}")
        command = arecord_command(executable, self.config)
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except OSError as problem:
            raise SourceError(
                f"{self.label}: cannot start {executable}: {problem.strerror or problem}"
            ) from None
        log.debug("%s: started %s (pid %d)", self.label, " ".join(command), self._process.pid)
        self._windower.reset()
        self._ready.clear()
        self._partial = b""
        self._received = 0
        self._stderr = LineBuffer(deque(maxlen=STDERR_LINES))
        self._stderr_open = True
        try:
            self._wait_first_samples()
        except SourceError:
            self.close()
            raise

    def _wait_first_samples(self) -> None:
        timeout = self.config.open_timeout_s
        deadline = time.monotonic() + timeout
        while self._received == 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SourceError(
                    f"{self.label}: no samples from {ARECORD} within {timeout:g} s{self._stderr_tail()}"
                )
            self._receive(remaining)

    def read(self, timeout_s: float) -> Array | None:
        """The next window, or None when none was complete within `timeout_s`; SourceError when arecord ended."""
        if self._process is None:
            raise SourceError(f"{self.label}: not open")
        deadline = time.monotonic() + timeout_s
        while True:
            if self._ready:
                return self._ready.popleft()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._receive(remaining)

    def _receive(self, timeout_s: float) -> None:
        """Waits at most `timeout_s` for bytes from arecord; cuts what came into windows."""
        process = self._process
        if process is None or process.stdout is None or process.stderr is None:
            raise SourceError(f"{self.label}: not open")
        out, err = process.stdout.fileno(), process.stderr.fileno()
        try:
            ready, _, _ = select.select([out, err] if self._stderr_open else [out], [], [], timeout_s)
            if err in ready:
                self._read_stderr(err)
            data = os.read(out, READ_BYTES) if out in ready else None
        except OSError as problem:
            raise SourceError(f"{self.label}: reading from {ARECORD} failed: {problem}") from None
        if data is None:
            return
        if not data:
            self._ended(process)
        self._received += len(data)
        frame = self.format.frame_bytes
        data = self._partial + data
        whole = len(data) - len(data) % frame
        self._partial = data[whole:]
        if whole:
            self._ready.extend(self._windower.push(decode(data[:whole], self.format)))

    def _read_stderr(self, fd: int) -> None:
        data = os.read(fd, READ_BYTES)
        if data:
            self._stderr.feed(data)
        else:
            self._stderr.flush()
            self._stderr_open = False

    def _stderr_tail(self) -> str:
        lines = self._stderr.lines
        return f": {lines[-1]}" if lines else ""

    def _ended(self, process: subprocess.Popen[bytes]) -> None:
        """arecord closed its output: reaps it and raises SourceError with its status and last stderr line."""
        try:
            process.wait(TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{self.label}: {ARECORD} closed its output{self._stderr_tail()}") from None
        if process.stderr is not None:
            deadline = time.monotonic() + TERMINATE_GRACE_S
            with contextlib.suppress(OSError, ValueError):
                while self._stderr_open and time.monotonic() < deadline:
                    fd = process.stderr.fileno()
                    if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                        self._read_stderr(fd)
        self._stderr.flush()
        code = process.returncode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise SourceError(f"{self.label}: {ARECORD} {how}{self._stderr_tail() or ' (no message)'}")

    def close(self) -> None:
        """Stops arecord (terminate, then kill) and reaps it; safe to call twice."""
        process, self._process = self._process, None
        self._stderr_open = False
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(TERMINATE_GRACE_S)
                except subprocess.TimeoutExpired:
                    log.warning("%s: %s (pid %d) does not die; leaving it", self.label, ARECORD, process.pid)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
