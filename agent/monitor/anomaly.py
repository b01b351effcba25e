"""Anomaly events from decoded results, debounced with hysteresis. Pure: results and times in, events out.

What counts as anomalous (`assess`), with the evidence's `kind` saying which:
- `model`: an anomaly-task result whose `anomaly` flag is set (its score is above the bundle's threshold);
- `rule`: a classification whose top-1 label, or a detection whose label, is one of the configured `labels` with a
  score of at least `min_score` (rule `labels`); or a detection result with more than `max_objects` detections in
  one frame (rule `max_objects`).
Raw results never do.

Episodes (`AnomalyTracker.update`, over `agent.monitor.episodes.Episode`):
- an episode starts after `rise_after` anomalous results in a row, and the start is reported at once;
- while it lasts, an "ongoing" update goes out at most once per `cooldown_s` (counted from the previous event), and
  only on an anomalous result;
- it ends after `clear_after` normal results in a row *and* `clear_s` seconds without an anomalous one (hysteresis: a
  single normal frame does not end it, and a fault that comes back within `clear_s`, such as a recording replayed in
  a loop, continues the same episode); the end is reported when `report_end` is set.
So the number of events is bounded by one start and one end per episode plus one update per `cooldown_s`.
Times are the caller's monotonic seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.events import AgentEvent, Phase, Severity
from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    DetectionResult,
    Result,
    SegmentationResult,
)
from agent.monitor.episodes import Episode, Hysteresis


@dataclass(frozen=True)
class AnomalyRules:
    """When a result is anomalous and how episodes are debounced."""

    cooldown_s: float = 10.0
    labels: tuple[str, ...] = ()
    min_score: float = 0.5
    rise_after: int = 1
    clear_after: int = 3
    clear_s: float = 10.0
    """An episode ends only this long after its last anomalous result (and `clear_after` normal ones)."""
    max_objects: int | None = None
    """A detection result with more than this many detections is anomalous (None: no such rule)."""
    critical_ratio: float = 3.0
    """An anomaly score at or above this multiple of the threshold is `critical` rather than `warning`."""
    report_end: bool = True

    def hysteresis(self) -> Hysteresis:
        """The episode timing of these rules."""
        return Hysteresis(self.rise_after, self.clear_after, self.clear_s, self.cooldown_s)


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
            return _assess_detections(result.detections, rules)
        case SegmentationResult():  # its regions have a label and a score, as detections do
            return _assess_detections(result.regions, rules)
    return _NORMAL


def _assess_dict(data: Mapping[str, Any], rules: AnomalyRules) -> Finding:
    # The JSON form has no type to dispatch on: its "task" key is all it says about itself.
    task = data.get("task")
    if task == "anomaly":
        return _assess_score(data.get("anomaly"), data.get("score"), data.get("threshold"), rules)
    if task == "classification":
        return _assess_labels(data.get("labels"), "classified as ", rules, top_only=True)
    if task == "detection":
        return _assess_detections(data.get("detections"), rules)
    if task == "segmentation":
        return _assess_detections(data.get("regions"), rules)
    return _NORMAL


def _assess_detections(entries: Iterable[Any] | None, rules: AnomalyRules) -> Finding:
    listed = list(entries or ())
    finding = _assess_labels(listed, "detected ", rules)
    if finding.anomalous or rules.max_objects is None or len(listed) <= rules.max_objects:
        return finding
    evidence = {"kind": "rule", "rule": "max_objects", "count": len(listed), "bound": rules.max_objects}
    return Finding(
        True, "warning", f"{len(listed)} objects in one frame (more than {rules.max_objects})", None, evidence
    )


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
        "kind": "model",
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
    evidence = {"kind": "rule", "rule": "labels", "matches": matches[:10], "count": len(matches)}
    return Finding(True, "warning", text, peak, evidence)


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
        self._episode = Episode(self.rules.hysteresis())
        self._peak: float | None = None
        self._severity: Severity = "warning"
        self._kind = "model"
        self._reason = ""

    @property
    def active(self) -> bool:
        """Whether an episode is going on."""
        return self._episode.active

    @property
    def episodes(self) -> int:
        """Episodes started so far."""
        return self._episode.count

    def reset(self) -> None:
        """Forgets the current episode without reporting its end (after a model swap)."""
        self._episode.reset()
        self._peak = None

    def update(
        self, result: Result | Mapping[str, Any], now: float, seq: int | None = None
    ) -> AgentEvent | None:
        """Feeds one result; returns the event it triggers, if any."""
        finding = assess(result, self.rules)
        episode = self._episode
        phase = episode.step(finding.anomalous, now)
        if finding.anomalous:
            if phase == "start":
                self._peak, self._severity = finding.score, finding.severity
            elif finding.score is not None and (self._peak is None or finding.score > self._peak):
                self._peak = finding.score
            if finding.severity == "critical":
                self._severity = "critical"
            self._kind, self._reason = str(finding.evidence.get("kind", "model")), finding.reason
        if phase is None or (phase == "end" and not self.rules.report_end):
            return None
        duration = episode.duration_s(now)
        if phase == "start":
            message = f"anomaly: {finding.reason}"
        elif phase == "ongoing":
            message = (
                f"anomaly continues ({episode.breaches} anomalous results in {duration:.1f} s, "
                f"update {episode.updates}): {finding.reason}"
            )
        else:
            message = f"anomaly ended after {duration:.1f} s ({episode.breaches} anomalous results)"
        return self._event(finding, phase, now, seq, message)

    def status(self, now: float) -> dict[str, Any] | None:
        """The episode going on, JSON-ready (None when there is none)."""
        if not self._episode.active:
            return None
        return {
            "kind": self._kind,
            "severity": self._severity,
            "reason": self._reason,
            **self._episode.status(now),
        }

    def _event(self, finding: Finding, phase: Phase, now: float, seq: int | None, message: str) -> AgentEvent:
        episode = self._episode
        evidence: dict[str, Any] = {
            "kind": self._kind,
            **finding.evidence,
            "episode": episode.count,
            "duration_s": round(episode.duration_s(now), 3),
            "anomalous_results": episode.breaches,
            "updates": episode.updates,
            "peak_score": None if self._peak is None else round(self._peak, 6),
        }
        if seq is not None:
            evidence["seq"] = seq
        if phase == "end":
            return AgentEvent("anomaly", "info", message, evidence, phase="end")
        severity = finding.severity if phase == "start" else self._severity
        return AgentEvent("anomaly", severity, message, evidence, phase=phase)
