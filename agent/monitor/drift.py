"""Data drift against a bundle's reference statistics (`reference.json`). Pure: arrays and results in, reports out.

What is compared, every `every_n` items (tumbling windows; the accumulators restart after each check):
- inputs, per channel, on the same values the reference was measured on (`agent.inference.reference`): BGR pixels of a
  32x32 INTER_AREA thumbnail of each frame, every sample of a sensor window (columns in the reference's channel
  order: pass `ActiveModel.adapt(item)`), or every value of a raw tensor. Frames larger than 256 px are first
  decimated (nearest neighbour) to 128x128, so a 1080p frame costs ~80 µs instead of ~7 ms; the thumbnail differs
  from the exact one by a few grey levels, well inside the 16-level bins;
- outputs: the top-1 label share (classification) or the detection label share, the score histogram, the
  detections-per-input histogram (detection), the anomaly score histogram (anomaly). Raw outputs are not compared.

The statistic is the population stability index, PSI = sum((live - ref) * ln(live / ref)) over bins, with shares
floored at 1e-4. Reference bins holding less than `min_share` (5 %) of the reference are merged with their neighbours
first, as is usual for PSI: sparse tail bins otherwise dominate it with sampling noise (the four bundled motion
recordings read 0.1 merged, 0.22 unmerged). Bands: < 0.1 stable, 0.1..0.25 moderate, >= 0.25 significant. The mean
shift of each input channel in reference standard deviations, and the ratio of its standard deviation to the
reference's (near 0: a stuck sensor; well above 1: noise), are reported alongside as evidence.

Hysteresis: the monitor enters the drifting state when the largest PSI of a check reaches `psi_threshold` and leaves
it only when a check's largest PSI falls below `clear_psi` (half the threshold by default), so a value hovering at
the threshold does not flap. Events: one on entering (warning), one the first time a drift episode reaches the
significant band (warning), one on leaving (info).

Mind what the reference is: the statistics of a calibration set, a population. One fixed camera scene or one sensor
activity is a narrow slice of it and can read as drift although the model handles it well.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from agent.events import AgentEvent
from agent.inference.reference import THUMBNAIL, DriftReference, Histogram
from agent.inference.results import AnomalyResult, ClassificationResult, DetectionResult, Result
from agent.types import Array

Level = Literal["stable", "moderate", "significant"]
_FLOOR = 1e-4
_NONE_LABEL = "(none)"
_OTHER_LABEL = "(other)"


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Population stability index of `actual` counts against `expected` counts (same bins)."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty count vectors of the same length")
    e = np.maximum(e / e.sum(), _FLOOR)
    a = np.maximum(a / a.sum(), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def merge_groups(counts: Sequence[int], min_share: float) -> list[int]:
    """Group index of each bin: adjacent bins joined until each group holds at least `min_share` of the total."""
    need = min_share * float(sum(counts))
    groups: list[int] = []
    current, acc = 0, 0.0
    for index, count in enumerate(counts):
        groups.append(current)
        acc += count
        if acc >= need and index < len(counts) - 1:
            current, acc = current + 1, 0.0
    if current > 0 and acc < need:  # a short tail joins the group before it
        groups = [min(group, current - 1) for group in groups]
    return groups


def level_of(value: float, moderate: float = 0.1, significant: float = 0.25) -> Level:
    """The conventional PSI band of a value."""
    return "significant" if value >= significant else "moderate" if value >= moderate else "stable"


class _Binned:
    """Live counts on a reference histogram's bins, compared after merging sparse reference bins."""

    def __init__(self, reference: Histogram, min_share: float) -> None:
        edges = np.asarray(reference.edges, np.float64)
        self.inner = edges[1:-1]
        self.reference = np.asarray(reference.counts, np.float64)
        self.groups = np.asarray(merge_groups(reference.counts, min_share), np.int64)
        self.size = int(self.groups.max()) + 1
        self.ref_merged = np.bincount(self.groups, weights=self.reference, minlength=self.size)
        self.counts = np.zeros(len(self.reference), np.int64)

    def add(self, values: np.ndarray) -> None:
        self.counts += np.bincount(
            np.searchsorted(self.inner, values, side="right"), minlength=len(self.reference)
        )

    def psi(self) -> float | None:
        live = np.bincount(self.groups, weights=self.counts, minlength=self.size)
        if live.sum() <= 0 or self.ref_merged.sum() <= 0:
            return None
        return psi(self.ref_merged, live)

    def reset(self) -> None:
        self.counts[:] = 0


class _Categories:
    """Live shares of labels against the reference's label shares; unknown labels are pooled."""

    def __init__(self, frequency: Mapping[str, float], with_none: bool) -> None:
        self.reference = dict(frequency)
        rest = 1.0 - sum(self.reference.values())
        if with_none and rest > 1e-6:
            self.reference[_NONE_LABEL] = rest
        self.reference.setdefault(_OTHER_LABEL, 0.0)
        self.counts = dict.fromkeys(self.reference, 0)

    def add(self, label: str) -> None:
        key = label if label in self.counts else _OTHER_LABEL
        self.counts[key] += 1

    def psi(self) -> float | None:
        live = [self.counts[key] for key in self.reference]
        if sum(live) <= 0:
            return None
        return psi(list(self.reference.values()), live)

    def reset(self) -> None:
        self.counts = dict.fromkeys(self.reference, 0)


