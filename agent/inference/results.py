"""Decoded inference results, one frozen type per task: `Result` is their union, told apart by type.

Invariants:
- Each type's `task` is a class-level constant (`ClassVar[Literal[...]]`): it is not a field, so it cannot be set or
  changed per instance, and a result of one task never carries another task's fields.
- `to_dict()` is the wire form: `{"task": ..., <the task's fields in declaration order>}`, nested values as
  `dataclasses.asdict` gives them (tuples stay tuples, serialised as JSON arrays). Changing it changes what devices
  publish and what `tests/data/wire_golden.json` pins.
- `change_key()` is "the same answer" for on-change result policies (None: every result is new); `top_score()` is the
  score the fleet's results policy compares (None: the result has none). Both are pure and cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeAlias


@dataclass(frozen=True)
class Label:
    """One class with its score."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class Keypoint:
    """A named landmark of a detection: in source-frame pixels and normalised to the model input."""

    name: str
    x: float
    y: float
    x_norm: float
    y_norm: float


@dataclass(frozen=True)
class Detection:
    """One detected object: box in source-frame pixels (x1, y1, x2, y2) and normalised to the model input, and the
    keypoints of a head that codes them (absent from the wire form when there are none)."""

    index: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    box_norm: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `keypoints` only when there are some."""
        data = asdict(self)
        if not self.keypoints:
            del data["keypoints"]
        return data


@dataclass(frozen=True)
class TensorSummary:
    """A model output reported as is."""

    name: str
    shape: tuple[int, ...]
    min: float
    max: float
    mean: float
    values: tuple[float, ...] | None = None  # only for small tensors


@dataclass(frozen=True)
class ClassificationResult:
    """The top-k labels above the model's min_score, best first (possibly none)."""

    labels: tuple[Label, ...] = ()
    task: ClassVar[Literal["classification"]] = "classification"

    @property
    def top(self) -> Label | None:
        """The best label, or None when no label reached min_score."""
        return self.labels[0] if self.labels else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task and the labels."""
        return {"task": self.task, "labels": tuple(asdict(label) for label in self.labels)}

    def summary(self) -> str:
        """One short line: the labels with their scores."""
        return (
            ", ".join(f"{lab.label} {lab.score:.3f}" for lab in self.labels) or "(no label above min_score)"
        )

    def change_key(self) -> tuple[Any, ...] | None:
        """("cls", the top-1 label), with None for the label when there is none."""
        top = self.top
        return ("cls", top.label if top else None)

    def top_score(self) -> float | None:
        """The top-1 label's score, None without labels."""
        top = self.top
        return top.score if top else None


@dataclass(frozen=True)
class DetectionResult:
    """The detected objects above the score threshold, best first (possibly none)."""

    detections: tuple[Detection, ...] = ()
    task: ClassVar[Literal["detection"]] = "detection"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task and the detections."""
        return {"task": self.task, "detections": tuple(d.to_dict() for d in self.detections)}

    def summary(self) -> str:
        """One short line: how many objects, and the first five with their scores."""
        return f"{len(self.detections)} objects: " + ", ".join(
            f"{d.label} {d.score:.2f}" for d in self.detections[:5]
        )

    def change_key(self) -> tuple[Any, ...] | None:
        """The sorted labels of all detections (so order and scores do not count)."""
        return ("det", tuple(sorted(d.label for d in self.detections)))

    def top_score(self) -> float | None:
        """The best detection's score, None without detections."""
        return max((d.score for d in self.detections), default=None)


