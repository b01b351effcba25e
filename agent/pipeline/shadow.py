"""The shadow tee: a sampled share of live items goes to a second (candidate) model beside the one in service.

The tee is a sink of the inference loop. `emit` (on the inference thread) costs a counter and, for a sampled item, one
single-slot mailbox put: it never runs the shadow model and never waits. A named worker thread runs the candidate on
the item, under a CPU budget, and hands each pair (the active model's result, the candidate's result or error, and the
candidate's latency) to a callback, and to `ShadowStats`.

Invariants:
- the active model's loop never waits for the shadow: a sampled item that arrives while the worker is busy replaces
  the one waiting (the latest wins) and is counted as `skipped_busy`;
- CPU budget: the worker may be busy at most `cpu_share` of wall-clock time, as a token bucket over a `burst_s`
  horizon; an item offered while the bucket is empty is dropped and counted as `skipped_budget`. On a device whose
  cores are all busy, that share is the most the shadow can slow the loop by;
- the worker thread runs at nice 19 (`lower_priority`): when the loop is compute-bound the scheduler serves the active
  model's thread first, and `share_got` (the worker thread's CPU time over wall-clock time) says how much of a core the shadow got
  (`busy_share`: its wall-clock busy time, preemption included);
  the runtime's own pool threads of the candidate keep the priority they were made with;
- the tee never closes either model: the model service owns both;
- `close` stops the worker within its timeout; a candidate stuck in an invoke is left to its daemon thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError
from agent.inference import Result
from agent.monitor.histogram import LatencyHistogram
from agent.pipeline import agreement
from agent.pipeline.active import ActiveModel
from agent.pipeline.mailbox import LatestMailbox
from agent.pipeline.records import ResultRecord

log = logging.getLogger("agent.pipeline.shadow")


@dataclass(frozen=True)
class ShadowPair:
    """One live item seen by both models."""

    seq: int
    active: Result
    shadow: Result | None
    shadow_latency_s: float
    error: str | None = None

    @property
    def agrees(self) -> bool | None:
        """Whether both gave the same answer, by task (`agent.pipeline.agreement`: top-1 label, detections matched
        by label and box IoU, anomaly verdict); None when the candidate failed or gives nothing to compare."""
        return agreement.agrees(self.active, self.shadow)


SHADOW_NICE = 19
"""The shadow worker's nice value: on a device whose cores are busy, the scheduler serves the active loop first."""


def lower_priority(nice: int = SHADOW_NICE) -> int | None:
    """Gives the calling thread (Linux: a thread has a nice value of its own) the nice value `nice`; returns the
    value it runs at, or None where that cannot be set."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):
        return None


class ShadowStats:
    """Running counts of the pairs: offered, compared, skipped, agreement, candidate errors and latency, the
    correlation of the two models' top scores and the mean IoU of matched detections."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._started = clock()
        self._busy_s = self._cpu_s = 0.0
        self.priority: int | None = None
        self.offered = self.compared = self.skipped_busy = self.skipped_budget = 0
        self.agreed = self.disagreed = self.errors = 0
        self._latency = LatencyHistogram()
        self._score_delta_sum = 0.0
        self._score_deltas = 0
        self._scores = agreement.Correlation()
        self._iou_sum = 0.0
        self._ious = 0

    def count(self, what: str) -> None:
        """Counts one offered or skipped item (`offered`, `skipped_busy`, `skipped_budget`)."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def busy(self, seconds: float, cpu_s: float) -> None:
        """Counts the wall-clock and CPU time the worker spent on the candidate (`busy_share`, `share_got`)."""
        with self._lock:
            self._busy_s += seconds
            self._cpu_s += cpu_s

    def add(self, pair: ShadowPair) -> None:
        """Counts one pair."""
        with self._lock:
            self.compared += 1
            if pair.error is not None:
                self.errors += 1
                return
            self._latency.record(pair.shadow_latency_s)
            agrees = pair.agrees
            if agrees is True:
                self.agreed += 1
            elif agrees is False:
                self.disagreed += 1
            mine = pair.active.top_score()
            theirs = pair.shadow.top_score() if pair.shadow is not None else None
            if mine is not None and theirs is not None:
                self._score_delta_sum += theirs - mine
                self._score_deltas += 1
                self._scores.add(mine, theirs)
            overlap = agreement.mean_iou(pair.active, pair.shadow)
            if overlap is not None:
                self._iou_sum += overlap
                self._ious += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts and ratios."""
        with self._lock:
            judged = self.agreed + self.disagreed
            return {
                "offered": self.offered,
                "compared": self.compared,
                "skipped_busy": self.skipped_busy,
                "skipped_budget": self.skipped_budget,
                "errors": self.errors,
                "agreement": round(self.agreed / judged, 6) if judged else None,
                "mean_score_delta": round(self._score_delta_sum / self._score_deltas, 6)
                if self._score_deltas
                else None,
                "score_correlation": None if (value := self._scores.value()) is None else round(value, 6),
                "mean_iou": round(self._iou_sum / self._ious, 6) if self._ious else None,
                "latency_ms": self._latency.summary(),
                "share_got": round(self._cpu_s / elapsed, 6)
                if (elapsed := self._clock() - self._started) > 0
                else None,
                "busy_share": round(self._busy_s / elapsed, 6) if elapsed > 0 else None,
                "priority": self.priority,
            }


