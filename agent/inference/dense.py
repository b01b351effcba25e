"""Decoders of dense and landmark outputs: segmentation maps (class shares and connected regions) and keypoints.

Pure: arrays in, results out; each checks the model's outputs against the manifest at construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from agent.errors import ContractError
from agent.inference.manifest import ImageInput, KeypointsOutput, SegmentationOutput
from agent.inference.preprocess import FrameMap
from agent.inference.results import ClassArea, Keypoint, KeypointsResult, Region, SegmentationResult
from agent.inference.runtimes.base import TensorSpec
from agent.types import Array


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def _softmax(scores: Array, axis: int) -> Array:
    shifted = np.exp(scores - scores.max(axis=axis, keepdims=True))
    result: Array = shifted / shifted.sum(axis=axis, keepdims=True)
    return result


class SegmentationDecoder:
    """`[1, H, W, C]` (or `[1, C, H, W]`, or `[1, H, W]`) scores: the share of each class, and the boxes of the
    connected regions of every class but the background, largest first."""

    def __init__(
        self, config: SegmentationOutput, outputs: Sequence[TensorSpec], labels: Sequence[str]
    ) -> None:
        if config.output_index >= len(outputs):
            raise ContractError(
                f"the manifest reads output {config.output_index}, but the model has {len(outputs)} output(s)"
            )
        shape = [d for d in outputs[config.output_index].shape]
        while len(shape) > 3 and shape[0] in (1, -1):
            shape = shape[1:]
        if len(shape) == 2:
            shape = [*shape, 1]
        if len(shape) != 3 or min(shape) < 1:
            raise ContractError(
                f"a segmentation output is [1, H, W, C] or [1, C, H, W], got {list(outputs[config.output_index].shape)}"
            )
        nchw = config.layout == "NCHW" or (config.layout == "auto" and shape[0] < shape[2] and shape[0] <= 64)
        self.classes = shape[0] if nchw else shape[2]
        self.height, self.width = (shape[1], shape[2]) if nchw else (shape[0], shape[1])
        self.nchw = nchw
        if labels and len(labels) != max(self.classes, 2 if self.classes == 1 else 0):
            wanted = "2 (background, foreground)" if self.classes == 1 else str(self.classes)
            raise ContractError(
                f"the map has {self.classes} class channel(s): the labels file needs {wanted}"
            )
        self.labels = list(labels) or (["background", "foreground"] if self.classes == 1 else [])
        self.config = config

    def maps(self, output: Array) -> tuple[Array, Array]:
        """The class index of every pixel [H, W] and its confidence [H, W]."""
        config = self.config
        values = output.reshape(
            (self.classes, self.height, self.width) if self.nchw else (self.height, self.width, self.classes)
        ).astype(np.float32, copy=False)
        if self.nchw:
            values = np.moveaxis(values, 0, 2)
        if self.classes == 1:
            probs = values[:, :, 0]
            if config.activation == "sigmoid":
                probs = 0.5 * (1.0 + np.tanh(0.5 * probs))
            classes = (probs >= config.threshold).astype(np.int32)
            confidence = np.where(classes == 1, probs, 1.0 - probs)
            return classes, confidence
        if config.activation == "softmax":
            values = _softmax(values, 2)
        elif config.activation == "sigmoid":
            values = 0.5 * (1.0 + np.tanh(0.5 * values))
        classes = values.argmax(axis=2).astype(np.int32)
        confidence = np.take_along_axis(values, classes[:, :, None], axis=2)[:, :, 0]
        return classes, confidence

    def __call__(self, outputs: Sequence[Array], frame_map: FrameMap | None) -> SegmentationResult:
        """Class shares and regions of one map."""
        config = self.config
        classes, confidence = self.maps(outputs[config.output_index])
        pixels = float(classes.size)
        counts = np.bincount(classes.reshape(-1), minlength=max(self.classes, 2))
        names = self.labels
        areas = tuple(
            ClassArea(index, _label(names, index), float(count) / pixels)
            for index, count in enumerate(counts.tolist())
            if count
        )
        regions: list[Region] = []
        for index in range(len(counts)):
            if index == config.background or not counts[index]:
                continue
            mask = (classes == index).astype(np.uint8)
            found, labelled, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            for component in range(1, found):
                x, y, w, h, area = (int(v) for v in stats[component])
                share = area / pixels
                if share < config.min_area:
                    continue
                score = float(confidence[labelled == component].mean())
                norm = (x / self.width, y / self.height, (x + w) / self.width, (y + h) / self.height)
                box = frame_map.to_frame(norm) if frame_map is not None else norm
                regions.append(Region(index, _label(names, index), share, score, box, norm))
        regions.sort(key=lambda r: -r.share)
        return SegmentationResult(areas, tuple(regions[: config.max_regions]))


class KeypointsDecoder:
    """Named landmarks from a coordinates output, present or not by a presence output."""

    def __init__(self, config: KeypointsOutput, outputs: Sequence[TensorSpec], image: ImageInput) -> None:
        for what, index in (("coordinates", config.output_index), ("presence", config.presence_index)):
            if index is not None and index >= len(outputs):
                raise ContractError(f"the {what} are read from output {index}; the model has {len(outputs)}")
        size = int(np.prod([d for d in outputs[config.output_index].shape if d > 0]))
        if size % config.values_per_point:
            raise ContractError(
                f"output '{outputs[config.output_index].name}' has {size} values, not a multiple of "
                f"{config.values_per_point} per point"
            )
        points = size // config.values_per_point
        if config.names and len(config.names) > points:
            raise ContractError(f"{len(config.names)} keypoint names, the model gives {points} points")
        self.names = list(config.names) or [f"kp{i}" for i in range(points)]
        self.config = config
        self.scale = (
            (1.0, 1.0) if config.coordinates == "normalized" else (1.0 / image.width, 1.0 / image.height)
        )

    def __call__(self, outputs: Sequence[Array], frame_map: FrameMap | None) -> KeypointsResult:
        """The landmarks in frame pixels and normalised, and the presence."""
        config = self.config
        values = outputs[config.output_index].reshape(-1, config.values_per_point)[: len(self.names)]
        presence: float | None = None
        present = True
        if config.presence_index is not None:
            raw = float(outputs[config.presence_index].reshape(-1)[0])
            presence = (
                0.5 * (1.0 + float(np.tanh(0.5 * raw))) if config.presence_activation == "sigmoid" else raw
            )
            present = presence >= config.presence_threshold
        sx, sy = self.scale
        marks = []
        for name, (x, y) in zip(self.names, values[:, :2].astype(np.float64).tolist(), strict=True):
            nx, ny = x * sx, y * sy
            fx, fy = (nx, ny)
            if frame_map is not None:
                fx, fy, _, _ = frame_map.to_frame((nx, ny, nx, ny))
            marks.append(Keypoint(name, fx, fy, nx, ny))
        return KeypointsResult(tuple(marks), presence, present)