@dataclass(frozen=True)
class AnomalyResult:
    """An anomaly score, the model's threshold, and whether the score is above it."""

    score: float
    threshold: float
    anomaly: bool
    task: ClassVar[Literal["anomaly"]] = "anomaly"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task, score, threshold and flag."""
        return {"task": self.task, "score": self.score, "threshold": self.threshold, "anomaly": self.anomaly}

    def summary(self) -> str:
        """One short line: score, threshold and verdict."""
        verdict = "ANOMALY" if self.anomaly else "normal"
        return f"score {self.score:.4g} (threshold {self.threshold:.4g}): {verdict}"

    def change_key(self) -> tuple[Any, ...] | None:
        """The verdict alone (a changing score with the same verdict is the same answer)."""
        return ("anomaly", bool(self.anomaly))

    def top_score(self) -> float | None:
        """The anomaly score."""
        return self.score


@dataclass(frozen=True)
class RawResult:
    """Every model output as a named tensor summary."""

    tensors: tuple[TensorSummary, ...] = ()
    task: ClassVar[Literal["raw"]] = "raw"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task and the tensor summaries."""
        return {"task": self.task, "tensors": tuple(asdict(t) for t in self.tensors)}

    def summary(self) -> str:
        """One short line: each tensor's name, shape and mean."""
        return "; ".join(f"{t.name}{list(t.shape)} mean {t.mean:.4g}" for t in self.tensors)

    def change_key(self) -> tuple[Any, ...] | None:
        """None: raw outputs have no notion of 'the same answer', every one counts as new."""
        return None

    def top_score(self) -> float | None:
        """None: raw outputs have no score."""
        return None


@dataclass(frozen=True)
class ClassArea:
    """The share of a segmentation map one class covers."""

    index: int
    label: str
    share: float


@dataclass(frozen=True)
class Region:
    """A connected region of one class in a segmentation map: its share of the map, its box in source-frame pixels
    and normalised to the model input, and its mean confidence."""

    index: int
    label: str
    share: float
    score: float
    box: tuple[float, float, float, float]
    box_norm: tuple[float, float, float, float]


@dataclass(frozen=True)
class SegmentationResult:
    """A per-pixel class or probability map, reported as the share of each class and the boxes of its regions."""

    classes: tuple[ClassArea, ...] = ()
    regions: tuple[Region, ...] = ()
    task: ClassVar[Literal["segmentation"]] = "segmentation"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task, the class shares and the regions."""
        return {
            "task": self.task,
            "classes": tuple(asdict(c) for c in self.classes),
            "regions": tuple(asdict(r) for r in self.regions),
        }

    def summary(self) -> str:
        """One short line: the classes that cover the most, and the region count."""
        shares = ", ".join(
            f"{c.label} {c.share:.0%}" for c in sorted(self.classes, key=lambda c: -c.share)[:3]
        )
        return f"{len(self.regions)} regions; {shares}"

    def change_key(self) -> tuple[Any, ...] | None:
        """The sorted labels of the regions found."""
        return ("seg", tuple(sorted(r.label for r in self.regions)))

    def top_score(self) -> float | None:
        """The most confident region's score, None without regions."""
        return max((r.score for r in self.regions), default=None)


@dataclass(frozen=True)
class KeypointsResult:
    """Named landmarks of one object, with the model's presence score (None when the model gives none)."""

    keypoints: tuple[Keypoint, ...] = ()
    presence: float | None = None
    present: bool = True
    task: ClassVar[Literal["keypoints"]] = "keypoints"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the task, presence and the keypoints."""
        return {
            "task": self.task,
            "present": self.present,
            "presence": self.presence,
            "keypoints": tuple(asdict(k) for k in self.keypoints),
        }

    def summary(self) -> str:
        """One short line: present or not, and how many keypoints."""
        presence = "" if self.presence is None else f" (presence {self.presence:.2f})"
        return f"{'present' if self.present else 'absent'}{presence}, {len(self.keypoints)} keypoints"

    def change_key(self) -> tuple[Any, ...] | None:
        """Whether the object is present."""
        return ("keypoints", self.present)

    def top_score(self) -> float | None:
        """The presence score."""
        return self.presence


Result: TypeAlias = (
    ClassificationResult | DetectionResult | AnomalyResult | RawResult | SegmentationResult | KeypointsResult
)
"""A decoded inference result of any task; dispatch on its type (isinstance, match), not on `task`."""
