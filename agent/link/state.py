"""Connection state and the persisted birth sequence number (reconnection delays: `agent.backoff`).

Invariants:
- `StateCell` is written only by the link's network thread, from what paho reported (a CONNACK, a disconnect, a
  failed connect); `connected` means a success CONNACK was processed and no disconnect since. Readers get a
  consistent copy (`LinkStatus`) under a lock. Nothing else stores a "connected" flag.
- `BirthCounter` never hands out a number at or below one it committed, across restarts: the committed value is
  written to the state directory atomically (temp file, fsync, rename, fsync of the folder) before it is used; when
  the directory cannot be written, numbers come from the wall clock in milliseconds (see the class for what remains).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from agent.fsutil import write_atomic

log = logging.getLogger("agent.link")

LinkState = Literal["disabled", "disconnected", "connecting", "connected", "refused", "stopped"]
"""disabled: not configured; connecting: TCP/TLS/CONNECT sent, no CONNACK yet; connected: success CONNACK;
refused: the broker refused us (CONNACK failure code, or TLS authentication failed), retrying with backoff;
disconnected: network failure or connection lost, retrying with backoff; stopped: `Link.stop` ran."""


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """A consistent snapshot of the link's connection state."""

    state: LinkState
    since: float
    """Wall-clock time of the last state change (Unix seconds)."""
    reason: str | None = None
    """Why the last attempt failed or the connection was lost (a CONNACK reason, a TLS error, a socket error)."""
    rc: int | None = None
    """The MQTT reason code of the last refusal, when there was one."""
    connects: int = 0
    """Successful connections since start."""
    attempts: int = 0
    """Connection attempts since start."""
    birth: int | None = None
    """Birth sequence number of the current (or last) connection."""

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self.connects - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "state": self.state,
            "since": self.since,
            "reason": self.reason,
            "rc": self.rc,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "attempts": self.attempts,
            "birth": self.birth,
        }


class StateCell:
    """Holds the link's `LinkStatus`; one writer (the network thread), any number of readers."""

    def __init__(self, state: LinkState) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._status = LinkStatus(state=state, since=time.time())

    def get(self) -> LinkStatus:
        """The current snapshot."""
        with self._lock:
            return self._status

    def set(self, state: LinkState, **changes: Any) -> LinkStatus:
        """Moves to `state` (resetting `since` if it changed) and applies other field changes."""
        with self._lock:
            current = self._status
            since = current.since if state == current.state else time.time()
            self._status = replace(current, state=state, since=since, **changes)
            self._changed.notify_all()
            return self._status

    def wait_for(self, states: tuple[LinkState, ...], timeout_s: float) -> LinkStatus:
        """Waits until the state is one of `states` or the timeout passes; returns the snapshot then."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._status.state not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._status


SANE_TIME = 1_600_000_000.0
"""A wall clock below this (September 2020) is unset: a device without an RTC that booted without network time."""


class BirthCounter:
    """Birth sequence numbers that only grow, across restarts (file `link-birth.json` in the state directory).

    Writable state directory: 1, 2, 3 ... (the stored value + 1 each connection). Before the first number the counter
    probes the folder by writing its value back; when that fails (a read-only mount, a full disk) or a later commit fails, the
    next numbers come from the wall clock in milliseconds, never below the stored value + 1 nor below a number this
    process used, so every restart's number is larger than the last (the clock moved on) and a fleet view that keeps
    the highest birth never takes a new connection for a stale one. Once a write works again the number in use is
    stored and counting goes on from it.

    What remains: with no sane wall clock (below SANE_TIME) the numbers are the stored value + 1 + milliseconds since
    boot (CLOCK_MONOTONIC), which grow across restarts within one boot but not across reboots; and a restart on a
    writable directory after runs that could not write starts again from the stored value + 1, below the clock-based
    numbers those runs used (nothing on the device remembers them): the retained status is right (it is the newest
    message), but a fleet view that ran through those restarts takes the device's statuses for stale until it is
    restarted.
    """

    def __init__(
        self,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = state_dir / "link-birth.json"
        self._clock = clock
        self._monotonic = monotonic
        self._committed = self._load()
        self._used = self._committed
        self._writable: bool | None = None
        """None until the first number is asked for (a disabled link never writes the state directory)."""

    def _load(self) -> int:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            value = data["birth"] if isinstance(data, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
            raise ValueError(f"no non-negative integer 'birth' in {data!r}")
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as problem:
            # Unreadable despite atomic writes: go past any plausible old value rather than repeat one.
            now = self._clock()
            fallback = int(now * 1000) if now > SANE_TIME else 0
            log.warning("birth counter %s unreadable (%s); continuing from %d", self.path, problem, fallback)
            return fallback

    @property
    def writable(self) -> bool:
        """Whether the counter can be stored (probed when first asked, see `probe`)."""
        return self.probe()

    def probe(self) -> bool:
        """Writes the stored value back, once (the link does it at start): True if the counter can be stored."""
        if self._writable is None:
            try:
                self._write(self._committed)
                self._writable = True
            except OSError as problem:
                log.warning(
                    "birth counter %s cannot be written (%s); birth numbers come from the clock",
                    self.path,
                    problem,
                )
                self._writable = False
        return self._writable

    def _write(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"schema": 1, "birth": value}).encode("utf-8"))

    @property
    def committed(self) -> int:
        """The last number committed."""
        return self._committed

    def peek_next(self) -> int:
        """The number the next connection will use."""
        base = max(self._committed, self._used) + 1
        if self.writable:
            return base
        now = self._clock()
        if now >= SANE_TIME:
            return max(base, int(now * 1000))
        return max(base, self._committed + 1 + int(self._monotonic() * 1000))

    def commit(self, value: int) -> None:
        """Records `value` as used; raises OSError if it cannot be written (the caller decides; numbers then come
        from the clock until a write works)."""
        if value <= self._committed:
            return
        self._used = max(self._used, value)
        try:
            self._write(value)
        except OSError:
            self._writable = False
            raise
        self._committed = value
        self._writable = True

    def retry(self) -> bool:
        """Stores the number in use if an earlier commit failed (the state directory can be written again)."""
        if self._used <= self._committed:
            return True
        try:
            self.commit(self._used)
        except OSError:
            return False
        return True


__all__ = ["BirthCounter", "LinkState", "LinkStatus", "StateCell"]
