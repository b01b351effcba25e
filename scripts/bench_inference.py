#!/usr/bin/env python3
"""Inference benchmark: the agent's paths against the bare runtimes, measured side by side in one run.

1. Invoke overhead: for every bundled model, the agent's invoke path (`Model.invoke`) against the bare runtime's
   own calls (LiteRT `set_tensor/invoke/get_tensor`, ONNX Runtime `run`) on the same model file, the same input and
   the same thread count, in interleaved rounds so that machine noise hits both alike. Target: ratio <= 1.05.
2. Pre-processing: a 640x480 BGR frame to a 224x224 INT8 NHWC input, the agent's buffer-reusing LUT path against a
   straightforward float implementation (resize, colour, normalise, quantize). Target: p50 < 0.5 ms.
3. Quantization search (no target, a report): every float ONNX model under models/float/ whose bundle and held-out
   samples are there, quantized by `agent.inference.quantize.quantize_search` in each default format, calibrated and
   judged on the held-out samples pre-processed by the bundle's own manifest: invoke ms, speed against float,
   agreement with float (top-1 for a classifier, the worst output correlation otherwise), and the format chosen.

    .venv/bin/python scripts/bench_inference.py [--threads 1] [--rounds 15] [--calls 200] [--only quantize]
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

from agent.cli.quantize_cmd import agreement_for, prepared_inputs, quiet_quantizer  # noqa: E402
from agent.inference.bench import latency_stats  # noqa: E402
from agent.inference.inputs import synthetic_input  # noqa: E402
from agent.inference.manifest import ImageInput  # noqa: E402
from agent.inference.model import Model  # noqa: E402
from agent.inference.options import RuntimeOptions  # noqa: E402
from agent.inference.preprocess import ImagePreprocessor  # noqa: E402
from agent.inference.quantize import TABLE_HEADER, QuantizeReport, quantize_search  # noqa: E402
from agent.inference.runtimes.base import Quantization, TensorSpec  # noqa: E402

OVERHEAD_TARGET = 1.05
PREPROCESS_TARGET_MS = 0.5


def bare_runner(model: Model, threads: int, tensor: np.ndarray) -> Callable[[], object]:
    """The runtime's own API on the same model file, nothing of the agent in the loop."""
    path = str(model.bundle.model_path)
    if model.manifest.runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        input_index = interpreter.get_input_details()[0]["index"]
        output_indices = [d["index"] for d in interpreter.get_output_details()]

        def run_litert() -> object:
            interpreter.set_tensor(input_index, tensor)
            interpreter.invoke()
            return [interpreter.get_tensor(i) for i in output_indices]

        return run_litert
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: tensor})


def per_call_seconds(call: Callable[[], object], calls: int) -> float:
    """Mean seconds per call over a tight loop of `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def bench_overhead(bundle: Path, threads: int, rounds: int, calls: int) -> tuple[str, float, float, float]:
    """(model, bare ms, agent ms, ratio) from interleaved rounds; each figure is the median over rounds."""
    model = Model.load(bundle, RuntimeOptions(num_threads=threads, providers=("CPUExecutionProvider",)))
    data = synthetic_input(model.manifest.input, model.backend.inputs[0].shape)
    tensor = model.prepare(data).tensor.copy()
    bare = bare_runner(model, threads, tensor)

    def agent() -> object:
        return model.invoke(tensor)

    for call in (bare, agent):  # warm-up
        per_call_seconds(call, max(calls // 4, 5))
    bare_s, agent_s = [], []
    for index in range(rounds):
        order = (bare, agent) if index % 2 == 0 else (agent, bare)
        for call in order:
            (bare_s if call is bare else agent_s).append(per_call_seconds(call, calls))
    b, a = statistics.median(bare_s), statistics.median(agent_s)
    return f"{model.name} ({model.manifest.runtime})", b * 1e3, a * 1e3, a / b


def naive_preprocess(frame: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """The straightforward way: resize, colour, float normalise, quantize; new arrays every call."""
    resized = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    real = rgb.astype(np.float32) / 255.0
    return np.clip(np.round(real / scale) + zero_point, -128, 127).astype(np.int8)[None]


def bench_preprocess(runs: int) -> tuple[float, float, float, float]:
    """(agent p50, agent p99, naive p50, naive p99) in ms for 640x480 -> 224x224 INT8."""
    contract = ImageInput(width=224, height=224, mean=(0.0,), std=(255.0,))
    spec = TensorSpec("input", (1, 224, 224, 3), np.dtype(np.int8), Quantization(1 / 255, -128))
    pre = ImagePreprocessor(contract, spec)
    frame = synthetic_input(contract, spec.shape)
    agent_s, naive_s = [], []
    for _ in range(20):
        pre(frame)
        naive_preprocess(frame, 1 / 255, -128)
    for _ in range(runs):
        start = time.perf_counter()
        pre(frame)
        middle = time.perf_counter()
        naive_preprocess(frame, 1 / 255, -128)
        agent_s.append(middle - start)
        naive_s.append(time.perf_counter() - middle)
    agent, naive = latency_stats(agent_s), latency_stats(naive_s)
    return agent.p50_ms, agent.p99_ms, naive.p50_ms, naive.p99_ms


def bench_quantize(models: Path, threads: int, samples: int, rounds: int, calls: int) -> None:
    """Runs the quantization search on each float ONNX model that has its bundle and held-out inputs, judged as
    `edge-agent model quantize` judges (top-1 label, matched detections, output correlation); prints the tables."""
    floats = models / "float"
    print(
        f"\nquantization search: {samples} held-out samples each, {threads} thread(s), "
        f"{rounds} interleaved rounds x {calls} calls"
    )
    for source in sorted(floats.glob("*.onnx")):
        bundle = models / source.stem
        if not (bundle / "manifest.json").is_file() or not (floats / f"{source.stem}.eval.npz").is_file():
            print(f"\n{source.name}: no bundle or no held-out samples, skipped")
            continue
        model = Model.load(bundle, RuntimeOptions(num_threads=1, providers=("CPUExecutionProvider",)))
        try:
            with np.load(floats / f"{bundle.name}.eval.npz", allow_pickle=False) as data:
                prepared = prepared_inputs(model, list(data["x"][:samples]))
            metric, what = agreement_for(model, prepared)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bench-quantize.") as work, quiet_quantizer():
                report = quantize_search(
                    source,
                    [p.tensor for p in prepared],
                    Path(work),
                    metric=metric,
                    threads=threads,
                    rounds=rounds,
                    calls=calls,
                )
        finally:
            model.close()
        print_quantize(source.name, report, what, time.perf_counter() - started)


def print_quantize(name: str, report: QuantizeReport, what: str, seconds: float) -> None:
    """One model's table: formats tried, invoke ms, speed against float, agreement, and the one chosen."""
    print(
        f"\n{name}: agreement = {what} >= {report.min_agreement:g}, {report.calibration} calibration, "
        f"search {seconds:.1f} s; chosen: {report.chosen.candidate.name}"
    )
    line = "{:<28} {:>10} {:>9} {:>10}  {}"
    print(line.format(*TABLE_HEADER))
    for row in report.table_rows():
        print(line.format(*row))


