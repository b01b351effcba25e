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

from agent.errors import ModelError, RuntimeUnavailable
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes.base import Quantization, TensorSpec
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


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
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
            log.info("ONNX Runtime provider %s is not available in this build; skipped", name)
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

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        ort = import_onnxruntime()
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
            self._session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=choose_providers(ort, options)
            )
        except Exception as error:  # onnxruntime raises its own pybind exception types for every load failure
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            if any(hint in str(error) for hint in _MISSING_OP_HINTS):
                raise RuntimeUnavailable(
                    f"{path.name}: ONNX Runtime cannot run this model: it needs an op it lacks ({text})"
                ) from error
            raise ModelError(f"{path.name}: ONNX Runtime cannot load this model: {text}") from error
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._input_names = [spec.name for spec in self.inputs]
        self._run = self._session.run
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

    def close(self) -> None:
        """Drops the session."""
        self._session = None
        self._run = None


def probe() -> str:
    """The onnxruntime version and its execution providers (raises RuntimeUnavailable when missing)."""
    ort = import_onnxruntime()
    return f"onnxruntime {ort.__version__}; providers: {', '.join(ort.get_available_providers())}"
