"""The inference core: model bundles, runtime backends, pre-processing and decoding. Knows nothing of MQTT."""

from agent.inference.bundle import Bundle, load_bundle
from agent.inference.manifest import Manifest
from agent.inference.model import Model, Prepared, Timings
from agent.inference.options import RuntimeOptions
from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    Detection,
    DetectionResult,
    Keypoint,
    KeypointsResult,
    Label,
    RawResult,
    Result,
    SegmentationResult,
    TensorSummary,
)

__all__ = [
    "AnomalyResult",
    "Bundle",
    "ClassificationResult",
    "Detection",
    "DetectionResult",
    "Keypoint",
    "KeypointsResult",
    "Label",
    "Manifest",
    "Model",
    "Prepared",
    "RawResult",
    "Result",
    "RuntimeOptions",
    "SegmentationResult",
    "TensorSummary",
    "Timings",
    "load_bundle",
]