class ShadowTee:
    """A loop sink that runs a candidate model on a sampled share of live items, off the inference thread."""

    name = "shadow"

    def __init__(
        self,
        candidate: ActiveModel,
        *,
        every_n: int = 4,
        cpu_share: float = 0.25,
        burst_s: float = 2.0,
        on_pair: Callable[[ShadowPair], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_n < 1 or not 0 < cpu_share <= 1 or burst_s <= 0:
            raise AgentError("a shadow run needs every_n >= 1, 0 < cpu_share <= 1 and burst_s > 0")
        self.candidate = candidate
        self.every_n, self.cpu_share, self.burst_s = every_n, cpu_share, burst_s
        self.stats = ShadowStats(clock)
        self._on_pair = on_pair
        self._clock = clock
        self._mailbox: LatestMailbox[ResultRecord] = LatestMailbox()
        self._seen = 0
        self._credit_s = burst_s * cpu_share
        self._credit_at = clock()
        self._credit_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ inference thread

    def emit(self, record: ResultRecord) -> None:
        """Offers every `every_n`-th result's item to the candidate; never waits."""
        self._seen += 1
        if self._seen % self.every_n:
            return
        self.stats.count("offered")
        if not self._has_credit():
            self.stats.count("skipped_budget")
            return
        before = self._mailbox.dropped
        self._mailbox.put(record)  # only this thread puts: a change in `dropped` is the item it replaced
        if self._mailbox.dropped != before:
            self.stats.count("skipped_busy")

    def _has_credit(self) -> bool:
        with self._credit_lock:
            now = self._clock()
            cap = self.burst_s * self.cpu_share
            self._credit_s = min(cap, self._credit_s + (now - self._credit_at) * self.cpu_share)
            self._credit_at = now
            return self._credit_s > 0

    def _spend(self, seconds: float) -> None:
        with self._credit_lock:
            self._credit_s -= seconds

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        self.stats.priority = lower_priority()
        while not self._stop.is_set():
            record = self._mailbox.get(0.5)
            if record is None:
                continue
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                result = self.candidate.model.infer(self.candidate.adapt(record.item))
                pair = ShadowPair(record.item.seq, record.result, result, time.perf_counter() - started)
            except Exception as problem:
                text = (
                    str(problem)
                    if isinstance(problem, AgentError)
                    else f"{type(problem).__name__}: {problem}"
                )
                pair = ShadowPair(record.item.seq, record.result, None, time.perf_counter() - started, text)
            self._spend(time.perf_counter() - started)
            self.stats.busy(time.perf_counter() - started, time.thread_time() - cpu_started)
            self.stats.add(pair)
            if self._on_pair is not None:
                try:
                    self._on_pair(pair)
                except Exception:
                    log.exception("the shadow pair callback failed")

    def close(self, timeout_s: float = 0.5) -> None:
        """Stops the worker; the item in the mailbox, if any, is dropped."""
        self._stop.set()
        self._mailbox.close()
        self._thread.join(timeout_s)

    def alive(self) -> bool:
        """Whether the worker thread runs."""
        return self._thread.is_alive()


__all__ = ["ShadowPair", "ShadowStats", "ShadowTee"]
