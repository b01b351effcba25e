"""Metrics measured at build time: classification agreement, detection P/R/mAP, anomaly ROC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes ``[n, 4]`` normalised x1, y1, x2, y2, scores ``[n]``, classes ``[n]``."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of class scores ``[N, K]`` against int labels."""
    return float(np.mean(probs.argmax(axis=1) == labels))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of samples where two score arrays ``[N, K]`` pick the same top-1 class."""
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def decode_yolo(
    rows: np.ndarray, score_threshold: float, iou_threshold: float, max_detections: int
) -> Detections:
    """Decode one image's ``[cells, 4 + classes]`` cxcywh rows: best class per cell, score threshold,
    class-agnostic greedy NMS, at most ``max_detections`` boxes."""
    scores = rows[:, 4:].max(axis=1)
    classes = rows[:, 4:].argmax(axis=1)
    keep = np.flatnonzero(scores >= score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    cx, cy, w, h = rows[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    chosen: list[int] = []
    for i in range(len(keep)):
        if len(chosen) == max_detections:
            break
        if not chosen or iou(boxes[i : i + 1], boxes[chosen]).max() <= iou_threshold:
            chosen.append(i)
    return Detections(boxes[chosen], scores[keep][chosen], classes[keep][chosen])


def decode_ssd(
    boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count: float, score_threshold: float
) -> Detections:
    """Read one image's TFLite-SSD style outputs (ymin, xmin, ymax, xmax boxes) above a score threshold."""
    n = int(count)
    keep = scores[:n] >= score_threshold
    yxyx = boxes[:n][keep]
    return Detections(yxyx[:, [1, 0, 3, 2]], scores[:n][keep], classes[:n][keep].astype(np.int64))


def _match(det: Detections, gt_boxes: np.ndarray, gt_classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy (by score) matching; returns a true-positive flag per detection."""
    order = np.argsort(-det.scores, kind="stable")
    used = np.zeros(len(gt_boxes), bool)
    hits = np.zeros(len(det.scores), bool)
    overlaps = (
        iou(det.boxes, gt_boxes) if len(gt_boxes) and len(det.scores) else np.zeros((len(det.scores), 0))
    )
    for i in order:
        candidates = (~used) & (gt_classes == det.classes[i]) & (overlaps[i] >= iou_threshold)
        if candidates.any():
            j = int(np.argmax(np.where(candidates, overlaps[i], -1.0)))
            used[j] = hits[i] = True
    return hits


def detection_scores(
    dets: list[Detections],
    gt_boxes: list[np.ndarray],
    gt_classes: list[np.ndarray],
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Precision / recall at a score threshold, plus mAP (all-point interpolated AP averaged over
    the classes present) over all the given detections, at ``iou_threshold``."""
    flags, scores, classes = [], [], []
    for det, boxes, cls in zip(dets, gt_boxes, gt_classes, strict=True):
        flags.append(_match(det, boxes, cls, iou_threshold))
        scores.append(det.scores)
        classes.append(det.classes)
    hit, score, label = np.concatenate(flags), np.concatenate(scores), np.concatenate(classes)
    all_gt = np.concatenate(gt_classes)
    above = score >= score_threshold
    tp = int(np.sum(hit & above))
    aps = []
    for c in np.unique(all_gt):
        mine = np.flatnonzero(label == c)
        mine = mine[np.argsort(-score[mine], kind="stable")]
        tps = np.cumsum(hit[mine])
        recall = tps / np.sum(all_gt == c)
        precision = tps / np.arange(1, len(mine) + 1)
        envelope = np.maximum.accumulate(np.concatenate([precision, [0.0]])[::-1])[::-1]
        aps.append(float(np.sum(np.diff(np.concatenate([[0.0], recall])) * envelope[:-1])))
    return {
        "precision": round(tp / max(int(above.sum()), 1), 4),
        "recall": round(tp / len(all_gt), 4),
        "map50": round(float(np.mean(aps)), 4),
        "true_positives": tp,
        "false_positives": int(above.sum()) - tp,
        "objects": len(all_gt),
    }


def anomaly_scores(inputs: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """Per-window mean squared error between normalised inputs and their reconstructions."""
    return np.asarray(np.mean((inputs - reconstructions) ** 2, axis=tuple(range(1, inputs.ndim))))


def anomaly_report(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC and detection / false-positive rates of anomaly scores at a threshold (label 1 = fault)."""
    flagged = scores > threshold
    return {
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4),
        "detection_rate": round(float(flagged[labels == 1].mean()), 4),
        "false_positive_rate": round(float(flagged[labels == 0].mean()), 4),
    }
