#!/usr/bin/env python3
"""Bring-your-own-model paths against the bare runtime, side by side in one run.

1. The multi-input, stateful invoke path: Silero's voice activity detector from its wheel (a data window, a state
   fed back from an output, the sample rate as a constant; a recurrent model built here with onnx when the wheel
   cannot be fetched), through the agent's `Model.invoke` (which feeds the constant and the state and
   takes the new state from the outputs) against a bare onnxruntime loop that carries the state by hand. Target:
   within 5 %.
2. The anchor decoder's cost per frame against the model's invoke: BlazeFace (fetched from the mediapipe wheel, as
   the tests do) on a photograph, decode (anchors, box and keypoint coding, weighted NMS) vs invoke.

    .venv/bin/python scripts/bench_byom.py [--rounds 15] [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent.inference import Model  # noqa: E402
from agent.inference.bundler import init_bundle  # noqa: E402
from agent.inference.manifest import ImageInput, WindowInput  # noqa: E402
from agent.inference.options import RuntimeOptions  # noqa: E402

TARGET = 1.05
STEPS, FEATURES, HIDDEN = 64, 16, 256


def recurrent_model(path: Path) -> None:
    """h' = tanh(flatten(x) W + h U + b); y = (h' V) * scale: inputs x [1, 64, 16], h [1, 256], scale []."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((STEPS * FEATURES, HIDDEN)).astype(np.float32) * 0.03,
        "U": rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) * 0.05,
        "b": np.zeros(HIDDEN, np.float32),
        "V": rng.standard_normal((HIDDEN, 4)).astype(np.float32) * 0.1,
        "shape": np.array([1, STEPS * FEATURES], np.int64),
    }
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["xw"]),
        helper.make_node("MatMul", ["h", "U"], ["hu"]),
        helper.make_node("Add", ["xw", "hu"], ["s1"]),
        helper.make_node("Add", ["s1", "b"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["h_next"]),
        helper.make_node("MatMul", ["h_next", "V"], ["y0"]),
        helper.make_node("Mul", ["y0", "scale"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "recurrent",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, STEPS, FEATURES]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, HIDDEN]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("h_next", TensorProto.FLOAT, [1, HIDDEN]),
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def per_call(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def interleaved(
    a: Callable[[], object], b: Callable[[], object], rounds: int, calls: int
) -> tuple[float, float]:
    """Median seconds per call of a and b over rounds, the order alternating each round."""
    for call in (a, b):
        per_call(call, max(calls // 4, 5))
    got: dict[int, list[float]] = {0: [], 1: []}
    for index in range(rounds):
        for which in (0, 1) if index % 2 == 0 else (1, 0):
            got[which].append(per_call(a if which == 0 else b, calls))
    return statistics.median(got[0]), statistics.median(got[1])


def bench_stateful(rounds: int, calls: int) -> bool:
    """Silero's VAD from its wheel (the built recurrent model when the wheel cannot be fetched)."""
    import onnxruntime as ort
    from public_models import public_model

    with tempfile.TemporaryDirectory(prefix="bench-byom.") as work:
        try:
            source = public_model("silero-vad.onnx", Path(work))
            what = "Silero VAD (input [1, 512], state [2, 1, 128], sr)"
            length, channels, shapes = 512, ("audio",), {"input": (1, 512), "state": (2, 1, 128)}
            inputs = [
                {"name": "input", "role": "data"},
                {"name": "state", "role": "state", "from_output": "stateN"},
                {"name": "sr", "role": "constant", "value": 16000},
            ]
            bare_feed: dict[str, np.ndarray] = {
                "state": np.zeros((2, 1, 128), np.float32),
                "sr": np.array(16000, np.int64),
            }
            data_name, state_name, state_out = "input", "state", 1
            overrides = {"batch": 1, "sequence": 512}
        except BaseException as problem:  # pytest's skip outside pytest: no wheel here
            print(f"(silero-vad wheel not fetched: {problem}; a built recurrent model instead)")
            source = Path(work) / "recurrent.onnx"
            recurrent_model(source)
            what = f"built recurrent model (x [1, {STEPS}, {FEATURES}], h [1, {HIDDEN}], scale)"
            length, channels, shapes = STEPS, tuple(f"c{i}" for i in range(FEATURES)), {}
            inputs = [
                {"name": "x", "role": "data"},
                {"name": "h", "role": "state", "from_output": "h_next"},
                {"name": "scale", "role": "constant", "value": 2.0},
            ]
            bare_feed = {"h": np.zeros((1, HIDDEN), np.float32), "scale": np.array(2.0, np.float32)}
            data_name, state_name, state_out = "x", "h", 1
            overrides = {}
        rng = np.random.default_rng(0)
        windows = [rng.standard_normal((length, len(channels))).astype(np.float32) * 0.1 for _ in range(8)]
        bundle = Path(work) / "bundle"
        init_bundle(
            source,
            bundle,
            name="stateful",
            version=1,
            task="raw",
            samples=windows,
            input_contract=WindowInput(layout="NCT" if shapes else "NTC", length=length, channels=channels),
            inputs=inputs,
            input_shapes=shapes,
        )
        model = Model.load(bundle, RuntimeOptions(num_threads=1, providers=("CPUExecutionProvider",)))
        tensor = model.prepare(windows[0]).tensor.copy()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the same free-dimension sizes the agent binds from its pinned shapes, so that only the feeding differs
        for dim, size in overrides.items():
            options.add_free_dimension_override_by_name(dim, size)
        session = ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        bare_feed[data_name] = tensor

        def bare() -> object:
            outputs = session.run(None, bare_feed)
            bare_feed[state_name] = outputs[state_out]
            return outputs

        def agent() -> object:
            return model.invoke(tensor)

        bare_s, agent_s = interleaved(bare, agent, rounds, calls)
        model.close()
    ratio = agent_s / bare_s
    ok = ratio <= TARGET
    print(f"multi-input stateful invoke: {what}, 1 thread, {rounds} rounds x {calls} calls")
    print(f"  bare onnxruntime loop carrying the state: {bare_s * 1e3:.4f} ms")
    print(f"  agent Model.invoke:                       {agent_s * 1e3:.4f} ms")
    print(f"  ratio {ratio:.3f} (target <= {TARGET}): {'met' if ok else 'MISSED'}")
    return ok


def bench_anchor_decoder(rounds: int) -> None:
    from public_models import public_model

    with tempfile.TemporaryDirectory(prefix="bench-anchors.") as work:
        try:
            detector = public_model("face-detect.tflite", Path(work))
            picture = public_model("astronaut.png", Path(work))
        except BaseException as problem:  # pytest's skip outside pytest: the wheels cannot be fetched here
            print(f"\nanchor decoder: skipped ({problem})")
            return
        options = {
            "format": "anchors", "activation": "sigmoid", "score_clip": 100.0, "iou_threshold": 0.3,
            "nms": "weighted", "keypoints": ["right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear"],
            "anchors": {"strides": [8, 16, 16, 16], "min_scale": 0.1484375, "max_scale": 0.75},
        }  # fmt: skip
        frame = cv2.imread(str(picture))
        bundle = Path(work) / "bundle"
        init_bundle(
            detector, bundle, name="face-detect", version=1, task="detection", samples=[frame],
            labels=["face"], output=options,
            input_contract=ImageInput(
                width=128, height=128, mean=(127.5,), std=(127.5,), resize="letterbox", pad_value=0
            ),
        )  # fmt: skip
        model = Model.load(bundle, RuntimeOptions(num_threads=1))
        prepared = model.prepare(frame)
        raw = model.invoke(prepared.tensor)
        invoke_ms = statistics.median(
            per_call(lambda: model.invoke(prepared.tensor), 200) for _ in range(rounds)
        )
        decode_ms = statistics.median(
            per_call(lambda: model.decode(raw, prepared), 200) for _ in range(rounds)
        )
        result = model.decode(raw, prepared)
        found = len(getattr(result, "detections", ()))
        model.close()
    print(
        f"\nanchor decoder, BlazeFace (896 anchors, 6 keypoints) on astronaut.png, {found} face(s), 1 thread:"
    )
    print(
        f"  invoke {invoke_ms * 1e3:.4f} ms, decode {decode_ms * 1e3:.4f} ms: decode = {decode_ms / invoke_ms:.2f}x invoke"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="bring-your-own-model paths vs the bare runtime")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    ok = bench_stateful(args.rounds, args.calls)
    bench_anchor_decoder(max(args.rounds // 3, 3))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
