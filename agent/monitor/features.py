"""Per-item features the drift detectors watch. Pure: an input or a decoded result in, a small float vector out.

Each item gives two vectors, taken apart so that inputs can be sampled (every `input_every`-th item) while outputs are
counted on every item:
- inputs. Images, on a copy decimated to at most 160 px a side (nearest neighbour, so a blur stays visible) and a
  32x32 INTER_AREA thumbnail of it: brightness (mean grey level, 0..255), contrast (grey standard deviation),
  sharpness (log of 1 + the standard deviation of the Laplacian: a blur or a covered lens drops it, noise raises it),
  and a per-channel colour histogram (8 bins of 32 levels, as shares). Sensor windows (samples x channels), per
  channel: mean, standard deviation (near 0: a stuck sensor) and the shares of its spectral energy in 4 equal bands of
  the window's frequency range (a new vibration frequency). Raw tensors: mean and standard deviation of the values.
- outputs. Classification: the top-1 label (one-hot, with `(none)` and `(other)` for labels the bundle does not
  list), the top-1 confidence and whether it is low (below 0.5). Detection: detections per label (counts), the number
  of detections per frame and the best detection score (0 without any). Anomaly: the score and whether it is over
  the model's threshold. Raw outputs give none.

A `Statistic` names what a detector compares per window: `mean` statistics are one column, compared by the window
mean's distance from the baseline mean (in the feature's units); `shares` statistics are a group of columns whose
window sums are compared as a distribution, by PSI. `resolution` is the smallest change worth a statistic's alarm:
it floors the calibrated thresholds where the baseline never varied (a constant feature would otherwise alarm on
any change).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    DetectionResult,
    KeypointsResult,
    Result,
    SegmentationResult,
)
from agent.types import Array

Kind = Literal["mean", "shares"]
Family = Literal["input", "output"]
Mode = Literal["image", "window", "tensor"]

SIDE = 160
THUMB = (32, 32)
COLOUR_BINS = 8
BANDS = 4
LOW_CONFIDENCE = 0.5
NONE_LABEL = "(none)"
OTHER_LABEL = "(other)"


@dataclass(frozen=True)
class Statistic:
    """One compared quantity: a column (`mean`) or a group of columns (`shares`) of one family's vector."""

    name: str
    kind: Kind
    family: Family
    start: int
    stop: int
    resolution: float

    @property
    def columns(self) -> slice:
        """The statistic's columns in its family's vector."""
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class FeatureSpec:
    """What features a model's items give: fixed by its input kind, task and labels."""

    mode: Mode
    task: str
    channels: tuple[str, ...]
    labels: tuple[str, ...]
    statistics: tuple[Statistic, ...]
    input_size: int
    output_size: int

    @property
    def fingerprint(self) -> str:
        """Identifies the feature layout: a stored baseline is reused only under the same one."""
        parts = [self.mode, self.task, *self.channels, "|", *self.labels, "|"]
        parts += [f"{s.name}:{s.kind}:{s.start}:{s.stop}" for s in self.statistics]
        return "/".join(parts)

    # ------------------------------------------------------------------ inputs

    def input_features(self, data: Array) -> np.ndarray | None:
        """The input vector of one item, or None for an input of the wrong shape or type."""
        if self.mode == "image":
            return _image_features(data)
        window = np.asarray(data)
        if self.mode == "tensor":
            flat = window.astype(np.float64, copy=False).reshape(-1)
            if flat.size == 0 or not np.all(np.isfinite(flat)):
                return None
            return np.array([flat.mean(), flat.std()])
        if window.ndim != 2 or window.shape[1] != len(self.channels) or window.shape[0] < 2:
            return None
        return _window_features(window.astype(np.float64, copy=False))

    # ------------------------------------------------------------------ outputs

    def output_features(self, result: Result) -> np.ndarray:
        """The output vector of one decoded result (zeros for a result of another task)."""
        out = np.zeros(self.output_size)
        labels = self.labels
        match result:
            case ClassificationResult() if self.task == "classification":
                top = result.top
                if top is None:
                    out[len(labels)] = 1.0
                else:
                    score = (
                        top.score if math.isfinite(top.score) else 0.0
                    )  # a NaN score reads as no confidence
                    out[_label_index(labels, top.label)] = 1.0
                    out[len(labels) + 2] = score
                    out[len(labels) + 3] = 1.0 if score < LOW_CONFIDENCE else 0.0
            case DetectionResult() if self.task == "detection":
                for detection in result.detections:
                    out[_label_index(labels, detection.label, with_none=False)] += 1.0
                out[len(labels) + 1] = len(result.detections)
                out[len(labels) + 2] = max(
                    (d.score for d in result.detections if math.isfinite(d.score)), default=0.0
                )
            case AnomalyResult() if self.task == "anomaly":
                out[0] = result.score if math.isfinite(result.score) else 0.0
                out[1] = 1.0 if result.anomaly else 0.0
            case SegmentationResult() if self.task == "segmentation":
                out[0] = sum(r.share for r in result.regions)
                out[1] = len(result.regions)
                out[2] = max((r.score for r in result.regions if math.isfinite(r.score)), default=0.0)
            case KeypointsResult() if self.task == "keypoints":
                presence = result.presence if result.presence is not None else 1.0
                out[0] = presence if math.isfinite(presence) else 0.0
                out[1] = 1.0 if result.present else 0.0
                out[2] = _spread(result)
        return out


def _spread(result: KeypointsResult) -> float:
    """How far the landmarks lie from their centre, in model-input units: the object's apparent size."""
    if not result.keypoints:
        return 0.0
    points = np.array([(k.x_norm, k.y_norm) for k in result.keypoints], dtype=np.float64)
    if not np.all(np.isfinite(points)):
        return 0.0
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1)).mean())