@dataclass(frozen=True)
class DriftReport:
    """The outcome of one check."""

    items: int
    psi: dict[str, float]
    mean_shift: dict[str, float]
    std_ratio: dict[str, float]
    max_psi: float
    worst: str | None
    level: Level
    drifting: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rounded)."""
        return {
            "items": self.items,
            "psi": {k: round(v, 4) for k, v in self.psi.items()},
            "mean_shift_std": {k: round(v, 3) for k, v in self.mean_shift.items()},
            "std_ratio": {k: round(v, 3) for k, v in self.std_ratio.items()},
            "max_psi": round(self.max_psi, 4),
            "worst": self.worst,
            "level": self.level,
            "drifting": self.drifting,
        }


@dataclass
class _Moments:
    n: int = 0
    total: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(0))


class DriftMonitor:
    """Accumulates input and output statistics and compares them with the reference every `every_n` items."""

    def __init__(
        self,
        reference: DriftReference,
        every_n: int = 300,
        psi_threshold: float = 0.2,
        significant_psi: float = 0.25,
        clear_psi: float | None = None,
        min_share: float = 0.05,
        input_every: int = 1,
    ) -> None:
        if every_n < 1 or input_every < 1 or psi_threshold <= 0:
            raise ValueError("every_n and input_every must be >= 1 and psi_threshold > 0")
        self.reference = reference
        self.every_n, self.input_every = every_n, input_every
        self.psi_threshold, self.significant_psi = psi_threshold, significant_psi
        self.clear_psi = clear_psi if clear_psi is not None else psi_threshold / 2
        names = [channel.name for channel in reference.input]
        self.mode = (
            "image"
            if reference.input_space.startswith("BGR pixel values")
            else "tensor"
            if names == ["value"]
            else "window"
        )
        self._names = names
        self._inputs = [_Binned(channel.histogram, min_share) for channel in reference.input]
        inners = [binned.inner for binned in self._inputs]
        shared = all(inner.shape == inners[0].shape and np.array_equal(inner, inners[0]) for inner in inners)
        self._shared_inner = inners[0] if shared and inners else None
        self._offsets = np.arange(len(inners)) * (len(inners[0]) + 1) if inners else np.zeros(0, np.int64)
        self._ref_mean = np.array([c.mean for c in reference.input], np.float64)
        self._ref_std = np.array([c.std for c in reference.input], np.float64)
        self._moments = _Moments(0, np.zeros(len(names)), np.zeros(len(names)))
        out = reference.output
        self.task = out.task
        self._labels: _Categories | None = None
        if out.task in ("classification", "detection") and out.class_frequency:
            self._labels = _Categories(out.class_frequency, with_none=out.task == "classification")
        self._score = (
            _Binned(out.score, min_share) if out.score is not None and any(out.score.counts) else None
        )
        self._count = (
            _Binned(out.count, min_share) if out.count is not None and any(out.count.counts) else None
        )
        self._items = 0
        self.checks = 0
        self.skipped = 0
        self.drifting = False
        self._significant = False  # this drift episode has reached the significant band
        self.last_report: DriftReport | None = None

    # ------------------------------------------------------------------ accumulation

    def observe(self, data: Array | None, result: Result | None = None) -> AgentEvent | None:
        """Counts one item (its input and/or result); every `every_n` items checks and returns an event on a change."""
        if data is not None and self._items % self.input_every == 0:
            self.observe_input(data)
        if result is not None:
            self.observe_output(result)
        self._items += 1
        if self._items < self.every_n:
            return None
        return self.check()[1]

    def observe_input(self, data: Array) -> None:
        """Adds one input's values to the per-channel statistics (an input of the wrong shape is skipped)."""
        if self.mode == "image":
            thumb = _thumbnail(data)
            if thumb is None:
                self.skipped += 1
                return
            values = thumb.reshape(-1, 3)
            mean, std = cv2.meanStdDev(thumb)  # ~2 µs, where numpy's column sums take ~30 µs
            mean, std = mean.reshape(-1)[:3], std.reshape(-1)[:3]
            sums, squares = mean * values.shape[0], (np.square(std) + np.square(mean)) * values.shape[0]
        else:
            window = np.asarray(data)
            if self.mode == "tensor":
                window = window.reshape(-1, 1)
            if window.ndim != 2 or window.shape[1] != len(self._names):
                self.skipped += 1
                return
            values = window
            as_float = values.astype(np.float64)
            sums, squares = as_float.sum(axis=0), np.square(as_float).sum(axis=0)
        if self._shared_inner is not None:
            width = len(self._shared_inner) + 1
            flat = (np.searchsorted(self._shared_inner, values, side="right") + self._offsets).ravel()
            counts = np.bincount(flat, minlength=width * len(self._inputs)).reshape(len(self._inputs), width)
            for binned, row in zip(self._inputs, counts, strict=True):
                binned.counts += row
        else:
            for index, binned in enumerate(self._inputs):
                binned.add(values[:, index])
        moments = self._moments
        moments.n += values.shape[0]
        moments.total += sums
        moments.squares += squares

    def observe_output(self, result: Result) -> None:
        """Adds one decoded result to the output statistics (raw results add nothing)."""
        match result:
            case ClassificationResult():
                top = result.top
                if self._labels is not None:
                    self._labels.add(top.label if top else _NONE_LABEL)
                if self._score is not None and top is not None:
                    self._score.add(np.array([top.score]))
            case DetectionResult():
                if self._labels is not None:
                    for detection in result.detections:
                        self._labels.add(detection.label)
                if self._score is not None and result.detections:
                    self._score.add(np.array([d.score for d in result.detections]))
                if self._count is not None:
                    self._count.add(np.array([len(result.detections)]))
            case AnomalyResult():
                if self._score is not None:
                    self._score.add(np.array([result.score]))

    # ------------------------------------------------------------------ comparison

    def check(self) -> tuple[DriftReport | None, AgentEvent | None]:
        """Compares the window gathered so far with the reference, restarts the window; returns report and event."""
        scores: dict[str, float] = {}
        for name, binned in zip(self._names, self._inputs, strict=True):
            value = binned.psi()
            if value is not None:
                scores[f"input.{name}"] = value
        for name, stat in (
            ("output.label", self._labels),
            ("output.score", self._score),
            ("output.count", self._count),
        ):
            value = stat.psi() if stat is not None else None
            if value is not None:
                scores[name] = value
        shifts: dict[str, float] = {}
        ratios: dict[str, float] = {}
        moments = self._moments
        if moments.n:
            means = moments.total / moments.n
            stds = np.sqrt(np.maximum(moments.squares / moments.n - np.square(means), 0.0))
            for name, mean, std, ref_mean, ref_std in zip(
                self._names, means, stds, self._ref_mean, self._ref_std, strict=True
            ):
                if ref_std > 0 and math.isfinite(mean) and math.isfinite(std):
                    shifts[name] = float((mean - ref_mean) / ref_std)
                    ratios[name] = float(std / ref_std)
        items = self._items
        self._restart()
        if not scores:
            return None, None
        worst = max(scores, key=lambda k: scores[k])
        top = scores[worst]
        was, escalated = self.drifting, self._significant
        if not was and top >= self.psi_threshold:
            self.drifting = True
        elif was and top < self.clear_psi:
            self.drifting = False
        level = level_of(top, 0.1, self.significant_psi)
        self._significant = self.drifting and (escalated or level == "significant")
        report = DriftReport(items, scores, shifts, ratios, top, worst, level, self.drifting)
        self.last_report = report
        self.checks += 1
        return report, self._event(report, was, escalated)

    def _event(self, report: DriftReport, was: bool, escalated: bool) -> AgentEvent | None:
        evidence = report.to_dict()
        worst = f"{report.worst} PSI {report.max_psi:.2f}"
        shift = report.mean_shift.get((report.worst or "").removeprefix("input."))
        if shift is not None:
            worst += f", mean shift {shift:+.2f} std"
        if report.drifting and not was:
            return AgentEvent(
                "drift", "warning", f"data drift ({report.level}): {worst}", evidence, phase="start"
            )
        if report.drifting and report.level == "significant" and not escalated:
            return AgentEvent(
                "drift", "warning", f"data drift is now significant: {worst}", evidence, phase="ongoing"
            )
        if was and not report.drifting:
            return AgentEvent(
                "drift", "info", f"data drift cleared: largest PSI {report.max_psi:.2f}", evidence, phase="end"
            )
        return None

    def _restart(self) -> None:
        for binned in self._inputs:
            binned.reset()
        for stat in (self._labels, self._score, self._count):
            if stat is not None:
                stat.reset()
        self._moments = _Moments(0, np.zeros(len(self._names)), np.zeros(len(self._names)))
        self._items = 0

    def status(self) -> dict[str, Any]:
        """JSON-ready state for `status` and telemetry."""
        return {
            "drifting": self.drifting,
            "checks": self.checks,
            "items_in_window": self._items,
            "every_n": self.every_n,
            "skipped_inputs": self.skipped,
            "last": self.last_report.to_dict() if self.last_report is not None else None,
        }


def _thumbnail(frame: Array) -> np.ndarray | None:
    """The frame's 32x32 BGR INTER_AREA thumbnail, as the reference measures it (large frames decimated first)."""
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] < 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        return None
    side = THUMBNAIL[0] * 4
    try:
        if frame.shape[0] > 2 * side or frame.shape[1] > 2 * side:
            frame = cv2.resize(frame[..., :3], (side, side), interpolation=cv2.INTER_NEAREST)
        thumb: np.ndarray = cv2.resize(frame[..., :3], THUMBNAIL, interpolation=cv2.INTER_AREA)
    except cv2.error:  # a dtype OpenCV cannot resize
        return None
    return thumb
