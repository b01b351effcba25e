#!/usr/bin/env python3
"""Full-integer (INT8) quantization of your own TensorFlow model into a `.tflite` that LiteRT runs with XNNPACK.

A dev tool for a workstation, not the device: it needs TensorFlow's converter (`pip install -e '.[build]'`), which
the agent never imports. ONNX models are quantized on the device itself by `edge-agent model quantize`; a `.tflite`
that is already float can only be re-quantized from the model it was converted from, which is what this does.

    .venv/bin/python scripts/quantize_tflite.py SAVED_MODEL_DIR_OR.keras --samples imgs/*.jpg \\
        --mean 127.5 --std 127.5 --out model-int8.tflite
    edge-agent model init model-int8.tflite --task classification --samples imgs/*.jpg --out my-bundle

The samples calibrate the activation ranges (100 to 500 representative inputs are typical): images are resized to
the model's input size, colour-converted and normalised as `(pixel - mean) / std`, the same contract `model init`
writes; `.npy` files are taken as already-normalised model inputs ([N, ...] or one input each).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def calibration_inputs(
    paths: list[Path], shape: tuple[int, ...], args: argparse.Namespace
) -> list[np.ndarray]:
    """Model-ready float inputs of batch 1 from images (resized, normalised) or .npy tensors."""
    nchw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
    height, width, channels = (shape[2], shape[3], shape[1]) if nchw else (shape[1], shape[2], shape[3])
    mean = np.array(args.mean, np.float32)
    std = np.array(args.std, np.float32)
    inputs: list[np.ndarray] = []
    for path in paths:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False).astype(np.float32)
            inputs += (
                [a[None] for a in array]
                if array.ndim == len(shape) and array.shape[0] > 1
                else [array.reshape(shape)]
            )
            continue
        if path.suffix.lower() not in IMAGES:
            raise SystemExit(f"{path}: not an image or a .npy file")
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"{path}: cannot decode the image")
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        if channels == 1:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)[..., None]
        elif args.color == "RGB":
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        x = (frame.astype(np.float32) - mean) / std
        inputs.append((x.transpose(2, 0, 1) if nchw else x)[None])
    return inputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a SavedModel folder, or a Keras .keras / .h5 file")
    parser.add_argument(
        "--samples", nargs="+", type=Path, required=True, help="calibration images or .npy inputs"
    )
    parser.add_argument("--out", type=Path, required=True, help="the .tflite to write")
    parser.add_argument(
        "--mean", type=_floats, default=(0.0,), help="per-channel mean in pixel units (default 0)"
    )
    parser.add_argument(
        "--std", type=_floats, default=(255.0,), help="per-channel std in pixel units (default 255)"
    )
    parser.add_argument("--color", choices=["RGB", "BGR"], default="RGB")
    parser.add_argument(
        "--float-io", action="store_true", help="keep float input and output tensors (default: int8 I/O)"
    )
    args = parser.parse_args()
    try:
        import tensorflow as tf
    except ImportError:
        print("this tool needs TensorFlow's converter: pip install -e '.[build]'", file=sys.stderr)
        return 2
    if args.source.is_dir():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(args.source))
        shape = tuple(tf.saved_model.load(str(args.source)).signatures["serving_default"].inputs[0].shape)
    else:
        model = tf.keras.models.load_model(args.source, compile=False)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        shape = tuple(model.inputs[0].shape)
    shape = tuple(1 if d is None else int(d) for d in shape)
    inputs = calibration_inputs(args.samples, shape, args)

    def representative() -> Iterator[list[np.ndarray]]:
        for x in inputs:
            yield [x]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not args.float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        data = bytes(converter.convert())
    args.out.write_bytes(data)
    print(
        f"wrote {args.out} ({len(data)} bytes, full INT8, calibrated on {len(inputs)} inputs of shape {list(shape)})"
    )
    print(f"next: edge-agent model init {args.out} --task TASK --samples ... --out BUNDLE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
