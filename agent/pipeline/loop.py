"""The inference worker: takes the newest item from the mailbox, runs the active model, feeds observers and sinks.

Invariants:
- one worker thread; it always takes the newest item, so a slow model never works on stale frames;
- the active model is swapped only between two items (`swap` waits for the item in flight), so the old model can be
  closed as soon as `swap` returns and no result mixes two models;
- an exception while handling one item is counted and reported, and the loop goes on with the next item;
- pre-processing runs on the capture thread (`deliver`) when `stage_on_capture` is set, overlapping with the invoke
  of the previous item (OpenCV, numpy and the runtimes release the GIL); the pre-processor's reusable buffers are
  guarded by one lock and the staged tensor is copied out, so the worker never reads a buffer being rewritten. An item
  staged for a model that was swapped out meanwhile is pre-processed again by the worker;
- `progress` increases once per handled item and `busy_s` tells how long the current item has been in flight: the
  watchdog feeds systemd only while the loop moves.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, ModelError
from agent.inference import Model, Prepared
from agent.pipeline.active import ActiveModel
from agent.pipeline.mailbox import Mailbox, OrderedMailbox
from agent.pipeline.records import ResultRecord, Staged, StageTimes
from agent.pipeline.sinks import Sink
from agent.sources.base import Item
from agent.types import Array

log = logging.getLogger("agent.pipeline")


class LoopObserver:
    """Hooks the daemon gives the loop; the defaults do nothing."""

    def on_record(self, record: ResultRecord) -> None:
        """Called on the loop thread after each result, before the sinks (metrics, anomaly and drift monitors)."""

    def on_error(self, item: Item, problem: Exception) -> None:
        """Called on the loop thread when an item could not be handled."""

    def on_idle(self) -> None:
        """Called on the loop thread when no item came within the poll interval."""

    def on_sinks(self, seconds: float) -> None:
        """Called on the loop thread with the time the sinks took for one result."""


@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the worker."""

    max_rate_hz: float | None = None
    cpu_affinity: tuple[int, ...] | None = None
    poll_s: float = 0.5
    stage_on_capture: bool = True


