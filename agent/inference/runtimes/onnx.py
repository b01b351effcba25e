"""ONNX Runtime backend: CPU always; CUDA and TensorRT (Jetson) when the installed build has them.

Worker threads do not spin by default: an edge device has other work to do between frames. Integer model inputs
that carry no quantization the runtime can report are fed as raw values (scale 1, zero point 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ContractError, ModelError, RuntimeUnavailable
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes.base import Quantization, Shapes, TensorSpec, check_pins
from agent.types import Array

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install onnxruntime` (`onnxruntime-gpu` from JetPack's index on Jetson)"

_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
_MISSING_OP_HINTS = (
    "Could not find an implementation",
    "is not a registered function/op",
    "No opset import for domain",
)


def import_onnxruntime() -> Any:
    """Returns the onnxruntime module, or raises RuntimeUnavailable with an install hint."""
    try:
        import onnxruntime
    except ImportError as error:
        raise RuntimeUnavailable(f"ONNX Runtime is not installed: {INSTALL_HINT}") from error
    return onnxruntime


def _spec(arg: Any, pinned: tuple[int, ...] | None = None) -> TensorSpec:
    shape = pinned or tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    dtype = np.dtype(_ONNX_TYPES.get(arg.type, np.float32))
    if arg.type not in _ONNX_TYPES:
        raise ModelError(f"tensor '{arg.name}' has type {arg.type}, which edge-agent does not feed or read")
    quantization = Quantization(1.0, 0) if dtype.kind in "iu" else None
    return TensorSpec(arg.name, shape, dtype, quantization)


def choose_providers(ort: Any, options: RuntimeOptions) -> list[Any]:
    """The requested providers that this onnxruntime build has, in order, with their options; CPU last."""
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    for name in options.providers:
        if name not in available:
            log.debug("ONNX Runtime provider %s is not available in this build; skipped", name)
            continue
        if name == "TensorrtExecutionProvider":
            trt: dict[str, Any] = {"trt_fp16_enable": options.tensorrt_fp16}
            if options.tensorrt_cache_dir:
                trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=options.tensorrt_cache_dir)
            chosen.append((name, trt))
        elif name != "CPUExecutionProvider":
            chosen.append(name)
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxBackend:
    """A `.onnx` model loaded in an ONNX Runtime InferenceSession."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, options: RuntimeOptions, shapes: Shapes | None = None) -> None:
        ort = import_onnxruntime()
        shapes = shapes or {}
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.num_threads or 0
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        if not options.spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session_options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            if shapes:
                _pin_named_dimensions(ort, path, session_options, shapes)
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=choose_providers(ort, options)
            )
        except ContractError:
            raise
        except Exception as error:  # onnxruntime raises its own pybind exception types for every load failure
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            if any(hint in str(error) for hint in _MISSING_OP_HINTS):
                raise RuntimeUnavailable(
                    f"{path.name}: ONNX Runtime cannot run this model: it needs an op it lacks ({text})"
                ) from error
            raise ModelError(f"{path.name}: ONNX Runtime cannot load this model: {text}") from error
        self.inputs = tuple(_spec(a, shapes.get(a.name)) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._input_names = [spec.name for spec in self.inputs]
        self._run = self._session.run
        if shapes and all(min(s.shape, default=1) >= 1 for s in self.inputs):
            self.outputs = self._probe_outputs()
        threads = options.num_threads or "auto"
        self.detail = f"onnxruntime {ort.__version__}, {self._session.get_providers()[0]}, threads={threads}"

    def invoke(self, inputs: Sequence[Array]) -> list[Array]:
        """Runs the session once."""
        names = self._input_names
        feed = {names[0]: inputs[0]} if len(names) == 1 else dict(zip(names, inputs, strict=True))
        try:
            outputs: list[Array] = self._run(None, feed)
        except Exception as error:  # onnxruntime's pybind exceptions (InvalidArgument, Fail, ...)
            raise ModelError(f"ONNX Runtime run failed: {str(error).splitlines()[0]}") from error
        return outputs

    def _probe_outputs(self) -> tuple[TensorSpec, ...]:
        """With every input pinned, one run on zeros tells the output sizes the model's signature leaves free."""
        if all(min(s.shape, default=1) >= 1 for s in self.outputs):
            return self.outputs
        zeros = [np.zeros(spec.shape, dtype=spec.dtype) for spec in self.inputs]
        got = self.invoke(zeros)
        return tuple(
            TensorSpec(spec.name, tuple(int(d) for d in array.shape), spec.dtype, spec.quantization)
            for spec, array in zip(self.outputs, got, strict=True)
        )

    def close(self) -> None:
        """Drops the session."""
        self._session = None
        self._run = None


def _pin_named_dimensions(ort: Any, path: Path, session_options: Any, shapes: Shapes) -> None:
    """Checks the pinned shapes against the model's inputs and binds each named free dimension (`dim_param`)
    to its pinned size; unnamed free dimensions take the size of the tensor fed, which has the pinned shape."""
    probe_options = ort.SessionOptions()
    probe_options.log_severity_level = 3
    probe_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    signature = ort.InferenceSession(
        str(path), sess_options=probe_options, providers=["CPUExecutionProvider"]
    )
    inputs = signature.get_inputs()
    check_pins(shapes, {a.name: _spec(a).shape for a in inputs})
    bound: dict[str, int] = {}
    for arg in inputs:
        pinned = shapes.get(arg.name)
        if pinned is None:
            continue
        for dim, size in zip(arg.shape, pinned, strict=True):
            # "?" is what exporters write for an unnamed dimension; binding it by name would tie unrelated axes
            named = isinstance(dim, str) and dim and dim != "?"
            if named and bound.setdefault(dim, size) != size:
                raise ContractError(
                    f"the free dimension '{dim}' is pinned to both {bound[dim]} and {size}: inputs sharing "
                    "a named dimension must agree on its size"
                )
    for dim, size in bound.items():
        session_options.add_free_dimension_override_by_name(dim, size)
    del signature


def probe() -> str:
    """The onnxruntime version and its execution providers (raises RuntimeUnavailable when missing)."""
    ort = import_onnxruntime()
    return f"onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}"
