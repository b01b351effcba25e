"""Hard-example capture: which items the monitors keep for retraining, and how a kept one is written.

Two halves on two threads, like the event snapshots: `observe` and `for_event` run on the inference thread and only
compare numbers (a trigger's rate limit, the top score against `low_confidence_below`) and remember the newest
record; they return a `CaptureJob` for the monitors' writer thread, where `save` encodes the item (JPEG or .npy) and
writes it with its `SampleMeta` line into the `SampleStore`. Nothing here blocks the loop or raises into it: an item
that will not encode, or a full disk, is counted in the store's status and logged once.

Triggers: an anomaly event starting or going on, a drift event starting or going on (drift events carry no item: the
item is the one whose result raised the event, the newest record), and a classification or detection result whose
top score is below the bound (an anomaly score is not a confidence). At most one sample per trigger every
`min_interval_s`; the rate limit is taken when the job is made, so a burst never reaches the writer's queue.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import CaptureConfig, CaptureTrigger
from agent.errors import InputError
from agent.events import AgentEvent
from agent.inference.results import Result
from agent.link import ModelRef, SampleMeta
from agent.pipeline import ResultRecord
from agent.pipeline.samples import SampleStore, encode_item
from agent.sources.base import Item

CONFIDENCE_TASKS = ("classification", "detection")


@dataclass(frozen=True)
class CaptureJob:
    """An item to keep, with its result, the model that made it, the trigger and the event behind it."""

    trigger: CaptureTrigger
    item: Item
    result: Result
    model: tuple[str, int]
    event_id: str | None = None


class HardExamples:
    """Picks hard examples on the inference thread and saves them on the writer thread (see the module docstring)."""

    def __init__(
        self, config: CaptureConfig, store: SampleStore, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._last: dict[str, float] = {}
        self._record: ResultRecord | None = None
        self.rate_limited = 0

    # ------------------------------------------------------------------ inference thread

    def observe(self, record: ResultRecord) -> CaptureJob | None:
        """Remembers the newest record; a job when its result is low-confidence and the trigger's turn has come."""
        self._record = record
        result = record.result
        if result.task not in CONFIDENCE_TASKS:
            return None
        score = result.top_score()
        if score is None or score >= self.config.low_confidence_below:
            return None
        return self._job("low-confidence", None)

    def for_event(self, event: AgentEvent) -> CaptureJob | None:
        """A job for an anomaly or drift event starting or going on, with the newest record's item and result."""
        if event.type not in ("anomaly", "drift") or event.phase == "end":
            return None
        trigger: CaptureTrigger = "anomaly" if event.type == "anomaly" else "drift"
        return self._job(trigger, event.id)

    def _job(self, trigger: CaptureTrigger, event_id: str | None) -> CaptureJob | None:
        record = self._record
        if record is None or trigger not in self.config.triggers:
            return None
        now = self._clock()
        last = self._last.get(trigger)
        if last is not None and now - last < self.config.min_interval_s:
            self.rate_limited += 1
            return None
        self._last[trigger] = now
        model = (record.model_name, record.model_version)
        return CaptureJob(trigger, record.item, record.result, model, event_id)

    # ------------------------------------------------------------------ writer thread

    def save(self, job: CaptureJob) -> str | None:
        """Encodes and stores the job's item with its metadata line; the sample id, or None (counted, logged)."""
        item = job.item
        try:
            data, data_format = encode_item(item.kind, item.data, self.config.jpeg_quality)
        except InputError as problem:
            self.store.fail("encode", f"sample not kept: {problem}")
            return None
        digest = hashlib.sha256(data).hexdigest()
        result: dict[str, Any] = job.result.to_dict()
        name, version = job.model
        now = time.time()

        def meta(sample_id: str) -> bytes:
            return SampleMeta(
                id=sample_id,
                time=now,
                trigger=job.trigger,
                event_id=job.event_id,
                model=ModelRef(name=name, version=version) if name else None,
                seq=item.seq,
                captured_at=item.captured_at,
                kind="frame" if item.kind == "frame" else "window",
                format=data_format,
                size=len(data),
                sha256=digest,
                result=result,
            ).to_bytes()

        return self.store.save(job.trigger, data, data_format, meta, now)

    def status(self) -> dict[str, Any]:
        """The store's figures and the jobs the rate limit refused."""
        return {**self.store.status(), "rate_limited": self.rate_limited}


__all__ = ["CaptureJob", "HardExamples"]
