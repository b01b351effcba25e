"""Drift reference statistics (`reference.json`): the input and output distributions of a model's calibration set.

The drift monitor compares live data with these. Pure computation, no I/O. Image statistics are taken on a small
thumbnail of each frame (per BGR channel), so that the monitor can compute the same figures cheaply on the device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.inference.manifest import ImageInput, InputContract, WindowInput
from agent.inference.results import AnomalyResult, ClassificationResult, DetectionResult, RawResult, Result

THUMBNAIL = (32, 32)
BINS = 16


class Histogram(BaseModel):
    """Counts per bin; values outside the edges are counted in the first or last bin."""

    model_config = ConfigDict(extra="forbid")
    edges: list[float]
    counts: list[int]


class ChannelStats(BaseModel):
    """Summary statistics of one input channel."""

    model_config = ConfigDict(extra="forbid")
    name: str
    mean: float
    std: float
    min: float
    max: float
    histogram: Histogram


class OutputStats(BaseModel):
    """The distribution of decoded results on the calibration set."""

    model_config = ConfigDict(extra="forbid")
    task: str
    class_frequency: dict[str, float] = Field(
        default_factory=dict, description="Share of top-1 labels or detections."
    )
    score: Histogram | None = Field(None, description="Top-1 score, detection score or anomaly score.")
    score_quantiles: dict[str, float] = Field(default_factory=dict)
    count: Histogram | None = Field(None, description="Detections per input.")
    tensor_means: dict[str, float] = Field(default_factory=dict, description="raw: mean of each output.")


class DriftReference(BaseModel):
    """reference.json."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: int = Field(1, alias="schema")
    samples: int
    input_space: str = Field(description="What the input statistics are measured on.")
    input: list[ChannelStats]
    output: OutputStats
    features: dict[str, Any] | None = Field(
        None,
        description="Per-sample feature rows and calibrated thresholds for the drift monitor "
        "(`agent.monitor.reference.FeatureTable`); the inference core keeps them as they are.",
    )


def histogram(values: np.ndarray, edges: np.ndarray) -> Histogram:
    """A histogram with out-of-range values clipped into the end bins."""
    clipped = np.clip(values, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin edges spanning the 0.5..99.5 % range of the values (never zero-width)."""
    low, high = np.quantile(values, [0.005, 0.995]) if values.size else (0.0, 1.0)
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    return np.linspace(low, high, bins + 1)


def image_channels(frame: np.ndarray) -> np.ndarray:
    """The [pixels, 3] BGR values of a frame's thumbnail: what image statistics are measured on."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    thumb = cv2.resize(frame[..., :3], THUMBNAIL, interpolation=cv2.INTER_AREA)
    return thumb.reshape(-1, 3).astype(np.float32)


def _channel_stats(
    names: Sequence[str], values: np.ndarray, fixed_edges: np.ndarray | None
) -> list[ChannelStats]:
    stats = []
    for index, name in enumerate(names):
        column = values[:, index].astype(np.float64)
        edges = fixed_edges if fixed_edges is not None else quantile_edges(column)
        stats.append(
            ChannelStats(
                name=name,
                mean=float(column.mean()),
                std=float(column.std()),
                min=float(column.min()),
                max=float(column.max()),
                histogram=histogram(column, edges),
            )
        )
    return stats


def input_stats(contract: InputContract, samples: Sequence[np.ndarray]) -> tuple[str, list[ChannelStats]]:
    """Per-channel statistics of source inputs, and a description of what they are measured on."""
    if isinstance(contract, ImageInput):
        values = np.concatenate([image_channels(frame) for frame in samples])
        space = f"BGR pixel values of a {THUMBNAIL[0]}x{THUMBNAIL[1]} INTER_AREA thumbnail of each frame"
        return space, _channel_stats(("blue", "green", "red"), values, np.linspace(0, 256, BINS + 1))
    if isinstance(contract, WindowInput):
        values = np.concatenate([np.asarray(window, np.float32) for window in samples])
        return "sensor samples in their own units", _channel_stats(contract.channels, values, None)
    flat = np.concatenate([np.asarray(t, np.float32).reshape(-1, 1) for t in samples])
    return "all values of the input tensor", _channel_stats(("value",), flat, None)


def output_stats(task: str, results: Sequence[Result]) -> OutputStats:
    """The distribution of decoded results of a model of `task` (results of another type count as empty)."""
    # Branches on the manifest's task, not on the results: an empty calibration set still gets its task's stats.
    stats = OutputStats(task=task)
    if task == "classification":
        tops = [r.top for r in results if isinstance(r, ClassificationResult) and r.top is not None]
        counts = Counter(label.label for label in tops)
        stats.class_frequency = {k: v / max(len(results), 1) for k, v in sorted(counts.items())}
        stats.score = histogram(np.array([t.score for t in tops]), np.linspace(0, 1, 11))
    elif task == "detection":
        found = [r.detections if isinstance(r, DetectionResult) else () for r in results]
        detections = [d for per_input in found for d in per_input]
        counts = Counter(d.label for d in detections)
        stats.class_frequency = {k: v / max(len(detections), 1) for k, v in sorted(counts.items())}
        stats.score = histogram(np.array([d.score for d in detections]), np.linspace(0, 1, 11))
        per_input = np.array([len(f) for f in found])
        top = int(per_input.max()) if per_input.size else 0
        stats.count = histogram(per_input, np.arange(top + 2) - 0.5)
    elif task == "anomaly":
        scores = np.array([r.score for r in results if isinstance(r, AnomalyResult)])
        stats.score = histogram(scores, quantile_edges(scores))
        if scores.size:
            stats.score_quantiles = {f"p{q}": float(np.quantile(scores, q / 100)) for q in (50, 90, 99)}
    else:
        totals: dict[str, list[float]] = {}
        for result in results:
            for tensor in result.tensors if isinstance(result, RawResult) else ():
                totals.setdefault(tensor.name, []).append(tensor.mean)
        stats.tensor_means = {name: float(np.mean(values)) for name, values in totals.items()}
    return stats


def compute_reference(
    contract: InputContract, task: str, samples: Sequence[np.ndarray], results: Sequence[Result]
) -> DriftReference:
    """The drift reference of a calibration set: its source inputs and the model's results on them."""
    space, channels = input_stats(contract, samples)
    return DriftReference(
        samples=len(samples), input_space=space, input=channels, output=output_stats(task, results)
    )
