"""Output decoding: dequantized model outputs become results (labels, boxes, anomaly scores, named tensors).

Decoders are pure: arrays in, result objects out; each decoder makes the one result type of its task
(`agent.inference.results`, re-exported here for the callers that import results from this module). Each checks at
construction that the model's outputs fit the manifest (count, shape, label count) so that a mismatch is refused when
the model loads, not on the first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from agent.errors import ContractError, InputError
from agent.inference.anchors import AnchorHead, generate_anchors
from agent.inference.dense import KeypointsDecoder, SegmentationDecoder
from agent.inference.manifest import (
    AnomalyOutput,
    ClassificationOutput,
    DetectionOutput,
    ImageInput,
    KeypointsOutput,
    Manifest,
    RawOutput,
    SegmentationOutput,
)
from agent.inference.preprocess import FrameMap
from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    Detection,
    DetectionResult,
    Keypoint,
    Label,
    RawResult,
    Result,
    TensorSummary,
)
from agent.inference.runtimes.base import TensorSpec
from agent.types import Array, FloatArray

__all__ = [
    "AnchorSsdDecoder",
    "AnomalyDecoder",
    "AnomalyResult",
    "ClassificationDecoder",
    "ClassificationResult",
    "DecodeContext",
    "Decoder",
    "Detection",
    "DetectionResult",
    "Label",
    "RawDecoder",
    "RawResult",
    "Result",
    "SsdDecoder",
    "TensorSummary",
    "YoloDecoder",
    "make_decoder",
]

Arrays = Sequence[Array]


@dataclass
class DecodeContext:
    """What a decoder may need beyond the outputs: where boxes map to, and the normalised input."""

    frame_map: FrameMap | None = None
    normalized_input: FloatArray | None = None


class Decoder(Protocol):
    """Turns dequantized outputs into a Result."""

    def __call__(self, outputs: Arrays, context: DecodeContext) -> Result:
        """Decodes one inference."""
        ...


def _label(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)


def _output(specs: Sequence[TensorSpec], index: int) -> TensorSpec:
    if index >= len(specs):
        raise ContractError(f"the manifest reads output {index}, but the model has {len(specs)} output(s)")
    return specs[index]


def _activate(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        shifted = np.exp(scores - scores.max())
        return shifted / shifted.sum()  # type: ignore[no-any-return]
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))  # type: ignore[no-any-return]
    return scores


class ClassificationDecoder:
    """Top-k labels of one score vector."""

    def __init__(
        self, config: ClassificationOutput, outputs: Sequence[TensorSpec], labels: Sequence[str]
    ) -> None:
        spec = _output(outputs, config.output_index)
        size = int(np.prod([d for d in spec.shape if d > 0]))
        if labels and size != len(labels):
            raise ContractError(
                f"output '{spec.name}' has {size} class scores but the labels file has {len(labels)}"
            )
        self.config, self.labels = config, list(labels)

    def __call__(self, outputs: Arrays, context: DecodeContext) -> ClassificationResult:
        """Top-k labels above min_score, best first."""
        scores = _activate(outputs[self.config.output_index].reshape(-1), self.config.activation)
        k = min(self.config.top_k, scores.size)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        labels = tuple(
            Label(int(i), _label(self.labels, int(i)), float(scores[i]))
            for i in top
            if scores[i] >= self.config.min_score
        )
        return ClassificationResult(labels)


def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, config: DetectionOutput) -> np.ndarray:
    """Indices kept by class-aware non-maximum suppression (OpenCV), best first."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(),
        scores.astype(float).tolist(),
        classes.astype(int).tolist(),
        config.score_threshold,
        config.iou_threshold,
    )
    kept = np.asarray(keep, dtype=np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")][: config.max_detections]


class YoloDecoder:
    """`N x (4 [+1] + classes)` rows (or the transpose): threshold, NMS, map boxes to the frame."""

    def __init__(
        self, config: DetectionOutput, outputs: Sequence[TensorSpec], labels: Sequence[str], image: ImageInput
    ) -> None:
        if len(outputs) != 1:
            raise ContractError(f"a yolo-format detector has one output, this model has {len(outputs)}")
        shape = outputs[0].shape
        dims = list(shape[-2:])
        if len(shape) < 2 or any(d not in (1, -1) for d in shape[:-2]) or min(dims) < 1:
            raise ContractError(
                f"a yolo-format output is N x (4+classes), got shape {list(outputs[0].shape)}"
            )
        extra = 5 if config.objectness else 4
        transposed = config.transposed
        if transposed is None and labels:
            transposed = dims[0] == extra + len(labels) and dims[1] != extra + len(labels)
        elif transposed is None:
            transposed = dims[0] < dims[1]
        width = dims[0] if transposed else dims[1]
        if width <= extra or (labels and width - extra != len(labels)):
            raise ContractError(
                f"the yolo output has rows of {width} values; expected {extra} + {len(labels) or 'classes'}"
            )
        self.config, self.labels, self.transposed, self.extra = config, list(labels), transposed, extra
        self.input_size = np.array([image.width, image.height, image.width, image.height], dtype=np.float32)

    def __call__(self, outputs: Arrays, context: DecodeContext) -> DetectionResult:
        """Detections above the score threshold after NMS, best first."""
        config = self.config
        rows: Array = outputs[0].reshape(outputs[0].shape[-2:])
        if self.transposed:
            rows = rows.T
        scores_all = _activate(rows[:, self.extra :], config.activation)
        if config.objectness:
            scores_all = scores_all * _activate(rows[:, 4:5], config.activation)
        classes = scores_all.argmax(axis=1)
        scores = scores_all[np.arange(rows.shape[0]), classes]
        chosen = scores >= config.score_threshold
        boxes, scores, classes = rows[chosen, :4].astype(np.float32), scores[chosen], classes[chosen]
        if config.box_format == "cxcywh":
            half = boxes[:, 2:4] / 2
            boxes = np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)
        if not config.normalized:
            boxes = boxes / self.input_size
        keep = _nms(boxes, scores, classes, config)
        return DetectionResult(_detections(boxes[keep], scores[keep], classes[keep], self.labels, context))


