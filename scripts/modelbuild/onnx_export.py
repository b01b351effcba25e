"""Hand-built ONNX graphs (channels-first) from trained Keras weights, plus the SSD post-processing tail.

tf2onnx does not handle Keras 3, and the architectures in ``keras_models`` are plain chains of
layers with exact ONNX counterparts, so each layer is emitted directly with ``onnx.helper``.
Weights are stored as initializers (``quantize_static`` leaves ``Constant`` nodes unquantized).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .keras_models import GridOffset

OPSET = 13
IR_VERSION = 8  # readable by onnxruntime >= 1.10, i.e. what older devices ship


class _GraphBuilder:
    """Accumulates nodes and initializers, tracking whether the current tensor is channels-first."""

    def __init__(self, input_name: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.tensor = input_name
        self.channels_first = True

    def const(self, name: str, value: np.ndarray) -> str:
        """Register an initializer and return its name."""
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, name: str, extra_inputs: tuple[str, ...] = (), **attrs: Any) -> str:
        """Append a node consuming the current tensor (plus extra inputs); it becomes the current tensor."""
        self.nodes.append(helper.make_node(op_type, [self.tensor, *extra_inputs], [name], name=name, **attrs))
        self.tensor = name
        return name

    def to_channels_last(self, prefix: str, rank: int) -> None:
        """Insert a Transpose that moves the channel axis last, if the tensor is channels-first."""
        if self.channels_first and rank > 2:
            self.op("Transpose", f"{prefix}/to_channels_last", perm=[0, *range(2, rank), 1])
        self.channels_first = False

    def activation(self, prefix: str, name: str) -> None:
        """Emit a Keras activation (linear, relu, sigmoid, softmax over the last axis)."""
        ops = {"relu": "Relu", "sigmoid": "Sigmoid", "softmax": "Softmax"}
        if name == "linear":
            return
        if name not in ops:
            raise NotImplementedError(f"activation {name!r}")
        attrs: dict[str, Any] = {"axis": -1} if name == "softmax" else {}
        self.op(ops[name], f"{prefix}/{ops[name]}", **attrs)


def _emit_layer(g: _GraphBuilder, layer: keras.layers.Layer, rank: int) -> int:
    """Emit the ONNX nodes of one Keras layer; returns the rank of the resulting tensor."""
    name = layer.name
    if isinstance(layer, keras.layers.Conv2D):
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        kh, kw = kernel.shape[:2]
        same = layer.padding == "same" or (kh, kw) == (1, 1)
        if layer.strides != (1, 1) or not same or layer.dilation_rate != (1, 1):
            raise NotImplementedError(f"{name}: only stride-1 'same' convolutions map exactly")
        w = g.const(f"{name}/W", np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        b = g.const(f"{name}/B", bias)
        g.op("Conv", f"{name}/Conv", (w, b), kernel_shape=[kh, kw], pads=[kh // 2, kw // 2, kh // 2, kw // 2])
        g.activation(name, layer.get_config()["activation"])
    elif isinstance(layer, keras.layers.Conv1D):
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        k = kernel.shape[0]
        if layer.strides != (1,) or layer.padding != "same" or layer.dilation_rate != (1,):
            raise NotImplementedError(f"{name}: only stride-1 'same' convolutions map exactly")
        w = g.const(f"{name}/W", np.ascontiguousarray(kernel.transpose(2, 1, 0)))
        g.op("Conv", f"{name}/Conv", (w, g.const(f"{name}/B", bias)), kernel_shape=[k], pads=[k // 2, k // 2])
        g.activation(name, layer.get_config()["activation"])
    elif isinstance(layer, keras.layers.MaxPooling2D):
        if layer.pool_size != (2, 2) or layer.strides != (2, 2) or layer.padding != "valid":
            raise NotImplementedError(f"{name}: only 2x2 stride-2 pooling is supported")
        g.op("MaxPool", f"{name}/MaxPool", kernel_shape=[2, 2], strides=[2, 2])
    elif isinstance(layer, keras.layers.GlobalAveragePooling2D):
        g.op("GlobalAveragePool", f"{name}/GlobalAveragePool")
        g.op("Flatten", f"{name}/Flatten", axis=1)
        g.channels_first = False
        return 2
    elif isinstance(layer, keras.layers.Dense):
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        w = g.const(f"{name}/W", np.ascontiguousarray(kernel.T))
        g.op("Gemm", f"{name}/Gemm", (w, g.const(f"{name}/B", bias)), transB=1)
        g.activation(name, layer.get_config()["activation"])
    elif isinstance(layer, keras.layers.Activation):
        g.activation(name, layer.get_config()["activation"])
    elif isinstance(layer, keras.layers.Flatten):
        g.to_channels_last(name, rank)
        g.op("Flatten", f"{name}/Flatten", axis=1)
        return 2
    elif isinstance(layer, keras.layers.Reshape):
        g.to_channels_last(name, rank)
        target = np.array([-1, *layer.target_shape], np.int64)
        g.op("Reshape", f"{name}/Reshape", (g.const(f"{name}/shape", target),))
        return len(target)
    elif isinstance(layer, GridOffset):
        offsets = layer.offsets.transpose(2, 0, 1)[None].astype(np.float32)
        g.op("Add", f"{name}/Add", (g.const(f"{name}/offsets", np.ascontiguousarray(offsets)),))
    elif not isinstance(layer, keras.layers.InputLayer):
        raise NotImplementedError(f"{name}: {type(layer).__name__} has no exact ONNX mapping here")
    return rank


def keras_to_onnx(
    model: keras.Model,
    input_name: str,
    output_name: str,
    batch: int | str = "N",
    channels_first_output: bool = False,
) -> onnx.ModelProto:
    """Rebuild a chain-structured Keras model as a channels-first ONNX graph with the same weights.

    The input is NCHW (images) or NCT (windows). Tensors reshaped by Keras keep Keras' own element
    order (a Transpose to channels-last is inserted first); with ``channels_first_output`` a 3D
    output is transposed back to NCT.
    """
    keras_shape = model.input_shape[1:]
    onnx_shape = [batch, keras_shape[-1], *keras_shape[:-1]]
    g = _GraphBuilder(input_name)
    rank = len(onnx_shape)
    for layer in model.layers:
        rank = _emit_layer(g, layer, rank)
    if channels_first_output and not g.channels_first:
        g.op("Transpose", "output/to_channels_first", perm=[0, rank - 1, *range(1, rank - 1)])
    g.nodes[-1].output[0] = output_name
    graph = helper.make_graph(
        g.nodes,
        model.name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, onnx_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-agent-modelbuild",
        ir_version=IR_VERSION,
    )
    return onnx.shape_inference.infer_shapes(onnx_model, strict_mode=True)


def max_abs_diff(
    onnx_model: onnx.ModelProto,
    keras_model: keras.Model,
    x_keras: np.ndarray,
    to_onnx: Callable[[np.ndarray], np.ndarray],
    from_onnx: Callable[[np.ndarray], np.ndarray] = lambda y: y,
) -> float:
    """Largest absolute difference between Keras outputs and ONNX outputs on the same inputs.

    ``to_onnx`` converts a Keras-layout batch to the ONNX input layout and ``from_onnx`` maps the
    ONNX output back to the Keras layout.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0] == 1
    x_onnx = to_onnx(x_keras)
    if fixed:
        y = np.concatenate([session.run(None, {feed_name: x_onnx[i : i + 1]})[0] for i in range(len(x_onnx))])
    else:
        y = session.run(None, {feed_name: x_onnx})[0]
    expected = keras_model.predict(x_keras, verbose=0)
    return float(np.abs(from_onnx(y) - expected).max())


