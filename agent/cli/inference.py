"""`edge-agent infer` and `edge-agent bench`."""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import InputError
from agent.fsutil import write_atomic
from agent.inference.bench import bench_model
from agent.inference.inputs import load_inputs, synthetic_input
from agent.inference.model import Model
from agent.inference.options import RuntimeOptions
from agent.inference.results import (
    AnomalyResult,
    ClassificationResult,
    DetectionResult,
    KeypointsResult,
    RawResult,
    Result,
    SegmentationResult,
)
from agent.term import console, error, print_json, table


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `infer` and `bench`."""
    infer = sub.add_parser(
        "infer", help="run a model bundle on images, .npy tensors or CSV sensor recordings"
    )
    infer.add_argument("--model", required=True, type=Path, help="bundle folder")
    infer.add_argument("files", nargs="+", type=Path, metavar="FILE")
    infer.add_argument(
        "--hop", type=int, default=None, help="CSV: samples between windows (default: window length)"
    )
    infer.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    infer.add_argument("--json", action="store_true", help="print JSON instead of a table")
    infer.add_argument(
        "--save-outputs",
        type=Path,
        metavar="FILE.npz",
        help="also write every output tensor (dequantized float32) of every input: `output_0`, `output_1`, ... "
        "stacked over the inputs, with `inputs` (their names) and `names` (the tensors' names)",
    )
    infer.set_defaults(handler=run_infer)

    bench = sub.add_parser("bench", help="measure a model's latency, throughput and memory on this device")
    bench.add_argument("--model", required=True, type=Path, help="bundle folder")
    bench.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    bench.add_argument("--runs", type=int, default=200, help="timed runs (default 200)")
    bench.add_argument("--warmup", type=int, default=20, help="untimed warm-up runs (default 20)")
    bench.add_argument(
        "--input",
        type=Path,
        default=None,
        help="input file (default: a synthetic 640x480 frame, window or tensor)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(handler=run_bench)


def _options(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(num_threads=args.threads)


def _rows(name: str, result: Result, ms: float) -> list[list[Any]]:
    match result:
        case DetectionResult() if not result.detections:
            return [[name, "(nothing detected)", "", "", ms]]
        case DetectionResult():
            return [
                [name, d.label, round(d.score, 3), "[" + ", ".join(f"{v:.0f}" for v in d.box) + "]", ms]
                for d in result.detections
            ]
        case ClassificationResult():
            top = result.top
            rest = ", ".join(f"{lab.label} {lab.score:.3f}" for lab in result.labels[1:])
            return [[name, top.label if top else "-", round(top.score, 4) if top else "", rest, ms]]
        case AnomalyResult():
            verdict = "ANOMALY" if result.anomaly else "normal"
            return [[name, verdict, round(result.score or 0.0, 5), f"threshold {result.threshold:.4g}", ms]]
        case RawResult():
            return [
                [name, t.name, list(t.shape), f"min {t.min:.4g} max {t.max:.4g} mean {t.mean:.4g}", ms]
                for t in result.tensors
            ]
        case SegmentationResult():
            shares = ", ".join(
                f"{c.label} {c.share:.1%}" for c in sorted(result.classes, key=lambda c: -c.share)
            )
            rows = [[name, shares, len(result.regions), "", ms]]
            return rows + [
                [
                    "",
                    f"{r.label} {r.share:.1%}",
                    round(r.score, 3),
                    "[" + ", ".join(f"{v:.0f}" for v in r.box) + "]",
                    "",
                ]
                for r in result.regions[:10]
            ]
        case KeypointsResult():
            verdict = "present" if result.present else "absent"
            first = ", ".join(f"{k.name} ({k.x:.0f},{k.y:.0f})" for k in result.keypoints[:4])
            more = f" +{len(result.keypoints) - 4}" if len(result.keypoints) > 4 else ""
            presence = "" if result.presence is None else round(result.presence, 3)
            return [[name, verdict, presence, first + more, ms]]


_HEADERS = {
    "classification": ["input", "top-1", "score", "next", "ms"],
    "detection": ["input", "label", "score", "box x1,y1,x2,y2 (px)", "ms"],
    "anomaly": ["input", "verdict", "score", "", "ms"],
    "raw": ["input", "output", "shape", "summary", "ms"],
    "segmentation": ["input", "class shares / region", "regions / score", "box x1,y1,x2,y2 (px)", "ms"],
    "keypoints": ["input", "object", "presence", "keypoints (px)", "ms"],
}


def run_infer(args: argparse.Namespace) -> int:
    """Decoded results for each input file; bad files are reported and skipped, and make the exit status 1."""
    model = Model.load(args.model, _options(args))
    records: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    failed = 0
    saved_names: list[str] = []
    saved: list[list[np.ndarray]] = []
    for path in args.files:
        try:
            items = load_inputs(path, model.manifest.input, args.hop)
            model.reset_state()  # a stateful model reads each file as one stream from its initial state
            for name, data in items:
                start = time.perf_counter()
                prepared = model.prepare(data)
                raw = model.invoke(prepared.tensor)
                result = model.decode(raw, prepared)
                ms = round((time.perf_counter() - start) * 1000, 3)
                if args.save_outputs is not None:
                    saved_names.append(name)
                    saved.append([np.array(a, copy=True) for a in model.dequantize(raw)])
                records.append({"input": name, "result": result.to_dict(), "latency_ms": ms})
                rows += _rows(name, result, ms)
        except InputError as problem:
            failed += 1
            message = str(problem) if path.name in str(problem) else f"{path.name}: {problem}"
            error(message)
            records.append({"input": str(path), "error": message})
    if args.save_outputs is not None and saved:
        _save_outputs(args.save_outputs, saved_names, saved, [s.name for s in model.backend.outputs])
    if args.json:
        print_json({"model": model.name, "version": model.version, "results": records})
    elif rows:
        console().print(table(f"{model.bundle}", _HEADERS[model.manifest.task], rows))
        if args.save_outputs is not None and saved:
            console().print(f"outputs of {len(saved)} input(s) written to {args.save_outputs}")
    model.close()
    return 1 if failed else 0


def _save_outputs(path: Path, inputs: list[str], outputs: list[list[np.ndarray]], names: list[str]) -> None:
    """Every output stacked over the inputs, written whole (a temporary file renamed into place)."""
    arrays: dict[str, np.ndarray] = {
        f"output_{i}": np.stack([item[i] for item in outputs]) for i in range(len(names))
    }
    arrays["inputs"] = np.array(inputs, dtype=str)
    arrays["names"] = np.array(names, dtype=str)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    try:
        write_atomic(path, buffer.getvalue(), mode=0o644)
    except OSError as problem:
        raise InputError(f"cannot write {path}: {problem.strerror or problem}") from problem


def run_bench(args: argparse.Namespace) -> int:
    """Latency percentiles, throughput and RSS for invoke alone and for the whole path."""
    model = Model.load(args.model, _options(args))
    if args.input is not None:
        data = load_inputs(args.input, model.manifest.input)[0][1]
        source = str(args.input)
    else:
        data = synthetic_input(model.manifest.input, model.data_spec.shape)
        source = "synthetic " + "x".join(str(d) for d in data.shape)
    report = bench_model(model, data, max(args.runs, 1), max(args.warmup, 0))
    budgets = [
        (b.device_class, b.p99_ms, report.invoke.p99_ms <= b.p99_ms) for b in model.manifest.latency_budgets
    ]
    if args.json:
        stages = {
            name: {**vars(stats), "per_second": stats.per_second}
            for name, stats in (
                ("invoke", report.invoke),
                ("preprocess", report.preprocess),
                ("decode", report.decode),
                ("full", report.full),
            )
        }
        print_json(
            {
                "model": model.name,
                "version": model.version,
                "runtime": model.backend.detail,
                "input": source,
                "stages": stages,
                "rss_mb": report.rss_mb,
                "budgets": [{"device_class": d, "p99_ms": p, "met": ok} for d, p, ok in budgets],
            }
        )
    else:
        out = console()
        out.print(f"{model.bundle} on {model.backend.detail}; input: {source}; {report.invoke.runs} runs")
        rows = [
            [name, s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms, round(s.per_second, 1)]
            for name, s in (
                ("invoke", report.invoke),
                ("pre-process", report.preprocess),
                ("decode", report.decode),
                ("pre-process + invoke + decode", report.full),
            )
        ]
        out.print(table(None, ["stage", "p50 ms", "p90 ms", "p99 ms", "mean ms", "per s"], rows))
        out.print(f"RSS {report.rss_mb:.1f} MiB")
        for device, p99, ok in budgets:
            out.print(
                f"budget {device}: invoke p99 {p99:g} ms -> {'met' if ok else 'NOT met'} on this machine"
            )
    model.close()
    return 0