class SsdDecoder:
    """The TFLite SSD post-processing layout: boxes [1,K,4] (ymin, xmin, ymax, xmax), classes, scores, count."""

    def __init__(self, config: DetectionOutput, outputs: Sequence[TensorSpec], labels: Sequence[str]) -> None:
        if len(outputs) != 4:
            raise ContractError(
                f"an ssd-format detector has 4 outputs (boxes, classes, scores, count), got {len(outputs)}"
            )
        self.order = self._resolve(outputs)
        self.config, self.labels = config, list(labels)

    @staticmethod
    def _resolve(outputs: Sequence[TensorSpec]) -> dict[str, int]:
        names = [spec.name.lower() for spec in outputs]
        order: dict[str, int] = {}
        for role, stem in (("boxes", "box"), ("classes", "class"), ("scores", "score"), ("count", "num")):
            hits = [i for i, name in enumerate(names) if stem in name or role in name]
            if len(hits) == 1:
                order[role] = hits[0]
        if len(set(order.values())) != 4 or len(order) != 4:
            order = {
                "boxes": 0,
                "classes": 1,
                "scores": 2,
                "count": 3,
            }  # the TFLite post-processing op's order
        box_shape = outputs[order["boxes"]].shape
        if len(box_shape) < 2 or box_shape[-1] != 4:
            raise ContractError(f"ssd boxes output must be [1, K, 4], got {list(box_shape)}")
        return order

    def __call__(self, outputs: Arrays, context: DecodeContext) -> DetectionResult:
        """The model's own detections above the score threshold."""
        order, config = self.order, self.config
        boxes = outputs[order["boxes"]].reshape(-1, 4)
        classes = outputs[order["classes"]].reshape(-1)
        scores = outputs[order["scores"]].reshape(-1)
        count = min(round(float(outputs[order["count"]].reshape(-1)[0])), boxes.shape[0], scores.shape[0])
        boxes, classes, scores = boxes[:count], classes[:count], scores[:count]
        chosen = np.flatnonzero(scores >= config.score_threshold)
        chosen = chosen[np.argsort(-scores[chosen], kind="stable")][: config.max_detections]
        xyxy = boxes[chosen][:, [1, 0, 3, 2]]
        class_ids = np.rint(classes[chosen]).astype(np.int64) + config.class_offset
        return DetectionResult(_detections(xyxy, scores[chosen], class_ids, self.labels, context))


