"""Health of the model in service, counted per model version from its swap on: the evidence an activation trial reads.

Counters: items handled, errors (by kind), the model's own latency (pre-process + invoke + decode, a histogram), and
the share of results whose top score is below a low-confidence bar (classification and detection; results without a
score, such as raw tensors, are not counted either way).

Invariants: pure, no I/O and no clock reads (the caller passes `now`); one writer (the inference thread) and any number
of readers, under one lock held for microseconds; a `ModelHealth` belongs to one model version: the model service makes
a new one at each swap, between the same two items as the swap itself, so no figure mixes two models.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from agent.monitor.histogram import LatencyHistogram

LOW_CONFIDENCE_BELOW = 0.5
"""A classification or detection whose best score is below this counts as low-confidence."""


@dataclass(frozen=True)
class HealthSnapshot:
    """One model version's counters at one moment, JSON-ready through `to_dict`."""

    name: str
    version: int
    since: float
    items: int
    errors: int
    errors_by_kind: dict[str, int]
    scored: int
    low_confidence: int
    latency_ms: dict[str, Any]
    latency_p95_s: float | None

    @property
    def error_rate(self) -> float | None:
        """Errors over items handled (None before the first item)."""
        total = self.items + self.errors
        return self.errors / total if total else None

    @property
    def low_confidence_share(self) -> float | None:
        """Low-confidence results over scored results (None before the first scored result)."""
        return self.low_confidence / self.scored if self.scored else None

    def to_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready form, with the seconds counted since the swap."""
        rate, share = self.error_rate, self.low_confidence_share
        return {
            "model": {"name": self.name, "version": self.version},
            "since_s": round(max(0.0, now - self.since), 3),
            "items": self.items,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            "error_rate": None if rate is None else round(rate, 6),
            "low_confidence_share": None if share is None else round(share, 6),
            "latency_ms": self.latency_ms,
        }


class ModelHealth:
    """Counts one model version's results and errors (inference thread); read from any thread."""

    def __init__(
        self, name: str, version: int, since: float, low_below: float = LOW_CONFIDENCE_BELOW
    ) -> None:
        self.name, self.version, self.since, self.low_below = name, version, since, low_below
        self._lock = threading.Lock()
        self._items = 0
        self._errors: dict[str, int] = {}
        self._scored = 0
        self._low = 0
        self._latency = LatencyHistogram()

    def record(self, latency_s: float, top_score: float | None) -> None:
        """One result: the model's latency and its top score (None when the result has none)."""
        with self._lock:
            self._items += 1
            self._latency.record(latency_s)
            if top_score is not None:
                self._scored += 1
                if top_score < self.low_below:
                    self._low += 1

    def error(self, kind: str) -> None:
        """One item the model could not handle."""
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def snapshot(self) -> HealthSnapshot:
        """The counters now."""
        with self._lock:
            latency = self._latency.copy()
            items, errors, scored, low = self._items, dict(self._errors), self._scored, self._low
        return HealthSnapshot(
            name=self.name,
            version=self.version,
            since=self.since,
            items=items,
            errors=sum(errors.values()),
            errors_by_kind=errors,
            scored=scored,
            low_confidence=low,
            latency_ms=latency.summary(),
            latency_p95_s=latency.p95,
        )


__all__ = ["LOW_CONFIDENCE_BELOW", "HealthSnapshot", "ModelHealth"]
