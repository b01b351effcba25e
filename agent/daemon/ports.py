"""The narrow ports the daemon hands its helpers, instead of itself.

A helper (the uplink, the device commands, the monitors, the model service) gets only what it needs: a way to record
an event, a way to run work on the main thread and learn its outcome, the status brief, or the config section it reads.
None of them can reach the supervisor, so none can change what it does not own.

Invariants: `MainThread.submit` never runs work on the caller's thread; the work runs between two ticks of the
supervisor, in submission order, and its return value or exception lands in the returned future; work submitted after
the supervisor stopped fails at once with `AgentError`, so a caller waiting on it is never left hanging.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agent.errors import AgentError
from agent.events import AgentEvent, EventType, Severity

log = logging.getLogger("agent.daemon")

T = TypeVar("T")


class Emit(Protocol):
    """Records one event (logged, kept for status, forwarded to the fleet)."""

    def __call__(self, event: AgentEvent, /) -> object:
        """Records `event`."""


@dataclass(frozen=True)
class Reporter:
    """Makes and records events: the one port every helper that reports gets."""

    emit: Emit

    def __call__(
        self,
        type: EventType,
        severity: Severity,
        message: str,
        evidence: dict[str, Any] | None = None,
        snapshot: str | None = None,
    ) -> AgentEvent:
        """Records an event made from these fields and returns it."""
        event = AgentEvent(type, severity, message, evidence or {}, snapshot)
        self.emit(event)
        return event


@dataclass(frozen=True)
class UpdateView:
    """Where the model update stands, for the retained status (`UpdateBrief` on the wire)."""

    state: str
    name: str
    version: int
    reason: str | None = None
    verdict: str | None = None
    previous: tuple[str, int] | None = None
    """What a rollback returns to."""
    figures: dict[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusBrief:
    """What the retained MQTT status says: the model in service, each source's state, the model update."""

    model: tuple[str, int] | None
    sources: dict[str, str] = field(default_factory=dict)
    update: UpdateView | None = None
    """The update in progress or last decided."""


class MainThread:
    """Work for the supervisor's main thread, each piece answered through a future."""

    def __init__(self) -> None:
        self._work: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._closed = threading.Event()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Queues `work` for the main thread; the future gets its result or its exception."""
        future: Future[T] = Future()
        if self._closed.is_set():
            future.set_exception(AgentError("the agent is stopping"))
            return future
        self._work.put((work, future))
        return future

    def call(self, work: Callable[[], T], timeout_s: float) -> T:
        """Runs `work` on the main thread and waits up to `timeout_s` for its result (raises what it raised)."""
        future = self.submit(work)
        try:
            return future.result(timeout_s)
        except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
            raise AgentError(f"the agent did not finish the change within {timeout_s:g} s") from None

    def run_pending(self) -> None:
        """Main thread: runs every queued piece of work, each answered through its future."""
        while True:
            try:
                work, future = self._work.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except Exception as problem:  # the caller learns of it; the supervisor goes on
                log.warning("main-thread work failed: %s: %s", type(problem).__name__, problem)
                future.set_exception(problem)

    def close(self) -> None:
        """Refuses later work and fails what is still queued."""
        self._closed.set()
        while True:
            try:
                _, future = self._work.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(AgentError("the agent is stopping"))


__all__ = ["Emit", "MainThread", "Reporter", "StatusBrief", "UpdateView"]