class AnchorSsdDecoder:
    """An SSD head without post-processing: regressors and scores over anchors generated from the manifest's options,
    centre-size box coding with keypoints, sigmoid scores, NMS or weighted NMS (`agent.inference.anchors`)."""

    def __init__(
        self, config: DetectionOutput, outputs: Sequence[TensorSpec], labels: Sequence[str], image: ImageInput
    ) -> None:
        assert config.anchors is not None  # the manifest requires them for this format
        if len(outputs) != 2:
            raise ContractError(
                f"an anchors-format detector has 2 outputs (regressors, scores), this model has {len(outputs)}"
            )
        shapes = [tuple(spec.shape) for spec in outputs]
        if any(len(shape) < 2 or min(shape[-2:]) < 1 for shape in shapes):
            raise ContractError(f"anchors-format outputs are [1, N, values], got {[list(s) for s in shapes]}")
        wanted = 4 + 2 * len(config.keypoints)
        # the regressors are the output with the wider rows (4 + 2 x keypoints >= 4 values), the scores the other
        self.box_index = 0 if shapes[0][-1] >= shapes[1][-1] else 1
        self.score_index = 1 - self.box_index
        box_shape, score_shape = shapes[self.box_index], shapes[self.score_index]
        if box_shape[-1] < wanted:
            raise ContractError(
                f"the regressors '{outputs[self.box_index].name}' have rows of {box_shape[-1]} values; "
                f"4 box values and {len(config.keypoints)} keypoints need {wanted}"
            )
        self.anchors = generate_anchors(config.anchors, image.width, image.height)
        count = self.anchors.shape[0]
        if box_shape[-2] != count or score_shape[-2] != count:
            raise ContractError(
                f"the anchor options make {count} anchors; the model's outputs have {box_shape[-2]} and "
                f"{score_shape[-2]} rows"
            )
        if labels and score_shape[-1] != len(labels):
            raise ContractError(f"the scores have {score_shape[-1]} classes, the labels file {len(labels)}")
        scale = config.box_scale or (
            float(image.width),
            float(image.height),
            float(image.width),
            float(image.height),
        )
        self.head = AnchorHead(config, self.anchors, len(config.keypoints), scale)
        self.config, self.labels = config, list(labels)

    def __call__(self, outputs: Arrays, context: DecodeContext) -> DetectionResult:
        """Detections above the score threshold, merged or suppressed, best first, with their keypoints."""
        regressors = outputs[self.box_index].reshape(self.anchors.shape[0], -1)
        scores = outputs[self.score_index].reshape(self.anchors.shape[0], -1)
        decoded = self.head(regressors, scores)
        names = self.config.keypoints
        points: list[tuple[Keypoint, ...]] = []
        for row in decoded.keypoints.tolist():
            marks = []
            for name, (x, y) in zip(names, row, strict=True):
                fx, fy = (x, y)
                if context.frame_map is not None:
                    fx, fy, _, _ = context.frame_map.to_frame((x, y, x, y))
                marks.append(Keypoint(name, fx, fy, x, y))
            points.append(tuple(marks))
        return DetectionResult(
            _detections(decoded.boxes, decoded.scores, decoded.classes, self.labels, context, points)
        )