class InferenceLoop:
    """The worker thread and the hot-swap point."""

    def __init__(
        self,
        active: ActiveModel,
        mailbox: Mailbox[Staged],
        sinks: Sequence[Sink] = (),
        observer: LoopObserver | None = None,
        settings: LoopSettings | None = None,
    ) -> None:
        self._active = active
        self._mailbox = mailbox
        self._sinks: tuple[Sink, ...] = tuple(sinks)
        self._observer = observer or LoopObserver()
        self.settings = settings or LoopSettings()
        self._swap_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None
        self.progress = 0
        self.errors = 0
        self.last_error: str | None = None
        self.state_resets = 0
        self._last_item: tuple[str, int, float] | None = None  # source, seq, capture time of the last item

    @property
    def active(self) -> ActiveModel:
        """The model in service."""
        return self._active

    def start(self) -> None:
        """Starts the worker thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Asks the worker to stop and waits up to `timeout_s`; False if it is still stuck in an invoke."""
        self._stop.set()
        self._mailbox.close()
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def set_sinks(self, sinks: Sequence[Sink]) -> tuple[Sink, ...]:
        """Replaces the sinks between two items; returns the old ones for the caller to close."""
        with self._swap_lock:
            old, self._sinks = self._sinks, tuple(sinks)
        return old

    def swap(
        self, new: ActiveModel, timeout_s: float = 30.0, on_swap: Callable[[], None] | None = None
    ) -> ActiveModel:
        """Puts `new` in service after the item in flight; returns the model it replaced.

        `on_swap` runs at the switch, between the same two items (the monitors follow the model there).
        """
        if not self._swap_lock.acquire(timeout=timeout_s):
            raise ModelError(
                f"the loop did not finish the item in flight within {timeout_s:.0f} s; swap refused"
            )
        try:
            old, self._active = self._active, new
            self._last_item = None  # a stateful newcomer starts from its initial state
            if on_swap is not None:
                try:
                    on_swap()
                except Exception:  # the swap itself has happened: a failing hook must not hide that
                    log.exception("the swap hook failed")
        finally:
            self._swap_lock.release()
        log.info("model %s v%d now in service", new.model.name, new.model.version)
        return old

    def deliver(self, item: Item) -> None:
        """Takes an item from a capture thread: pre-processes it there (when staging is on) and posts it."""
        if not self.settings.stage_on_capture:
            self._mailbox.put(Staged(item))
            return
        active = self._active
        try:
            start = time.perf_counter()
            prepared = self._prepare(active, item)
            self._mailbox.put(Staged(item, prepared, active, time.perf_counter() - start))
        except Exception:  # the worker prepares it again and reports the error there, with the others
            self._mailbox.put(Staged(item))

    def _prepare(self, active: ActiveModel, item: Item) -> Prepared:
        with self._prepare_lock:
            prepared = active.model.prepare(active.adapt(item))
            if not self.settings.stage_on_capture:
                return prepared
            # the pre-processor reuses its buffers: a staged item keeps copies of its own
            normalized = prepared.normalized.copy() if prepared.normalized is not None else None
            return Prepared(prepared.tensor.copy(), prepared.frame_map, normalized)

    def _keep_or_reset(self, model: Model, item: Item) -> None:
        """A stateful model starts from its initial state at its first item and again on a new stream: another
        source, a restarted one (its sequence numbers went back) or a gap in capture time over the manifest's bound."""
        last, self._last_item = self._last_item, (item.source, item.seq, item.captured_mono)
        if last is None:  # the first item this model serves here: whatever warm-up or a self-test left goes
            model.reset_state()
            return
        source, seq, captured = last
        gap = item.captured_mono - captured
        if item.source != source or item.seq <= seq or gap > model.manifest.state_reset_s:
            model.reset_state()
            self.state_resets += 1
            log.info(
                "model state reset: %s",
                "new source"
                if item.source != source
                else "source restarted"
                if item.seq <= seq
                else f"gap {gap:.1f} s",
            )

    def queue_status(self) -> dict[str, Any] | None:
        """For a stateful model's ordered queue: backlog, deepest backlog, how long capture was held back."""
        mailbox = self._mailbox
        if not isinstance(mailbox, OrderedMailbox):
            return None
        return {
            "backlog": mailbox.backlog,
            "capacity": mailbox.capacity,
            "deepest": mailbox.deepest,
            "times_full": mailbox.full_count,
            "held_s": round(mailbox.held_s, 3),
            "state_resets": self.state_resets,
        }

    def busy_s(self, now: float | None = None) -> float:
        """How long the item in flight has been in the model (0 when idle)."""
        since = self._busy_since
        if since is None:
            return 0.0
        return (now if now is not None else time.monotonic()) - since

    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        if self.settings.cpu_affinity:
            try:
                os.sched_setaffinity(0, self.settings.cpu_affinity)
            except (OSError, AttributeError, ValueError) as problem:
                log.warning(
                    "cannot pin the inference thread to CPUs %s: %s", self.settings.cpu_affinity, problem
                )
        interval = 1.0 / self.settings.max_rate_hz if self.settings.max_rate_hz else 0.0
        next_start = 0.0
        observer = self._observer
        while not self._stop.is_set():
            waited = time.perf_counter()
            staged = self._mailbox.get(self.settings.poll_s)
            if staged is None:
                with contextlib.suppress(Exception):
                    observer.on_idle()
                continue
            wait_s = time.perf_counter() - waited
            with self._swap_lock:
                self._handle(staged, wait_s)
            if interval:
                now = time.monotonic()
                next_start = max(next_start + interval, now) if next_start else now + interval
                delay = next_start - now
                if delay > 0 and self._stop.wait(delay):
                    break

    def _handle(self, staged: Staged, wait_s: float) -> None:
        active, item = self._active, staged.item
        model = active.model
        self._busy_since = time.monotonic()
        try:
            t1 = time.perf_counter()
            prepared = staged.prepared
            if prepared is None or staged.active is not active:
                prepared = self._prepare(active, item)
                t0, t1 = t1, time.perf_counter()
            else:
                t0 = t1 - staged.preprocess_s
            if model.stateful:
                self._keep_or_reset(model, item)
            raw = model.invoke(prepared.tensor)
            t2 = time.perf_counter()
            result = model.decode(raw, prepared)
            t3 = time.perf_counter()
        except Exception as problem:
            self._busy_since = None
            self.progress += 1
            self.errors += 1
            self.last_error = (
                str(problem) if isinstance(problem, AgentError) else f"{type(problem).__name__}: {problem}"
            )
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("item %d failed (%d errors so far): %s", item.seq, self.errors, self.last_error)
            with contextlib.suppress(Exception):
                self._observer.on_error(item, problem)
            return
        self._busy_since = None
        record = ResultRecord(
            item=item,
            result=result,
            model_name=model.name,
            model_version=model.version,
            times=StageTimes(wait_s, t1 - t0, t2 - t1, t3 - t2),
            age_s=time.monotonic() - item.captured_mono,
        )
        self.progress += 1
        try:
            self._observer.on_record(record)
        except Exception as problem:  # a monitor bug must not stop inference
            log.warning("observer failed on item %d: %s", item.seq, problem)
        started = time.perf_counter()
        for sink in self._sinks:
            try:
                sink.emit(record)
            except Exception as problem:
                log.warning("sink %s failed: %s", getattr(sink, "name", sink), problem)
        with contextlib.suppress(Exception):
            self._observer.on_sinks(time.perf_counter() - started)


def warm_up(model: Model, runs: int, sample: Array | None = None) -> float:
    """Runs the model `runs` times on a sample (or a synthetic stand-in) off the hot path; returns mean seconds."""
    from agent.inference.inputs import synthetic_input

    if runs <= 0:
        return 0.0
    data = (
        sample if sample is not None else synthetic_input(model.manifest.input, tuple(model.data_spec.shape))
    )
    start = time.perf_counter()
    for _ in range(runs):
        model.infer(data)
    return (time.perf_counter() - start) / runs
