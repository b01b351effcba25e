"""The source runner: one named thread that opens a source, reads it, hands items on, and reopens it when it fails.

Invariants:
- the runner's thread alone opens, reads and closes its source, so a device handle is never used from two threads;
- `seq` increases by one per delivered item, across reconnects; no item is delivered once the stop event is set;
- `deliver` is called on the runner's thread and must not block (the daemon passes a single-slot mailbox's `put`);
- the state is held in one place and every change is reported once through `on_state`; `stopped` is final;
- every wait is on the stop event: a dead device costs one wake-up per backoff period, never a busy loop, and
  `stop()` returns within its timeout even when the source is stuck in a call (its thread is then left behind, as a
  daemon thread, and closes the source when the call returns);
- any exception from the source is caught: EndOfStream ends the run, anything else is counted, reported as
  `last_error` and answered by reopening the source after an exponential backoff with jitter (`agent.backoff`),
  reset by the next item.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agent.backoff import Backoff
from agent.errors import SourceError
from agent.sources.base import EndOfStream, Item, Source, SourceState
from agent.sources.config import SourceConfig

log = logging.getLogger("agent.sources")

READ_POLL_S = 0.25
"""Timeout of each `read`: the longest a runner takes to notice its stop event (with a well-behaved source)."""

Outcome = Literal["ended", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A snapshot of one source's health, for `status`, events and telemetry."""

    name: str
    type: str
    state: SourceState
    items: int
    """Items delivered since the runner started."""
    errors: int
    """Failures: open or read errors, stalls that forced a reopen, exceptions from `deliver`."""
    garbage: int
    """Unusable samples the source skipped (sensors only)."""
    reconnects: int
    """Attempts to open the source after the first one."""
    last_error: str | None
    since_item_s: float | None
    """Seconds since the last item; None before the first."""
    rate_hz: float
    """Items per second, measured over the recent items; 0 when not connected."""
    since: float
    """Wall-clock time of the last state change."""
    backoff_s: float
    """Wait before the current or next attempt to open; 0 while the source is open."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["state"] = self.state.value
        data["rate_hz"] = round(self.rate_hz, 2)
        data["since"] = round(self.since, 3)
        data["backoff_s"] = round(self.backoff_s, 3)
        if self.since_item_s is not None:
            data["since_item_s"] = round(self.since_item_s, 3)
        return data


class SourceRunner:
    """Runs one source on its own thread; see the module docstring for what it promises."""

    def __init__(
        self,
        source: Source,
        config: SourceConfig,
        deliver: Callable[[Item], None],
        on_state: Callable[[SourceStatus], None] | None = None,
        *,
        poll_s: float = READ_POLL_S,
        seed: int | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.name = config.name or source.name
        self._deliver = deliver
        self._on_state = on_state
        self._poll_s = poll_s
        self._backoff = Backoff(config.reconnect, random.Random(seed))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = SourceState.CONNECTING
        self._since = time.time()
        self._items = 0
        self._errors = 0
        self._reconnects = 0
        self._last_error: str | None = None
        self._recent: deque[float] = deque(maxlen=32)
        self._backoff_s = 0.0
        self._seq = 0

    # ------------------------------------------------------------------ public face

    def start(self) -> None:
        """Starts the runner's thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"source runner {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stops the runner; True when its thread ended within `timeout_s` (else it is left behind, harmless)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        stuck = thread is not None and thread.is_alive()
        if stuck:
            log.warning(
                "source %s: still inside a call to the source after %.1f s; leaving its thread",
                self.name,
                timeout_s,
            )
        self._set_state(SourceState.STOPPED)
        return not stuck

    def status(self) -> SourceStatus:
        """The source's current state and counters."""
        with self._lock:
            return self._status_locked()

    @property
    def state(self) -> SourceState:
        """The current state."""
        return self._state

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # pragma: no cover - a bug in the runner itself; never let it pass silently
            log.exception("source %s: runner failed", self.name)
            raise
        finally:
            if self._stop.is_set():
                self._set_state(SourceState.STOPPED)

    def _loop(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                with self._lock:
                    self._reconnects += 1
            first = False
            if self._open():
                self._set_state(SourceState.CONNECTED)
                outcome = self._pump()
                self._close()
                if outcome == "ended":
                    self._set_state(SourceState.ENDED)
                    return
                if outcome == "stopped":
                    return
                self._set_state(SourceState.RECONNECTING)
            self._wait_backoff()

    def _open(self) -> bool:
        try:
            self.source.open()
            return True
        except SourceError as problem:
            reason = str(problem)
        except Exception as problem:
            log.warning("source %s: unexpected error while opening", self.name, exc_info=True)
            reason = f"{self.name}: unexpected {type(problem).__name__} while opening: {problem}"
        self._record_error(reason)
        self._close()
        self._set_state(SourceState.FAILED)
        return False

    def _pump(self) -> Outcome:
        config = self.config
        kind = self.source.kind
        last = time.monotonic()
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                data = self.source.read(self._poll_s)
            except EndOfStream:
                return "ended"
            except SourceError as problem:
                self._record_error(str(problem))
                return "failed"
            except Exception as problem:
                log.warning("source %s: unexpected error while reading", self.name, exc_info=True)
                self._record_error(
                    f"{self.name}: unexpected {type(problem).__name__} while reading: {problem}"
                )
                return "failed"
            now = time.monotonic()
            if data is None:
                idle = now - last
                if idle >= config.stall_timeout_s and self._state is SourceState.CONNECTED:
                    self._set_state(SourceState.STALLED)
                if config.restart_after_s is not None and idle >= config.restart_after_s:
                    self._record_error(f"{self.name}: no item for {idle:.1f} s; reopening")
                    return "failed"
                if now - asked < self._poll_s / 10:
                    # a source that returns at once instead of waiting must not turn this loop into a busy loop
                    self._stop.wait(self._poll_s)
                continue
            if self._stop.is_set():
                break
            item = Item(data, self._seq, time.time(), now, kind, self.name)
            self._seq += 1
            last = now
            with self._lock:
                self._items += 1
                self._recent.append(now)
                self._backoff.reset()
                self._backoff_s = 0.0
            if self._state is not SourceState.CONNECTED:
                self._set_state(SourceState.CONNECTED)
            try:
                self._deliver(item)
            except Exception:
                log.exception("source %s: the item consumer failed", self.name)
                with self._lock:
                    self._errors += 1
        return "stopped"

    def _close(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.warning("source %s: error while closing", self.name, exc_info=True)

    def _wait_backoff(self) -> None:
        with self._lock:
            delay = self._backoff.next_delay()
            self._backoff_s = delay
        self._stop.wait(delay)

    # ------------------------------------------------------------------ state

    def _record_error(self, reason: str) -> None:
        log.debug("source %s: %s", self.name, reason)
        with self._lock:
            self._errors += 1
            self._last_error = reason

    def _set_state(self, state: SourceState) -> None:
        with self._lock:
            if self._state is state or self._state is SourceState.STOPPED:
                return
            self._state = state
            self._since = time.time()
            status = self._status_locked()
        log.debug("source %s: %s", self.name, state.value)
        if self._on_state is not None:
            try:
                self._on_state(status)
            except Exception:
                log.exception("source %s: the state listener failed", self.name)

    def _status_locked(self) -> SourceStatus:
        now = time.monotonic()
        recent = self._recent
        since_item = now - recent[-1] if recent else None
        rate = 0.0
        if self._state is SourceState.CONNECTED and len(recent) >= 2 and recent[-1] > recent[0]:
            rate = (len(recent) - 1) / (recent[-1] - recent[0])
        return SourceStatus(
            name=self.name,
            type=self.config.type,
            state=self._state,
            items=self._items,
            errors=self._errors,
            garbage=int(getattr(self.source, "garbage", 0)),
            reconnects=self._reconnects,
            last_error=self._last_error,
            since_item_s=since_item,
            rate_hz=rate,
            since=self._since,
            backoff_s=self._backoff_s,
        )
