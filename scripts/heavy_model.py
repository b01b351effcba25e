#!/usr/bin/env python3
"""Builds a Raspberry-Pi-class INT8 image classifier bundle for the loop benchmarks (dev tool: needs `onnx`).

The bundled models are tiny (0.03-0.5 ms per invoke here), so a loop around them is bound by Python, not by the model.
A camera model on a Pi takes 10-50 ms; this script makes one of that weight: a 224x224 RGB input, five strided
3x3 convolutions (16-128 channels), global average pooling and a 10-way classifier, random weights (what it answers is
irrelevant; how long it takes is the point), quantized to QDQ INT8 with `quantize_static` on random calibration frames,
and packed as a verified bundle with `init_bundle`.

    .venv/bin/python scripts/heavy_model.py OUT_FOLDER
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (48, 96, 192, 384, 384)
EXTRA_CONVS = 2
sys.path.insert(0, str(ROOT))


def _float_model(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    channels, previous = 3, "input"
    for i, out_ch in enumerate(WIDTHS):
        w = (rng.standard_normal((out_ch, channels, 3, 3)) * np.sqrt(2.0 / (9 * channels))).astype(np.float32)
        b = np.zeros(out_ch, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node(
                "Conv", [previous, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        previous = f"r{i}"
        for j in range(EXTRA_CONVS):  # stride-1 convolutions give the model Pi-class weight
            w2 = (rng.standard_normal((out_ch, out_ch, 3, 3)) * np.sqrt(2.0 / (9 * out_ch))).astype(
                np.float32
            )
            inits += [numpy_helper.from_array(w2, f"v{i}_{j}"), numpy_helper.from_array(b, f"d{i}_{j}")]
            nodes.append(
                helper.make_node(
                    "Conv", [previous, f"v{i}_{j}", f"d{i}_{j}"], [f"e{i}_{j}"], pads=[1, 1, 1, 1]
                )
            )
            nodes.append(helper.make_node("Relu", [f"e{i}_{j}"], [f"s{i}_{j}"]))
            previous = f"s{i}_{j}"
        channels = out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    fc = (rng.standard_normal((channels, 10)) * 0.1).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def build(out: Path) -> Path:
    """Writes the bundle folder `out` (must not exist) and returns it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from agent.inference.bundler import InputHints, init_bundle

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._items = iter(
                [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(8)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    with tempfile.TemporaryDirectory() as tmp:
        float_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "model.onnx"
        _float_model(float_path)
        quantize_static(
            str(float_path),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        init_bundle(
            int8_path,
            out,
            name="heavy-cls",
            version=1,
            task="classification",
            samples=frames,
            labels=[f"class{i}" for i in range(10)],
            hints=InputHints(color="RGB", mean=(127.5,), std=(127.5,), resize="stretch"),
            golden_count=1,
            description="benchmark-only Pi-class INT8 classifier (random weights)",
        )
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "build/heavy-cls")
    print(build(target))
