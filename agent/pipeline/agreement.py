"""Whether two models gave the same answer on one item, by task (pure): the shadow's agreement.

- classification: the same top-1 label;
- detection: the detections match one to one, each pair of the same label with box IoU >= `IOU_MATCH` (greedy, best
  IoU first, on the boxes normalised to the model input), so a box that moved a few pixels agrees and one that found
  another object does not; no detection on either side agrees;
- anomaly: the same verdict;
- anything else: the same change key; results of two different tasks never agree.
None when either side gives nothing to compare (a candidate that failed, a result with no key).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from agent.inference import Result
from agent.inference.results import Detection, DetectionResult

IOU_MATCH = 0.5


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when either is empty."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    mine: Sequence[Detection], theirs: Sequence[Detection], threshold: float = IOU_MATCH
) -> list[float]:
    """The IoUs of the one-to-one matches (same label, IoU >= threshold), greedy by best IoU."""
    pairs = sorted(
        (
            (iou(a.box_norm, b.box_norm), i, j)
            for i, a in enumerate(mine)
            for j, b in enumerate(theirs)
            if a.label == b.label
        ),
        reverse=True,
    )
    used_mine: set[int] = set()
    used_theirs: set[int] = set()
    found: list[float] = []
    for overlap, i, j in pairs:
        if overlap < threshold:
            break
        if i in used_mine or j in used_theirs:
            continue
        used_mine.add(i)
        used_theirs.add(j)
        found.append(overlap)
    return found


def agrees(active: Result, shadow: Result | None) -> bool | None:
    """Whether the candidate's answer is the active model's (see the module's rules)."""
    if shadow is None:
        return None
    if isinstance(active, DetectionResult) and isinstance(shadow, DetectionResult):
        if len(active.detections) != len(shadow.detections):
            return False
        return len(match(active.detections, shadow.detections)) == len(active.detections)
    if active.task != shadow.task:
        return False
    mine, theirs = active.change_key(), shadow.change_key()
    if mine is None or theirs is None:
        return None
    return bool(mine == theirs)


def mean_iou(active: Result, shadow: Result | None) -> float | None:
    """The mean IoU of the matched detections (None: not detection, or nothing matched)."""
    if not (isinstance(active, DetectionResult) and isinstance(shadow, DetectionResult)):
        return None
    found = match(active.detections, shadow.detections)
    return sum(found) / len(found) if found else None


class Correlation:
    """Running Pearson correlation of two series (the two models' top scores), Welford's update."""

    def __init__(self) -> None:
        self.n = 0
        self._mean_x = self._mean_y = self._cxx = self._cyy = self._cxy = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        dx = x - self._mean_x
        self._mean_x += dx / self.n
        dy = y - self._mean_y
        self._mean_y += dy / self.n
        self._cxx += dx * (x - self._mean_x)
        self._cyy += dy * (y - self._mean_y)
        self._cxy += dx * (y - self._mean_y)

    def value(self) -> float | None:
        """The correlation, None with fewer than 3 pairs or a series that never varies."""
        if self.n < 3 or self._cxx <= 0 or self._cyy <= 0:
            return None
        return max(-1.0, min(1.0, self._cxy / math.sqrt(self._cxx * self._cyy)))


__all__ = ["IOU_MATCH", "Correlation", "agrees", "iou", "match", "mean_iou"]