def append_ssd_tail(
    body: onnx.ModelProto, max_detections: int, iou_threshold: float, score_threshold: float
) -> onnx.ModelProto:
    """Append float post-processing to a detector body whose single output is ``[1, cells, 4 + classes]``
    rows of sigmoid cx, cy, w, h, class scores, giving TFLite-SSD style outputs.

    Outputs (K = ``max_detections``, zero-padded past ``count``): ``boxes`` [1, K, 4] normalised
    ymin, xmin, ymax, xmax; ``classes`` [1, K] float class index; ``scores`` [1, K]; ``count`` [1]
    float. Boxes are kept by class-agnostic ``NonMaxSuppression`` on each cell's best class score.
    """
    rows = body.graph.output[0].name
    c = {
        name: numpy_helper.from_array(np.asarray(value), f"post/{name}")
        for name, value in {
            "k0": np.array([0], np.int64),
            "k4": np.array([4], np.int64),
            "k2": np.array([2], np.int64),
            "kbig": np.array([1 << 30], np.int64),
            "ax0": np.array([0], np.int64),
            "ax1": np.array([1], np.int64),
            "box_index": np.array(2, np.int64),
            "max_out": np.array([max_detections], np.int64),
            "iou": np.array([iou_threshold], np.float32),
            "score": np.array([score_threshold], np.float32),
            # [cx, cy, w, h] @ corners -> [ymin, xmin, ymax, xmax]
            "corners": np.array(
                [[0, 1, 0, 1], [1, 0, 1, 0], [0, -0.5, 0, 0.5], [-0.5, 0, 0.5, 0]], np.float32
            ),
            "zero": np.array(0.0, np.float32),
        }.items()
    }
    n = {name: tensor.name for name, tensor in c.items()}

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], name=output, **attrs)

    nodes = [
        node("Slice", [rows, n["k0"], n["k4"], n["k2"]], "post/box_cxcywh"),
        node("Slice", [rows, n["k4"], n["kbig"], n["k2"]], "post/class_scores"),
        node("ReduceMax", ["post/class_scores"], "post/best_score", axes=[2], keepdims=0),
        node("ArgMax", ["post/class_scores"], "post/best_class", axis=2, keepdims=0),
        node("MatMul", ["post/box_cxcywh", n["corners"]], "post/box_yxyx"),
        node("Unsqueeze", ["post/best_score", n["ax1"]], "post/nms_scores"),
        node(
            "NonMaxSuppression",
            ["post/box_yxyx", "post/nms_scores", n["max_out"], n["iou"], n["score"]],
            "post/selected",
        ),
        node("Gather", ["post/selected", n["box_index"]], "post/keep", axis=1),
        node("Shape", ["post/keep"], "post/count_i64"),
        node("Cast", ["post/count_i64"], "count", to=TensorProto.FLOAT),
        node("Sub", [n["max_out"], "post/count_i64"], "post/pad_len"),
        node("Concat", [n["k0"], "post/pad_len"], "post/pads_1d", axis=0),
        node("Concat", [n["k0"], n["k0"], "post/pad_len", n["k0"]], "post/pads_2d", axis=0),
        node("Squeeze", ["post/box_yxyx", n["ax0"]], "post/all_boxes"),
        node("Gather", ["post/all_boxes", "post/keep"], "post/kept_boxes", axis=0),
        node("Pad", ["post/kept_boxes", "post/pads_2d", n["zero"]], "post/padded_boxes"),
        node("Unsqueeze", ["post/padded_boxes", n["ax0"]], "boxes"),
        node("Cast", ["post/best_class"], "post/class_float", to=TensorProto.FLOAT),
    ]
    for source, output in (("post/class_float", "classes"), ("post/best_score", "scores")):
        nodes += [
            node("Squeeze", [source, n["ax0"]], f"post/all_{output}"),
            node("Gather", [f"post/all_{output}", "post/keep"], f"post/kept_{output}", axis=0),
            node("Pad", [f"post/kept_{output}", "post/pads_1d", n["zero"]], f"post/padded_{output}"),
            node("Unsqueeze", [f"post/padded_{output}", n["ax0"]], output),
        ]
    graph = body.graph
    graph.node.extend(nodes)
    graph.initializer.extend(c.values())
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, max_detections, 4]),
            helper.make_tensor_value_info("classes", TensorProto.FLOAT, [1, max_detections]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, max_detections]),
            helper.make_tensor_value_info("count", TensorProto.FLOAT, [1]),
        ]
    )
    return body
