"""systemd notification protocol (sd_notify(3)) and a progress-based watchdog feeder, without libsystemd.

Protocol: newline-separated `KEY=VALUE` assignments in one datagram on the AF_UNIX SOCK_DGRAM socket named by
$NOTIFY_SOCKET (a path, or `@name` for the abstract namespace). Watchdog: $WATCHDOG_USEC is the interval after which
systemd kills the service unless a `WATCHDOG=1` came; $WATCHDOG_PID, when set, names the process it is meant for.

Invariants:
- with $NOTIFY_SOCKET unset every call is a no-op that returns False, so the daemon runs the same outside systemd;
- sending never raises: a failure is logged once (then at debug level) and reported by the return value;
- `Watchdog` feeds only while the loop is alive: it sends `WATCHDOG=1` at half the interval when the progress counter
  moved since the previous tick, or when `healthy()` says the loop is idle for a good reason. `healthy` must return
  False while an item is stuck in the model (e.g. `lambda: loop.busy_s() < hang_timeout_s`) and may return True while
  the loop waits on a stalled source; a hung invoke then stops the feeding and systemd restarts the service after
  WatchdogSec, while a camera that is unplugged does not. Without `healthy`, only progress feeds.
- no thread runs until `Watchdog.start`, and `stop` joins it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("agent.platform.sdnotify")


def socket_address(value: str | None) -> str | bytes | None:
    """The address to send to: a path, or bytes starting with NUL for an abstract `@name`; None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # systemd also accepts vsock: addresses, which a device agent never gets


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog interval systemd expects, from WATCHDOG_USEC (and WATCHDOG_PID); None when not enabled for us."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    expected_pid = env.get("WATCHDOG_PID", "")
    if expected_pid and (
        not expected_pid.isdigit() or int(expected_pid) != (pid if pid is not None else os.getpid())
    ):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends sd_notify messages to systemd, or does nothing when not started by it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_s = watchdog_interval_s(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        """Whether a notification socket was given."""
        return self._address is not None

    @property
    def watchdog_s(self) -> float | None:
        """The watchdog interval systemd expects (seconds), or None when the watchdog is off."""
        return self._watchdog_s if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Sends `KEY=VALUE` assignments in one datagram; True when sent."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as problem:
                self.errors += 1
                level = logging.DEBUG if self._failed else logging.WARNING
                self._failed = True
                log.log(level, "sd_notify to %s failed: %s", self._address, problem)
                return False
            self.sent += 1
            return True

    def ready(self, status: str | None = None) -> bool:
        """Tells systemd that start-up (or a reload) is complete."""
        return self.notify("READY=1", *([_status(status)] if status else []))

    def status(self, text: str) -> bool:
        """Sets the one-line status `systemctl status` shows."""
        return self.notify(_status(text))

    def watchdog(self) -> bool:
        """Feeds the watchdog."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tells systemd that the service is shutting down."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Tells systemd that a reload began (with MONOTONIC_USEC, which Type=notify-reload requires)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """Asks for `seconds` more before a start, reload or stop timeout (a slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1_000_000), 1)}")

    def close(self) -> None:
        """Closes the socket (a later call opens it again)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())[:200]


class Watchdog:
    """A named thread that feeds the systemd watchdog while the loop makes progress or is healthily idle."""

    def __init__(
        self,
        notifier: Notifier,
        progress: Callable[[], int],
        healthy: Callable[[], bool] | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.progress = progress
        self.healthy = healthy
        watchdog_s = notifier.watchdog_s
        self.interval_s = interval_s if interval_s is not None else (watchdog_s / 2 if watchdog_s else None)
        self.feeds = 0
        self.starved = 0
        self._last: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool:
        """One check: feeds if the progress counter moved or `healthy()` holds; returns whether it fed."""
        current: int | None
        try:
            current = self.progress()
        except Exception as problem:  # a broken probe must starve the watchdog, not kill the thread
            log.warning("watchdog progress probe failed: %s", problem)
            current = self._last
        moved = current is not None and current != self._last
        self._last = current
        ok = moved
        if not ok and self.healthy is not None:
            try:
                ok = bool(self.healthy())
            except Exception as problem:
                log.warning("watchdog health probe failed: %s", problem)
        if not ok:
            self.starved += 1
            if self.starved == 1 or self.starved % 10 == 0:
                log.warning(
                    "no progress and not healthy: not feeding the systemd watchdog (%d ticks)", self.starved
                )
            return False
        self.starved = 0
        self.notifier.watchdog()
        self.feeds += 1
        return True

    def start(self) -> bool:
        """Starts feeding; False (and no thread) when systemd asked for no watchdog."""
        if self.interval_s is None or self._thread is not None:
            return False
        self._stop.clear()
        self._last = None
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stops the thread and waits for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        assert self.interval_s is not None
        self.tick()
        while not self._stop.wait(self.interval_s):
            self.tick()
