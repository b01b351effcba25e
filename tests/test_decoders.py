"""Decoders against known answers: classification top-k, YOLO rows with NMS, the SSD layout, anomaly scores."""

from __future__ import annotations

import numpy as np
import pytest

from agent.errors import ContractError
from agent.inference.decode import (
    AnomalyDecoder,
    ClassificationDecoder,
    DecodeContext,
    RawDecoder,
    SsdDecoder,
    YoloDecoder,
)
from agent.inference.manifest import AnomalyOutput, ClassificationOutput, DetectionOutput, ImageInput
from agent.inference.preprocess import FrameMap
from agent.inference.runtimes.base import TensorSpec

F32 = np.dtype(np.float32)
LABELS = ["cat", "dog", "bird"]
IMAGE = ImageInput(width=100, height=100)


def out(shape: tuple[int, ...], name: str = "out") -> TensorSpec:
    return TensorSpec(name, shape, F32)


def test_classification_returns_top_k_best_first_with_labels():
    decoder = ClassificationDecoder(ClassificationOutput(top_k=2), [out((1, 3))], LABELS)
    result = decoder([np.array([[0.1, 0.7, 0.2]], np.float32)], DecodeContext())
    assert [(lab.label, round(lab.score, 2)) for lab in result.labels] == [("dog", 0.7), ("bird", 0.2)]


def test_classification_softmax_and_min_score():
    decoder = ClassificationDecoder(
        ClassificationOutput(activation="softmax", min_score=0.5), [out((1, 3))], LABELS
    )
    result = decoder([np.array([[0.0, 5.0, 0.0]], np.float32)], DecodeContext())
    assert [lab.label for lab in result.labels] == ["dog"]


def test_label_count_that_differs_from_the_output_is_refused():
    with pytest.raises(ContractError, match="3 class scores but the labels file has 2"):
        ClassificationDecoder(ClassificationOutput(), [out((1, 3))], ["a", "b"])


def yolo_rows() -> np.ndarray:
    # rows: cx, cy, w, h, score(cat), score(dog), score(bird); normalised coordinates
    rows = np.zeros((6, 7), np.float32)
    rows[0] = [0.3, 0.3, 0.2, 0.2, 0.9, 0.1, 0.0]  # cat
    rows[1] = [0.31, 0.3, 0.2, 0.2, 0.8, 0.0, 0.0]  # same cat, lower score: suppressed
    rows[2] = [0.31, 0.3, 0.2, 0.2, 0.0, 0.7, 0.0]  # a dog at the same place: another class, kept
    rows[3] = [0.7, 0.7, 0.1, 0.2, 0.0, 0.0, 0.6]  # bird
    rows[4] = [0.5, 0.5, 0.1, 0.1, 0.3, 0.0, 0.0]  # below threshold
    return rows


def test_yolo_rows_keep_the_best_box_per_object_and_class():
    config = DetectionOutput(format="yolo", score_threshold=0.5, iou_threshold=0.5)
    decoder = YoloDecoder(config, [out((1, 6, 7))], LABELS, IMAGE)
    fmap = FrameMap(640, 0, 480, 0, 640, 480)
    result = decoder([yolo_rows()[None]], DecodeContext(frame_map=fmap))
    assert [(d.label, round(d.score, 2)) for d in result.detections] == [
        ("cat", 0.9),
        ("dog", 0.7),
        ("bird", 0.6),
    ]
    np.testing.assert_allclose(result.detections[0].box, (128, 96, 256, 192), atol=1e-3)
    np.testing.assert_allclose(result.detections[2].box_norm, (0.65, 0.6, 0.75, 0.8), atol=1e-6)


def test_yolo_transposed_output_is_detected_from_the_label_count():
    config = DetectionOutput(format="yolo", score_threshold=0.5)
    decoder = YoloDecoder(config, [out((1, 7, 6))], LABELS, IMAGE)
    assert decoder.transposed
    result = decoder([yolo_rows().T[None]], DecodeContext())
    assert len(result.detections) == 3


