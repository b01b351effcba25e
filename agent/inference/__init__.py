"""The inference core: model bundles, runtime backends, pre-processing and decoding. Knows nothing of MQTT."""

from agent.inference.bundle import Bundle, load_bundle
from agent.inference.decode import Detection, Label, Result
from agent.inference.manifest import Manifest
from agent.inference.model import Model, Prepared, Timings
from agent.inference.options import RuntimeOptions

__all__ = [
    "Bundle",
    "Detection",
    "Label",
    "Manifest",
    "Model",
    "Prepared",
    "Result",
    "RuntimeOptions",
    "Timings",
    "load_bundle",
]
