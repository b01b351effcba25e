"""What a model file stores its weights as (int8, float16, float32) and which ops turn them back into floats.

A model whose weights are float16 (or int8 with float activations) computes in float after DEQUANTIZE (LiteRT) or
DequantizeLinear / Cast (ONNX) ops: its input and output tensors say "float", its file and memory say otherwise.
LiteRT models are read through the interpreter; ONNX models need the `onnx` package (the `quantize` extra).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ModelError
from agent.inference.runtimes import runtime_for
from agent.inference.runtimes.quiet import native_stderr_to_log

log = logging.getLogger(__name__)

_WEIGHT_KINDS = ("float32", "float16", "bfloat16", "float64", "int8", "uint8", "int4", "uint4")
_DEQUANTIZING_ONNX = ("DequantizeLinear", "DynamicQuantizeLinear", "Cast")
_QUANTIZED_ONNX_PREFIX = ("QLinear", "MatMulInteger", "ConvInteger", "QGemm")


@dataclass(frozen=True)
class WeightInfo:
    """Weight precision of a model file: bytes of constant tensors by element type, and the dequantizing ops."""

    bytes_by_type: dict[str, int] = field(default_factory=dict)
    dequantize_ops: dict[str, int] = field(default_factory=dict)
    quantized_ops: int = 0
    note: str | None = None

    @property
    def precision(self) -> str:
        """The element type holding most weight bytes (`int8`, `float16`, `float32`), or `unknown`."""
        weights = {k: v for k, v in self.bytes_by_type.items() if k in _WEIGHT_KINDS}
        return max(weights, key=lambda k: weights[k]) if weights else "unknown"

    def describe(self) -> str:
        """For example `float16 (228 KiB; float32 4 KiB), 74 DEQUANTIZE ops turn them into float at load`."""
        if self.note and not self.bytes_by_type:
            return self.note
        parts = sorted(self.bytes_by_type.items(), key=lambda kv: -kv[1])
        sizes = "; ".join(f"{k} {_kib(v)}" for k, v in parts[1:4])
        text = f"{self.precision} ({_kib(parts[0][1]) if parts else '0 KiB'}{'; ' + sizes if sizes else ''})"
        if self.dequantize_ops:
            ops = ", ".join(f"{n} {op}" for op, n in sorted(self.dequantize_ops.items()))
            text += f"; dequantized by {ops} op(s)"
        if self.quantized_ops:
            text += f"; {self.quantized_ops} integer op(s)"
        return text


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size >= 1024 else f"{size} B"


def weight_info(path: Path) -> WeightInfo:
    """Reads the weights' precision from a `.tflite` or `.onnx` file; never raises for a readable model."""
    runtime = runtime_for(path)
    try:
        return _tflite(path) if runtime == "litert" else _onnx(path)
    except ModelError as error:
        return WeightInfo(note=str(error))


def _tflite(path: Path) -> WeightInfo:
    from agent.inference.runtimes.litert import import_interpreter

    interpreter_cls = import_interpreter()[0]
    try:
        with native_stderr_to_log(log, f"LiteRT ({path.name})"):
            interpreter = interpreter_cls(model_path=str(path))
        ops = interpreter._get_ops_details()
        tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    except (ValueError, RuntimeError, AttributeError) as error:
        raise ModelError(f"{path.name}: cannot read its tensors: {error}") from error
    produced = {int(i) for op in ops for i in op["outputs"]}
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    constants = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0} - produced - graph_inputs
    sizes: Counter[str] = Counter()
    for index in constants:
        tensor = tensors.get(index)
        if tensor is None:
            continue
        dtype = np.dtype(tensor["dtype"])
        sizes[dtype.name] += int(np.prod(tensor["shape"])) * dtype.itemsize
    names = Counter(str(op["op_name"]) for op in ops)
    dequantize = {op: n for op, n in names.items() if op == "DEQUANTIZE"}
    quantized = 0
    for op in ops:
        ins = [tensors.get(int(i)) for i in op["inputs"] if int(i) >= 0]
        if op["op_name"] != "QUANTIZE" and any(
            t is not None
            and np.dtype(t["dtype"]).kind in "iu"
            and t["quantization_parameters"]["scales"].size
            for t in ins
        ):
            quantized += 1
    return WeightInfo(dict(sizes), dequantize, quantized)


def _onnx(path: Path) -> WeightInfo:
    try:
        import onnx
        from onnx import helper
    except ImportError:
        return WeightInfo(
            note="unknown (reading an ONNX file's weights needs `pip install 'edge-agent[quantize]'`)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a file that is not a model
        raise ModelError(f"{path.name}: cannot read it as ONNX: {str(error).splitlines()[0]}") from error
    sizes: Counter[str] = Counter()
    constant_types: dict[str, str] = {}

    def count(tensor: Any, name: str) -> None:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        sizes[dtype.name] += int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
        constant_types[name] = dtype.name

    names: Counter[str] = Counter()
    nodes: list[Any] = []
    quantized = 0
    graphs = [model.graph]
    while graphs:  # the main graph and the bodies of If / Loop / Scan, where exporters put weights too
        graph = graphs.pop()
        for tensor in graph.initializer:
            count(tensor, tensor.name)
        for node in graph.node:
            nodes.append(node)
            names[node.op_type] += 1
            for attribute in node.attribute:
                if (
                    node.op_type == "Constant"
                    and attribute.name == "value"
                    and attribute.type == onnx.AttributeProto.TENSOR
                ):
                    count(attribute.t, node.output[0])
                graphs += (
                    [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
                )
            if node.op_type.startswith(_QUANTIZED_ONNX_PREFIX):
                quantized += 1
    dequantize = {op: names[op] for op in _DEQUANTIZING_ONNX if names.get(op)}
    # a Cast only dequantizes when it reads a stored low-precision weight (float16 -> float)
    casts = sum(
        1
        for node in nodes
        if node.op_type == "Cast"
        and any(constant_types.get(i) in ("float16", "bfloat16") for i in node.input)
    )
    if casts:
        dequantize["Cast"] = casts
    else:
        dequantize.pop("Cast", None)
    return WeightInfo(dict(sizes), dequantize, quantized)