def test_yolo_pixel_coordinates_and_objectness():
    config = DetectionOutput(format="yolo", normalized=False, objectness=True, score_threshold=0.5)
    decoder = YoloDecoder(config, [out((1, 2, 8))], LABELS, IMAGE)
    rows = np.array([[50, 50, 20, 20, 0.9, 0.9, 0, 0], [20, 20, 10, 10, 0.4, 0.9, 0, 0]], np.float32)
    result = decoder([rows[None]], DecodeContext())
    assert len(result.detections) == 1  # 0.4 * 0.9 is below the threshold
    np.testing.assert_allclose(result.detections[0].box_norm, (0.4, 0.4, 0.6, 0.6), atol=1e-6)


def test_yolo_row_width_that_does_not_fit_the_labels_is_refused():
    with pytest.raises(ContractError, match="rows of 9 values"):
        YoloDecoder(DetectionOutput(format="yolo"), [out((1, 100, 9))], LABELS, IMAGE)


def test_ssd_layout_reads_count_swaps_yx_and_applies_threshold():
    specs = [out((1, 3, 4), "boxes"), out((1, 3), "classes"), out((1, 3), "scores"), out((1,), "count")]
    decoder = SsdDecoder(DetectionOutput(format="ssd", score_threshold=0.5), specs, LABELS)
    boxes = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1]]], np.float32)
    classes = np.array([[2, 0, 1]], np.float32)
    scores = np.array([[0.6, 0.95, 0.99]], np.float32)
    count = np.array([2], np.float32)  # the third row is padding
    result = decoder([boxes, classes, scores, count], DecodeContext())
    assert [(d.label, d.box_norm) for d in result.detections] == [
        ("cat", pytest.approx((0.5, 0.5, 0.9, 0.9))),
        ("bird", pytest.approx((0.2, 0.1, 0.4, 0.3))),
    ]


def test_ssd_outputs_are_found_by_name_in_any_order():
    specs = [
        out((1,), "num_detections"),
        out((1, 5), "detection_scores"),
        out((1, 5, 4), "detection_boxes"),
        out((1, 5), "detection_classes"),
    ]
    decoder = SsdDecoder(DetectionOutput(format="ssd"), specs, LABELS)
    assert decoder.order == {"boxes": 2, "classes": 3, "scores": 1, "count": 0}


def test_reconstruction_anomaly_score_is_the_mean_squared_error():
    decoder = AnomalyDecoder(
        AnomalyOutput(mode="reconstruction", threshold=0.5), [out((1, 4, 2))], out((1, 4, 2))
    )
    normalised = np.zeros((1, 4, 2), np.float32)
    recon = np.full((1, 4, 2), 1.0, np.float32)
    result = decoder([recon], DecodeContext(normalized_input=normalised))
    assert result.score == pytest.approx(1.0) and result.anomaly is True
    result = decoder([normalised], DecodeContext(normalized_input=normalised))
    assert result.score == 0.0 and result.anomaly is False


def test_reconstruction_output_shaped_unlike_the_input_is_refused():
    with pytest.raises(ContractError, match="shaped like the input"):
        AnomalyDecoder(AnomalyOutput(mode="reconstruction", threshold=1), [out((1, 3))], out((1, 4, 2)))


def test_raw_outputs_are_summarised_by_name():
    result = RawDecoder([out((1, 2), "a"), out((1, 100), "b")])(
        [np.array([[1.0, 3.0]], np.float32), np.zeros((1, 100), np.float32)], DecodeContext()
    )
    assert result.tensors[0].values == (1.0, 3.0) and result.tensors[0].mean == 2.0
    assert result.tensors[1].values is None and result.tensors[1].shape == (1, 100)
    assert result.to_dict()["task"] == "raw"
