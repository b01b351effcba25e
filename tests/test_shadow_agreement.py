"""The shadow's agreement by task (agent/pipeline/agreement.py): top-1 label, detections matched one to one by
label and box IoU, anomaly verdict; and the running correlation of the two models' top scores."""

from __future__ import annotations

import pytest

from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    Detection,
    DetectionResult,
    Label,
)
from agent.pipeline.agreement import Correlation, agrees, iou, mean_iou
from agent.pipeline.shadow import ShadowPair, ShadowStats


def box(label: str, x: float, y: float, size: float = 0.2, score: float = 0.9) -> Detection:
    norm = (x, y, x + size, y + size)
    return Detection(index=0, label=label, score=score, box=tuple(v * 100 for v in norm), box_norm=norm)  # type: ignore[arg-type]


def dets(*found: Detection) -> DetectionResult:
    return DetectionResult(detections=found)


def cls(label: str, score: float = 0.9) -> ClassificationResult:
    return ClassificationResult(labels=(Label(index=0, label=label, score=score),))


def test_iou_of_boxes_that_overlap_touch_or_coincide() -> None:
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0
    assert iou((0, 0, 2, 1), (1, 0, 3, 1)) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("active", "shadow", "expected"),
    [
        (dets(box("3", 0.1, 0.1)), dets(box("3", 0.11, 0.1)), True),  # the box moved a little
        (dets(box("3", 0.1, 0.1)), dets(box("3", 0.6, 0.6)), False),  # the same label on another object
        (dets(box("3", 0.1, 0.1)), dets(box("5", 0.1, 0.1)), False),
        (dets(box("3", 0.1, 0.1), box("3", 0.6, 0.6)), dets(box("3", 0.6, 0.6), box("3", 0.1, 0.1)), True),
        (dets(box("3", 0.1, 0.1)), dets(box("3", 0.1, 0.1), box("7", 0.5, 0.5)), False),  # an extra object
        (dets(), dets(), True),
        (cls("cat"), cls("cat", 0.4), True),
        (cls("cat"), cls("dog"), False),
        (cls("cat"), dets(box("cat", 0.1, 0.1)), False),  # two tasks never agree
        (
            AnomalyResult(score=0.9, threshold=0.5, anomaly=True),
            AnomalyResult(score=0.7, threshold=0.5, anomaly=True),
            True,
        ),
        (
            AnomalyResult(score=0.9, threshold=0.5, anomaly=True),
            AnomalyResult(score=0.2, threshold=0.5, anomaly=False),
            False,
        ),
        (cls("cat"), None, None),
    ],
)
def test_two_answers_agree_by_the_rules_of_their_task(active, shadow, expected) -> None:
    assert agrees(active, shadow) is expected


def test_the_mean_iou_is_over_the_matched_detections_only() -> None:
    assert mean_iou(dets(box("3", 0.1, 0.1)), dets(box("3", 0.1, 0.1))) == 1.0
    assert mean_iou(dets(box("3", 0.1, 0.1)), dets(box("3", 0.7, 0.7))) is None
    assert mean_iou(cls("cat"), cls("cat")) is None


def test_score_correlation_follows_the_two_series_and_needs_three_pairs() -> None:
    same, opposite = Correlation(), Correlation()
    for x in (0.2, 0.5, 0.9, 0.4):
        same.add(x, 0.8 * x + 0.1)
        opposite.add(x, 1 - x)
    assert same.value() == pytest.approx(1.0) and opposite.value() == pytest.approx(-1.0)
    few = Correlation()
    few.add(0.1, 0.2)
    few.add(0.3, 0.4)
    assert few.value() is None


def test_shadow_stats_report_agreement_score_correlation_and_mean_iou() -> None:
    stats = ShadowStats()
    for n, score in enumerate((0.5, 0.6, 0.7, 0.8)):
        active = dets(box("3", 0.1, 0.1, score=score))
        shadow = dets(box("3", 0.1 if n else 0.8, 0.1, score=score - 0.05))
        stats.add(ShadowPair(seq=n, active=active, shadow=shadow, shadow_latency_s=0.01))
    figures = stats.to_dict()
    assert figures["compared"] == 4 and figures["agreement"] == 0.75
    assert figures["score_correlation"] == pytest.approx(1.0)
    assert figures["mean_iou"] == 1.0
    assert figures["mean_score_delta"] == pytest.approx(-0.05)
