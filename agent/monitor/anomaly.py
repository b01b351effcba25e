"""Anomaly events from decoded results, debounced with hysteresis. Pure: results and times in, events out.

What counts as anomalous (`assess`):
- an anomaly-task result whose `anomaly` flag is set (its score is above the model's threshold);
- a classification whose top-1 label, or a detection whose label, is one of the configured `labels` with a score of at
  least `min_score`.
Raw results never do.

Episodes (`AnomalyTracker.update`):
- an episode starts after `rise_after` anomalous results in a row, and the start is reported at once;
- while it lasts, an "ongoing" reminder goes out at most once per `cooldown_s` (counted from the previous event), and
  only on an anomalous result;
- it ends after `clear_after` normal results in a row (hysteresis: a single normal frame inside an anomaly does not
  end it, so a flapping score cannot raise an event per frame); the end is reported when `report_end` is set.
So the number of events is bounded by one start and one end per episode plus one reminder per `cooldown_s`.
Times are the caller's monotonic seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.events import AgentEvent, Severity
from agent.inference.results import AnomalyResult, ClassificationResult, DetectionResult, Result


@dataclass(frozen=True)
class AnomalyRules:
    """When a result is anomalous and how episodes are debounced."""

    cooldown_s: float = 10.0
    labels: tuple[str, ...] = ()
    min_score: float = 0.5
    rise_after: int = 1
    clear_after: int = 3
    critical_ratio: float = 3.0
    """An anomaly score at or above this multiple of the threshold is `critical` rather than `warning`."""
    report_end: bool = True


@dataclass(frozen=True)
class Finding:
    """What one result says: anomalous or not, and why."""

    anomalous: bool
    severity: Severity = "warning"
    reason: str = ""
    score: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


_NORMAL = Finding(False)


def assess(result: Result | Mapping[str, Any], rules: AnomalyRules) -> Finding:
    """Whether one decoded result (a Result or its `to_dict()`) is anomalous under `rules`."""
    if isinstance(result, Mapping):
        return _assess_dict(result, rules)
    match result:
        case AnomalyResult():
            return _assess_score(result.anomaly, result.score, result.threshold, rules)
        case ClassificationResult():
            return _assess_labels(result.labels, "classified as ", rules, top_only=True)
        case DetectionResult():
            return _assess_labels(result.detections, "detected ", rules)
    return _NORMAL


def _assess_dict(data: Mapping[str, Any], rules: AnomalyRules) -> Finding:
    # The JSON form has no type to dispatch on: its "task" key is all it says about itself.
    task = data.get("task")
    if task == "anomaly":
        return _assess_score(data.get("anomaly"), data.get("score"), data.get("threshold"), rules)
    if task == "classification":
        return _assess_labels(data.get("labels"), "classified as ", rules, top_only=True)
    if task == "detection":
        return _assess_labels(data.get("detections"), "detected ", rules)
    return _NORMAL


def _assess_score(flagged: Any, raw_score: Any, raw_threshold: Any, rules: AnomalyRules) -> Finding:
    if not flagged:
        return _NORMAL
    score, threshold = _number(raw_score), _number(raw_threshold)
    ratio = score / threshold if score is not None and threshold else None
    severity: Severity = "critical" if ratio is not None and ratio >= rules.critical_ratio else "warning"
    text = (
        f"score {score:.4g} above threshold {threshold:.4g}" if score is not None and threshold else "flagged"
    )
    evidence = {
        "score": score,
        "threshold": threshold,
        "ratio": None if ratio is None else round(ratio, 3),
    }
    return Finding(True, severity, text, score, evidence)


def _assess_labels(
    entries: Iterable[Any] | None, prefix: str, rules: AnomalyRules, top_only: bool = False
) -> Finding:
    if not rules.labels:
        return _NORMAL
    listed = list(entries or ())
    found: list[tuple[str, float]] = []
    for entry in listed[:1] if top_only else listed:
        label, score = _label_score(entry)
        if label is not None and label in rules.labels and score is not None and score >= rules.min_score:
            found.append((label, score))
    if not found:
        return _NORMAL
    matches = [{"label": label, "score": round(score, 4)} for label, score in found]
    text = prefix + ", ".join(f"{label} {score:.2f}" for label, score in found[:5])
    peak = max(score for _, score in found)
    return Finding(True, "warning", text, peak, {"matches": matches[:10], "count": len(matches)})


def _label_score(entry: Any) -> tuple[str | None, float | None]:
    if isinstance(entry, Mapping):
        return entry.get("label"), _number(entry.get("score"))
    return getattr(entry, "label", None), _number(getattr(entry, "score", None))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


class AnomalyTracker:
    """Turns a stream of results into start / ongoing / end events of anomaly episodes (see the module docstring)."""

    def __init__(self, rules: AnomalyRules | None = None) -> None:
        self.rules = rules or AnomalyRules()
        self.active = False
        self.episodes = 0
        self._run = 0  # anomalous results in a row before a start, normal ones in a row during an episode
        self._started = 0.0
        self._last_event = 0.0
        self._hits = 0
        self._peak: float | None = None
        self._severity: Severity = "warning"

    def reset(self) -> None:
        """Forgets the current episode without reporting its end (after a model swap)."""
        self.active = False
        self._run = 0
        self._hits = 0
        self._peak = None

    def update(
        self, result: Result | Mapping[str, Any], now: float, seq: int | None = None
    ) -> AgentEvent | None:
        """Feeds one result; returns the event it triggers, if any."""
        finding = assess(result, self.rules)
        if not self.active:
            if not finding.anomalous:
                self._run = 0
                return None
            self._run += 1
            if self._run < self.rules.rise_after:
                return None
            self.active, self._run, self.episodes = True, 0, self.episodes + 1
            self._started = self._last_event = now
            self._hits, self._peak, self._severity = 1, finding.score, finding.severity
            return self._event(finding, "start", now, seq, f"anomaly: {finding.reason}")
        if not finding.anomalous:
            self._run += 1
            if self._run < self.rules.clear_after:
                return None
            self.active, self._run = False, 0
            if not self.rules.report_end:
                return None
            duration = now - self._started
            message = f"anomaly ended after {duration:.1f} s ({self._hits} anomalous results)"
            return self._event(finding, "end", now, seq, message)
        self._run = 0
        self._hits += 1
        if finding.score is not None and (self._peak is None or finding.score > self._peak):
            self._peak = finding.score
        if finding.severity == "critical":
            self._severity = "critical"
        if now - self._last_event < self.rules.cooldown_s:
            return None
        self._last_event = now
        message = f"anomaly continues ({self._hits} anomalous results in {now - self._started:.1f} s): {finding.reason}"
        return self._event(finding, "ongoing", now, seq, message)

    def _event(self, finding: Finding, phase: str, now: float, seq: int | None, message: str) -> AgentEvent:
        evidence: dict[str, Any] = {
            **finding.evidence,
            "episode": self.episodes,
            "duration_s": round(now - self._started, 3),
            "anomalous_results": self._hits,
            "peak_score": None if self._peak is None else round(self._peak, 6),
        }
        if seq is not None:
            evidence["seq"] = seq
        if phase == "end":
            return AgentEvent("anomaly", "info", message, evidence, phase="end")
        severity = finding.severity if phase == "start" else self._severity
        return AgentEvent(
            "anomaly", severity, message, evidence, phase="start" if phase == "start" else "ongoing"
        )
