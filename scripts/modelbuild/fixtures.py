"""Test fixtures: tiny models with a custom op that the agent's runtimes must refuse to load."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import tensorflow as tf
from onnx import TensorProto, helper


def write_fixtures(dest: Path) -> list[Path]:
    """Write ``custom_op.tflite`` and ``custom_op.onnx`` into ``dest`` and check both fail to load."""
    dest.mkdir(parents=True, exist_ok=True)
    return [_custom_op_tflite(dest / "custom_op.tflite"), _custom_op_onnx(dest / "custom_op.onnx")]


def _custom_op_tflite(path: Path) -> Path:
    """A 1x4 float model computing ``erfinv(x)``: TFLite has no builtin for it, so the converter
    (with ``allow_custom_ops``) emits a custom ``Erfinv`` op that LiteRT's resolver lacks."""

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])  # type: ignore[untyped-decorator]
    def erfinv(x: tf.Tensor) -> tf.Tensor:
        return tf.math.erfinv(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([erfinv.get_concrete_function()], erfinv)
    converter.allow_custom_ops = True
    path.write_bytes(bytes(converter.convert()))
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(path)).allocate_tensors()
    except (RuntimeError, ValueError):
        return path
    raise RuntimeError(f"{path} unexpectedly loads in LiteRT")


def _custom_op_onnx(path: Path) -> Path:
    """A 1x4 float model whose only node is ``com.example::FancyOp``, unknown to onnxruntime."""
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example", strength=2.0)
    graph = helper.make_graph(
        [node],
        "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
        producer_name="edge-agent-modelbuild",
        ir_version=8,
    )
    onnx.save(model, str(path))
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own Fail / InvalidGraph exception types
        return path
    raise RuntimeError(f"{path} unexpectedly loads in onnxruntime")