def _detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    labels: Sequence[str],
    context: DecodeContext,
    keypoints: Sequence[tuple[Keypoint, ...]] | None = None,
) -> tuple[Detection, ...]:
    found = []
    for number, (box, score, cls) in enumerate(
        zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True)
    ):
        norm = (box[0], box[1], box[2], box[3])
        frame_box = context.frame_map.to_frame(norm) if context.frame_map else norm
        marks = keypoints[number] if keypoints is not None else ()
        found.append(Detection(int(cls), _label(labels, int(cls)), float(score), frame_box, norm, marks))
    return tuple(found)


class AnomalyDecoder:
    """An anomaly score from the model's score output, or an autoencoder's reconstruction error."""

    def __init__(self, config: AnomalyOutput, outputs: Sequence[TensorSpec], input_spec: TensorSpec) -> None:
        spec = _output(outputs, config.output_index)
        if config.mode == "reconstruction":
            known_out = [d for d in spec.shape if d > 0]
            known_in = [d for d in input_spec.shape if d > 0]
            if np.prod(known_out) != np.prod(known_in):
                raise ContractError(
                    f"reconstruction mode needs an output shaped like the input: output '{spec.name}' is "
                    f"{list(spec.shape)}, input is {list(input_spec.shape)}"
                )
        self.config = config

    def __call__(self, outputs: Arrays, context: DecodeContext) -> AnomalyResult:
        """The score, the threshold and whether the score is above it."""
        config = self.config
        out = outputs[config.output_index]
        if config.mode == "score":
            score = float(out.reshape(-1)[0])
        else:
            reference = context.normalized_input
            if reference is None or reference.size != out.size:
                raise InputError("reconstruction scoring needs the normalised input of the same size")
            score = float(np.mean(np.square(out.reshape(reference.shape) - reference)))
        return AnomalyResult(score, config.threshold, score > config.threshold)


class RawDecoder:
    """Every output as a named tensor with its shape and summary (values too when there are at most 16)."""

    def __init__(self, outputs: Sequence[TensorSpec]) -> None:
        self.names = [spec.name for spec in outputs]

    def __call__(self, outputs: Arrays, context: DecodeContext) -> RawResult:
        """Summaries of all outputs."""
        tensors = []
        for name, array in zip(self.names, outputs, strict=True):
            flat = array.reshape(-1).astype(np.float64)
            values = tuple(flat.tolist()) if flat.size <= 16 else None
            low, high, mean = (
                (float(flat.min()), float(flat.max()), float(flat.mean())) if flat.size else (0, 0, 0)
            )
            tensors.append(TensorSummary(name, tuple(array.shape), low, high, mean, values))
        return RawResult(tuple(tensors))


def make_decoder(
    manifest: Manifest, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], labels: Sequence[str]
) -> Decoder:
    """The decoder for a manifest's task, checked against the model's outputs."""
    config = manifest.output
    if isinstance(config, ClassificationOutput):
        return ClassificationDecoder(config, outputs, labels)
    if isinstance(config, DetectionOutput):
        if not isinstance(manifest.input, ImageInput):
            raise ContractError("a detection model needs an image input")
        if config.format == "yolo":
            return YoloDecoder(config, outputs, labels, manifest.input)
        if config.format == "anchors":
            return AnchorSsdDecoder(config, outputs, labels, manifest.input)
        return SsdDecoder(config, outputs, labels)
    if isinstance(config, AnomalyOutput):
        return AnomalyDecoder(config, outputs, inputs[0])
    if isinstance(config, SegmentationOutput | KeypointsOutput):
        if not isinstance(manifest.input, ImageInput):
            raise ContractError(f"a {manifest.task} model needs an image input")
        dense = (
            SegmentationDecoder(config, outputs, labels)
            if isinstance(config, SegmentationOutput)
            else KeypointsDecoder(config, outputs, manifest.input)
        )
        return lambda arrays, context: dense(arrays, context.frame_map)
    assert isinstance(config, RawOutput)
    return RawDecoder(outputs)
