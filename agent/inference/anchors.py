"""Anchor-based SSD heads without a post-processing op (BlazeFace, BlazePalm and the like): the anchors are generated
from the usual SSD anchor options, each anchor's regressor row is decoded with centre-size box coding (and optional
keypoints), scores go through a clipped sigmoid, and overlapping boxes are merged by weighted NMS (or suppressed by
plain NMS).

Pure numpy, vectorised: the anchors are built once per model; a call decodes all anchors at once and runs NMS only
on those above the score threshold. The generation follows the SSD anchor scheme as MediaPipe's
`SsdAnchorsCalculator` implements it, the decoding its `TensorsToDetectionsCalculator`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.inference.manifest import AnchorOptions, DetectionOutput
from agent.types import Array


def _scale(low: float, high: float, index: int, count: int) -> float:
    return low if count == 1 else low + (high - low) * index / (count - 1)


def generate_anchors(options: AnchorOptions, input_width: int, input_height: int) -> Array:
    """`[N, 4]` anchors (x_centre, y_centre, width, height), normalised to the input, in the model's order."""
    width = options.input_width or input_width
    height = options.input_height or input_height
    strides = options.strides
    layers = len(strides)
    rows: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < layers and strides[last] == strides[layer]:
            scale = _scale(options.min_scale, options.max_scale, last, layers)
            if last == 0 and options.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in options.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if options.interpolated_scale_aspect_ratio > 0:
                    following = (
                        1.0
                        if last == layers - 1
                        else _scale(options.min_scale, options.max_scale, last + 1, layers)
                    )
                    scales.append(math.sqrt(scale * following))
                    ratios.append(options.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]
        stride = strides[layer]
        grid_h, grid_w = math.ceil(height / stride), math.ceil(width / stride)
        for y in range(grid_h):
            for x in range(grid_w):
                cx = (x + options.offset_x) / grid_w
                cy = (y + options.offset_y) / grid_h
                for anchor_w, anchor_h in sizes:
                    rows.append(
                        (cx, cy, 1.0, 1.0) if options.fixed_anchor_size else (cx, cy, anchor_w, anchor_h)
                    )
        layer = last
    return np.asarray(rows, dtype=np.float32).reshape(-1, 4)


@dataclass(frozen=True)
class AnchorDecoded:
    """The kept detections of one call: xyxy boxes and keypoints normalised to the input, scores, classes."""

    boxes: Array  # [M, 4] x1, y1, x2, y2
    keypoints: Array  # [M, K, 2] x, y
    scores: Array  # [M]
    classes: Array  # [M]


class AnchorHead:
    """Decodes one anchor head: regressors `[N, 4 + 2K]` and class scores `[N, C]` against N anchors."""

    def __init__(
        self,
        config: DetectionOutput,
        anchors: Array,
        keypoints: int,
        scale: tuple[float, float, float, float],
    ) -> None:
        self.config = config
        self.anchors = anchors
        self.keypoints = keypoints
        self._scale = np.array(scale, dtype=np.float32)

    def boxes(self, regressors: Array, anchors: Array) -> tuple[Array, Array]:
        """The (x1, y1, x2, y2) boxes and [K, 2] keypoints of these rows of these anchors, normalised to the input."""
        config = self.config
        raw = regressors.astype(np.float32, copy=False)
        coded = raw[:, :4] if config.box_order == "xywh" else raw[:, [1, 0, 3, 2]]
        sx, sy, sw, sh = self._scale
        cx = coded[:, 0] / sx * anchors[:, 2] + anchors[:, 0]
        cy = coded[:, 1] / sy * anchors[:, 3] + anchors[:, 1]
        if config.exponential_box_size:
            w = np.exp(coded[:, 2] / sw) * anchors[:, 2]
            h = np.exp(coded[:, 3] / sh) * anchors[:, 3]
        else:
            w = coded[:, 2] / sw * anchors[:, 2]
            h = coded[:, 3] / sh * anchors[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        points = raw[:, 4 : 4 + 2 * self.keypoints].reshape(-1, self.keypoints, 2)
        if config.box_order != "xywh":
            points = points[:, :, ::-1]
        kx = points[:, :, 0] / sx * anchors[:, 2:3] + anchors[:, 0:1]
        ky = points[:, :, 1] / sy * anchors[:, 3:4] + anchors[:, 1:2]
        return boxes, np.stack([kx, ky], axis=2)

    def __call__(self, regressors: Array, scores: Array) -> AnchorDecoded:
        """The detections above the score threshold after (weighted) NMS, best first."""
        config = self.config
        logits = scores.astype(np.float32, copy=False)
        if config.score_clip is not None:
            logits = np.clip(logits, -config.score_clip, config.score_clip)
        # the sigmoid as tanh: no overflow for any logit
        probs = 0.5 * (1.0 + np.tanh(0.5 * logits)) if config.activation == "sigmoid" else logits
        classes = probs.argmax(axis=1)
        best = probs[np.arange(probs.shape[0]), classes]
        chosen = np.flatnonzero(best >= config.score_threshold)
        if chosen.size == 0:
            return AnchorDecoded(
                np.empty((0, 4), np.float32),
                np.empty((0, self.keypoints, 2), np.float32),
                np.empty(0),
                np.empty(0),
            )
        boxes, points = self.boxes(regressors[chosen], self.anchors[chosen])
        return suppress(boxes, points, best[chosen], classes[chosen], config)


def iou_matrix(a: Array, b: Array) -> Array:
    """Pairwise IoU of two sets of xyxy boxes."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    result: Array = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return result


def suppress(
    boxes: Array, points: Array, scores: Array, classes: Array, config: DetectionOutput
) -> AnchorDecoded:
    """Class-aware NMS, best first: `weighted` merges each cluster (IoU > threshold with its best box) into the
    score-weighted mean of its boxes and keypoints, keeping the best score; `hard` keeps the best box alone."""
    order = np.argsort(-scores, kind="stable")
    remaining = list(order)
    out_boxes: list[Array] = []
    out_points: list[Array] = []
    out_scores: list[float] = []
    out_classes: list[int] = []
    overlaps = iou_matrix(boxes, boxes)
    while remaining and len(out_scores) < config.max_detections:
        top = remaining[0]
        cluster = [
            i for i in remaining if classes[i] == classes[top] and overlaps[top, i] > config.iou_threshold
        ]
        cluster = cluster or [top]
        if config.nms == "weighted":
            weights = scores[cluster][:, None]
            total = float(weights.sum())
            out_boxes.append((boxes[cluster] * weights).sum(axis=0) / total)
            out_points.append((points[cluster] * weights[:, :, None]).sum(axis=0) / total)
        else:
            out_boxes.append(boxes[top])
            out_points.append(points[top])
        out_scores.append(float(scores[top]))
        out_classes.append(int(classes[top]))
        gone = set(cluster) | {top}
        remaining = [i for i in remaining if i not in gone]
    keypoints = points.shape[1]
    return AnchorDecoded(
        np.asarray(out_boxes, np.float32).reshape(-1, 4),
        np.asarray(out_points, np.float32).reshape(-1, keypoints, 2),
        np.asarray(out_scores, np.float32),
        np.asarray(out_classes, np.int64),
    )
