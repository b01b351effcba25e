"""Conversion to TFLite / quantized ONNX, and thin runners that mirror what the agent does.

The pre-processing here follows the bundle input contracts exactly (stretch resize, colour order,
``(x - mean) / std``, layout) so that the metrics measured at build time are the ones the agent sees.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

Contract = dict[str, Any]


def image_contract(width: int, height: int, layout: str) -> Contract:
    """Input contract of the digit models: RGB, stretched to width x height, pixels scaled to 0..1."""
    return {
        "kind": "image",
        "layout": layout,
        "color": "RGB",
        "width": width,
        "height": height,
        "resize": "stretch",
        "mean": [0.0, 0.0, 0.0],
        "std": [255.0, 255.0, 255.0],
    }


def window_contract(
    length: int, channels: Sequence[str], mean: np.ndarray, std: np.ndarray, layout: str
) -> Contract:
    """Input contract of the motion models: per-channel standardisation of a ``[T, C]`` window."""
    return {
        "kind": "window",
        "layout": layout,
        "length": length,
        "channels": list(channels),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
    }


def preprocess_images(images_bgr: Sequence[np.ndarray] | np.ndarray, contract: Contract) -> np.ndarray:
    """Turn uint8 BGR source images into the float model input described by an image contract."""
    size = (contract["width"], contract["height"])
    batch = []
    for image in images_bgr:
        if image.shape[1::-1] != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if contract["color"] == "RGB":
            image = image[..., ::-1]
        batch.append(image)
    mean = np.array(contract["mean"], np.float32)
    std = np.array(contract["std"], np.float32)
    x = (np.stack(batch).astype(np.float32) - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if contract["layout"] == "NCHW" else x)


def preprocess_windows(windows: np.ndarray, contract: Contract) -> np.ndarray:
    """Turn float ``[N, T, C]`` sensor windows into the float model input described by a window contract."""
    x = (windows - np.array(contract["mean"], np.float32)) / np.array(contract["std"], np.float32)
    x = x.astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 2, 1) if contract["layout"] == "NCT" else x)


def keras_to_tflite(model: tf.keras.Model, calibration: np.ndarray | None) -> bytes:
    """Convert a Keras model to TFLite: float when ``calibration`` is None, else full INT8.

    Full INT8 means int8 weights and activations with int8 input and output tensors, calibrated
    on the given (already pre-processed) float inputs.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:

        def representative() -> Iterator[list[np.ndarray]]:
            for sample in calibration:
                yield [sample[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints the traced signature
        return bytes(converter.convert())


class TfliteRunner:
    """Runs a TFLite model with LiteRT on a float batch, quantizing inputs / dequantizing outputs."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=2)
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the whole batch at once and return every output as float32."""
        self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
        self.interpreter.allocate_tensors()
        scale, zero_point = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        results = []
        for detail in self.outputs:
            y = self.interpreter.get_tensor(detail["index"]).astype(np.float32)
            scale, zero_point = detail["quantization"]
            results.append((y - zero_point) * scale if detail["dtype"] != np.float32 else y)
        return results


class OnnxRunner:
    """Runs an ONNX model with onnxruntime on the CPU, one sample at a time when the batch is fixed."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_batch = self.session.get_inputs()[0].shape[0] == 1

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the batch and return the outputs in graph order (stacked per sample when batch is fixed)."""
        if not self.fixed_batch:
            return list(self.session.run(None, {self.input_name: x}))
        per_sample = [self.session.run(None, {self.input_name: x[i : i + 1]}) for i in range(len(x))]
        return [np.concatenate(outputs) for outputs in zip(*per_sample, strict=True)]


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base
    """Feeds pre-processed calibration samples one at a time to ``quantize_static``."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.feeds = iter([{input_name: s[None].astype(np.float32)} for s in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Return the next feed dict, or None when the samples are exhausted."""
        return next(self.feeds, None)


def quantize_onnx(
    float_path: Path, int8_path: Path, calibration: np.ndarray, nodes_to_quantize: list[str] | None = None
) -> None:
    """QDQ-quantize an ONNX model: int8 per-channel weights, int8 activations, MinMax calibration."""
    model = onnx.load(str(float_path))
    reader = ArrayCalibrationReader(model.graph.input[0].name, calibration)
    quantize_static(
        str(float_path),
        str(int8_path),
        reader,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes_to_quantize,
    )


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Check an ONNX model against the spec and write it to ``path``."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