def main() -> int:
    """Prints the tables and whether the targets are met; exit status 1 when one is missed."""
    parser = argparse.ArgumentParser(description="agent inference paths vs the bare runtimes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument(
        "--only", choices=("overhead", "preprocess", "quantize"), help="run one section (default: all three)"
    )
    parser.add_argument("--quantize-samples", type=int, default=64, help="held-out samples per model")
    parser.add_argument("--quantize-rounds", type=int, default=7)
    parser.add_argument("--quantize-calls", type=int, default=50)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    ok_overhead = ok_pre = True
    if args.only in (None, "overhead"):
        ok_overhead = report_overhead(args.models, args.threads, args.rounds, args.calls)
    if args.only in (None, "preprocess"):
        ok_pre = report_preprocess()
    if args.only in (None, "quantize"):
        bench_quantize(
            args.models, args.threads, args.quantize_samples, args.quantize_rounds, args.quantize_calls
        )
    return 0 if ok_overhead and ok_pre else 1


def report_overhead(models: Path, threads: int, rounds: int, calls: int) -> bool:
    """Prints the invoke-overhead table; whether the target is met."""
    bundles = sorted(p.parent for p in models.glob("*/manifest.json"))
    print(f"invoke path vs bare runtime, {threads} thread(s), {rounds} interleaved rounds x {calls} calls")
    print(f"{'model':<28} {'bare ms':>9} {'agent ms':>9} {'ratio':>7}")
    worst = 0.0
    for bundle in bundles:
        name, bare_ms, agent_ms, ratio = bench_overhead(bundle, threads, rounds, calls)
        worst = max(worst, ratio)
        print(f"{name:<28} {bare_ms:>9.4f} {agent_ms:>9.4f} {ratio:>7.3f}")
    ok = worst <= OVERHEAD_TARGET
    print(
        f"target invoke overhead <= {OVERHEAD_TARGET:.2f}: worst {worst:.3f} -> {'met' if ok else 'MISSED'}"
    )
    return ok


def report_preprocess() -> bool:
    """Prints the pre-processing table; whether the target is met."""
    a50, a99, n50, n99 = bench_preprocess(2000)
    print("\npre-process 640x480 BGR -> 224x224 INT8 NHWC (2000 frames, cv2 1 thread)")
    print(f"{'path':<28} {'p50 ms':>9} {'p99 ms':>9}")
    print(f"{'agent (LUT, reused buffers)':<28} {a50:>9.4f} {a99:>9.4f}")
    print(f"{'naive float path':<28} {n50:>9.4f} {n99:>9.4f}   agent/naive p50 ratio {a50 / n50:.2f}")
    ok = a50 < PREPROCESS_TARGET_MS
    print(f"target pre-process p50 < {PREPROCESS_TARGET_MS} ms: {a50:.3f} ms -> {'met' if ok else 'MISSED'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