def _label_index(labels: Sequence[str], label: str, with_none: bool = True) -> int:
    try:
        return labels.index(label)
    except ValueError:
        return len(labels) + (1 if with_none else 0)


def spec_for(mode: Mode, task: str, channels: Sequence[str] = (), labels: Sequence[str] = ()) -> FeatureSpec:
    """The feature layout of a model with this input mode, task, sensor channels and labels."""
    stats: list[Statistic] = []
    if mode == "image":
        stats += [
            Statistic("input.brightness", "mean", "input", 0, 1, 1.0),
            Statistic("input.contrast", "mean", "input", 1, 2, 1.0),
            Statistic("input.sharpness", "mean", "input", 2, 3, 0.05),
        ]
        for index, colour in enumerate(("blue", "green", "red")):
            start = 3 + index * COLOUR_BINS
            stats.append(
                Statistic(f"input.colour.{colour}", "shares", "input", start, start + COLOUR_BINS, 0.02)
            )
        input_size = 3 + 3 * COLOUR_BINS
    elif mode == "window":
        per = 2 + BANDS
        for index, channel in enumerate(channels):
            base = index * per
            stats += [
                Statistic(f"input.{channel}.mean", "mean", "input", base, base + 1, 0.0),
                Statistic(f"input.{channel}.std", "mean", "input", base + 1, base + 2, 0.0),
                Statistic(f"input.{channel}.spectrum", "shares", "input", base + 2, base + per, 0.02),
            ]
        input_size = per * len(channels)
    else:
        stats += [
            Statistic("input.mean", "mean", "input", 0, 1, 0.0),
            Statistic("input.std", "mean", "input", 1, 2, 0.0),
        ]
        input_size = 2
    n = len(labels)
    if task == "classification":
        stats += [
            Statistic("output.label", "shares", "output", 0, n + 2, 0.02),
            Statistic("output.confidence", "mean", "output", n + 2, n + 3, 0.01),
            Statistic("output.low_confidence", "mean", "output", n + 3, n + 4, 0.02),
        ]
        output_size = n + 4
    elif task == "detection":
        stats += [
            Statistic("output.label", "shares", "output", 0, n + 1, 0.02),
            Statistic("output.count", "mean", "output", n + 1, n + 2, 0.1),
            Statistic("output.confidence", "mean", "output", n + 2, n + 3, 0.01),
        ]
        output_size = n + 3
    elif task == "anomaly":
        stats += [
            Statistic("output.score", "mean", "output", 0, 1, 0.0),
            Statistic("output.anomalous", "mean", "output", 1, 2, 0.02),
        ]
        output_size = 2
    elif task == "segmentation":
        stats += [
            Statistic("output.foreground", "mean", "output", 0, 1, 0.01),
            Statistic("output.regions", "mean", "output", 1, 2, 0.1),
            Statistic("output.confidence", "mean", "output", 2, 3, 0.01),
        ]
        output_size = 3
    elif task == "keypoints":
        stats += [
            Statistic("output.presence", "mean", "output", 0, 1, 0.01),
            Statistic("output.present", "mean", "output", 1, 2, 0.02),
            Statistic("output.spread", "mean", "output", 2, 3, 0.005),
        ]
        output_size = 3
    else:
        output_size = 0
    return FeatureSpec(mode, task, tuple(channels), tuple(labels), tuple(stats), input_size, output_size)


def _image_features(frame: Array) -> np.ndarray | None:
    if frame.dtype != np.uint8:
        return None
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim != 3 or frame.shape[2] < 3 or frame.shape[0] < 4 or frame.shape[1] < 4:
        return None
    height, width = frame.shape[:2]
    try:
        if max(height, width) > SIDE:
            scale = SIDE / max(height, width)
            size = (max(4, round(width * scale)), max(4, round(height * scale)))
            small = cv2.resize(frame[..., :3], size, interpolation=cv2.INTER_NEAREST)
        else:
            small = np.ascontiguousarray(frame[..., :3])
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))
        thumb = cv2.resize(small, THUMB, interpolation=cv2.INTER_AREA)
        mean, std = cv2.meanStdDev(cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY))
    except cv2.error:
        return None
    pixels: np.ndarray = np.asarray(thumb, np.uint8).reshape(-1, 3)
    bins = np.bincount(
        ((pixels >> 5) + np.array([0, COLOUR_BINS, 2 * COLOUR_BINS], np.uint8)).ravel(),
        minlength=3 * COLOUR_BINS,
    )
    out = np.empty(3 + 3 * COLOUR_BINS)
    out[0], out[1], out[2] = float(mean[0, 0]), float(std[0, 0]), math.log1p(float(lap_std[0, 0]))
    out[3:] = bins / float(THUMB[0] * THUMB[1])
    return out


def _window_features(window: np.ndarray) -> np.ndarray | None:
    if not np.all(np.isfinite(window)):
        return None
    mean = window.mean(axis=0)
    std = window.std(axis=0)
    power = np.square(np.abs(np.fft.rfft(window - mean, axis=0)))[1:]  # without the DC term
    edges = np.linspace(0, power.shape[0], BANDS + 1).round().astype(int)
    bands = np.stack([power[a:b].sum(axis=0) for a, b in itertools.pairwise(edges)])
    total = bands.sum(axis=0)
    shares = np.divide(bands, total, out=np.zeros_like(bands), where=total > 0)
    per = 2 + BANDS
    out = np.empty(per * window.shape[1])
    for index in range(window.shape[1]):
        out[index * per] = mean[index]
        out[index * per + 1] = std[index]
        out[index * per + 2 : (index + 1) * per] = shares[:, index]
    return out
