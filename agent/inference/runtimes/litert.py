"""LiteRT (TensorFlow Lite) backend: `ai_edge_litert`, or `tflite_runtime` on old devices.

XNNPACK is applied by LiteRT's default op resolver; `RuntimeOptions.xnnpack = False` picks the resolver without default
delegates. A model that needs an op the runtime lacks (a custom op, a Flex/TensorFlow op) is refused at load time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ContractError, ModelError, RuntimeUnavailable
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes.base import Quantization, Shapes, TensorSpec, check_pins
from agent.inference.runtimes.quiet import native_stderr_to_log
from agent.types import Array

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install ai-edge-litert` (or `tflite-runtime` on 32-bit ARM)"


def import_interpreter() -> tuple[Any, Any, str]:
    """Returns (Interpreter class, OpResolverType enum, package name) from the first LiteRT package found."""
    try:
        from ai_edge_litert import interpreter as module

        return module.Interpreter, module.OpResolverType, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as module

        return module.Interpreter, module.OpResolverType, "tflite-runtime"
    except ImportError as error:
        raise RuntimeUnavailable(f"the LiteRT runtime is not installed: {INSTALL_HINT}") from error


_MISSING_OP = re.compile(
    r"(unresolved custom op: ?\S+|Didn't find op for (?:builtin|custom) opcode[^\n]*|Regular TensorFlow ops are not "
    r"supported[^\n]*|Select TensorFlow op[^\n]*)",
    re.IGNORECASE,
)


def _load_error(path: Path, error: Exception) -> ModelError:
    text = str(error)
    missing = _MISSING_OP.search(text)
    if missing:
        return RuntimeUnavailable(
            f"{path.name}: LiteRT cannot run this model: it needs an op it lacks ({missing.group(1)})"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return ModelError(f"{path.name}: LiteRT cannot load this model: {first}")


def _spec(detail: dict[str, Any], resized: bool = False) -> TensorSpec:
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    quantization = None
    if len(scales) > 1:
        raise ContractError(
            f"tensor '{detail['name']}' is quantized per axis; only per-tensor I/O is supported"
        )
    if len(scales) == 1 and float(scales[0]) != 0.0:
        quantization = Quantization(float(scales[0]), int(zero_points[0]))
    # After a resize the signature still says -1 where the pinned size now is: the allocated shape is the truth.
    key = "shape" if resized else "shape_signature"
    shape = tuple(int(d) for d in detail.get(key, detail["shape"]))
    return TensorSpec(detail["name"], shape, np.dtype(detail["dtype"]), quantization)


class LiteRTBackend:
    """A `.tflite` model loaded in a LiteRT interpreter."""

    runtime = "litert"

    def __init__(self, path: Path, options: RuntimeOptions, shapes: Shapes | None = None) -> None:
        interpreter_cls, resolver_type, package = import_interpreter()
        resolver = resolver_type.AUTO if options.xnnpack else resolver_type.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        shapes = shapes or {}
        try:
            with native_stderr_to_log(log, f"LiteRT ({path.name})"):
                self._interpreter = interpreter_cls(
                    model_path=str(path),
                    num_threads=options.num_threads,
                    experimental_op_resolver_type=resolver,
                )
                if shapes:
                    details = self._interpreter.get_input_details()
                    check_pins(
                        shapes,
                        {
                            d["name"]: tuple(int(v) for v in d.get("shape_signature", d["shape"]))
                            for d in details
                        },
                    )
                    for detail in details:
                        if detail["name"] in shapes:
                            self._interpreter.resize_tensor_input(
                                detail["index"], list(shapes[detail["name"]]), strict=True
                            )
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise _load_error(path, error) from error
        resized = bool(shapes)
        self.inputs = tuple(_spec(d, resized) for d in self._interpreter.get_input_details())
        self.outputs = tuple(_spec(d, resized) for d in self._interpreter.get_output_details())
        self._input_indices = [d["index"] for d in self._interpreter.get_input_details()]
        self._output_indices = [d["index"] for d in self._interpreter.get_output_details()]
        threads = options.num_threads or "auto"
        self.detail = f"{package}, {'XNNPACK' if options.xnnpack else 'builtin kernels'}, threads={threads}"

    def invoke(self, inputs: Sequence[Array]) -> list[Array]:
        """Copies the inputs in, runs the interpreter, copies the outputs out."""
        interpreter = self._interpreter
        try:
            if len(inputs) == 1:
                interpreter.set_tensor(self._input_indices[0], inputs[0])
            else:
                for index, array in zip(self._input_indices, inputs, strict=True):
                    interpreter.set_tensor(index, array)
            interpreter.invoke()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"LiteRT invoke failed: {error}") from error
        return [interpreter.get_tensor(index) for index in self._output_indices]

    def close(self) -> None:
        """Drops the interpreter (LiteRT frees its arena when the object goes)."""
        self._interpreter = None


def probe() -> str:
    """Which LiteRT package is installed (raises RuntimeUnavailable when none is)."""
    return import_interpreter()[2]
