"""What the loop hands to sinks and monitors: one decoded result with its provenance and stage timings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.inference import Prepared, Result
from agent.pipeline.active import ActiveModel
from agent.sources.base import Item


@dataclass(frozen=True, slots=True)
class Staged:
    """An item on its way to the worker, pre-processed on the capture thread for `active` when `prepared` is set."""

    item: Item
    prepared: Prepared | None = None
    active: ActiveModel | None = None
    preprocess_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StageTimes:
    """Seconds spent in each stage for one item."""

    wait_s: float
    preprocess_s: float
    invoke_s: float
    decode_s: float

    @property
    def total_s(self) -> float:
        """Pre-process + invoke + decode."""
        return self.preprocess_s + self.invoke_s + self.decode_s


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """A decoded result, the item it came from, the model that made it, and how long it took."""

    item: Item
    result: Result
    model_name: str
    model_version: int
    times: StageTimes
    age_s: float
    """Capture to decoded result, seconds."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for sinks and the fleet link."""
        return {
            "seq": self.item.seq,
            "source": self.item.source,
            "captured_at": round(self.item.captured_at, 6),
            "model": {"name": self.model_name, "version": self.model_version},
            "age_ms": round(self.age_s * 1000.0, 3),
            "latency_ms": {
                "preprocess": round(self.times.preprocess_s * 1000.0, 3),
                "invoke": round(self.times.invoke_s * 1000.0, 3),
                "decode": round(self.times.decode_s * 1000.0, 3),
            },
            "result": self.result.to_dict(),
        }

    def change_key(self) -> tuple[Any, ...]:
        """A small comparable key: equal keys mean 'the same answer' (for on-change result policies)."""
        key = self.result.change_key()
        return key if key is not None else ("raw", self.item.seq)  # a raw result is always a new answer
