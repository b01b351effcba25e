"""Inference runtime backends, registered by name and chosen from the model file's type.

A runtime whose package is missing disables only itself: loading a model that needs it raises RuntimeUnavailable
with the package to install; models of the other runtime still load.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ModelError, RuntimeUnavailable
from agent.inference.manifest import RUNTIME_BY_SUFFIX
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes.base import Backend, Quantization, Shapes, TensorSpec

__all__ = [
    "RUNTIMES",
    "Backend",
    "Quantization",
    "Shapes",
    "TensorSpec",
    "open_backend",
    "runtime_for",
    "runtime_status",
]


@dataclass(frozen=True)
class RuntimeEntry:
    """Where a backend lives and which package provides it."""

    module: str
    cls: str
    package: str


RUNTIMES: dict[str, RuntimeEntry] = {
    "litert": RuntimeEntry("agent.inference.runtimes.litert", "LiteRTBackend", "ai-edge-litert"),
    "onnxruntime": RuntimeEntry("agent.inference.runtimes.onnx", "OnnxBackend", "onnxruntime"),
}


def runtime_for(path: Path) -> str:
    """The runtime name for a model file, from its type."""
    runtime = RUNTIME_BY_SUFFIX.get(path.suffix.lower())
    if runtime is None:
        known = ", ".join(sorted(RUNTIME_BY_SUFFIX))
        raise ModelError(f"{path.name}: unknown model type '{path.suffix}': expected {known}")
    return runtime


def open_backend(
    path: Path,
    options: RuntimeOptions | None = None,
    runtime: str | None = None,
    shapes: Shapes | None = None,
) -> Backend:
    """Loads a model file in its runtime; `shapes` pins the free dimensions of inputs by name (the model file is
    not rewritten)."""
    name = runtime or runtime_for(path)
    entry = RUNTIMES.get(name)
    if entry is None:
        raise ModelError(f"unknown runtime '{name}': known runtimes are {', '.join(RUNTIMES)}")
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    module = importlib.import_module(entry.module)
    backend: Backend = getattr(module, entry.cls)(path, options or RuntimeOptions(), shapes or {})
    return backend


def runtime_status() -> dict[str, str]:
    """For each runtime: `ok (...)` with its version, or why it is unavailable."""
    status: dict[str, str] = {}
    for name, entry in RUNTIMES.items():
        try:
            status[name] = f"ok ({importlib.import_module(entry.module).probe()})"
        except RuntimeUnavailable as error:
            status[name] = f"unavailable: {error}"
    return status
