"""`edge-agent model inspect|verify|init|quantize`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.cli import quantize_cmd
from agent.cli.drafting import add_draft_arguments, draft_from_args, print_written
from agent.inference.bundle import check_files, load_bundle, read_manifest
from agent.inference.golden import run_golden
from agent.inference.model import Model
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes import TensorSpec, open_backend
from agent.inference.weights import weight_info
from agent.term import console, print_json, table


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `model inspect|verify|init`."""
    model = sub.add_parser("model", help="inspect, verify or create model bundles")
    cmds = model.add_subparsers(dest="model_command", required=True, metavar="{inspect,verify,init,quantize}")
    inspect = cmds.add_parser("inspect", help="manifest, tensors, dtypes and quantization of a bundle")
    inspect.add_argument("bundle", type=Path)
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(handler=run_inspect)

    verify = cmds.add_parser("verify", help="check file hashes, the model contract and the golden self-test")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--threads", type=int, default=None)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=run_verify)

    init = cmds.add_parser(
        "init",
        help="draft a bundle (manifest, hashes, golden vectors, drift reference) "
        "from a .tflite or .onnx file and sample inputs",
    )
    init.add_argument("model_file", type=Path, metavar="MODEL_FILE")
    add_draft_arguments(init)
    init.set_defaults(handler=run_init)
    quantize_cmd.add_parser(cmds)


def _tensor_rows(kind: str, specs: tuple[TensorSpec, ...]) -> list[list[Any]]:
    rows = []
    for spec in specs:
        quant = spec.quantization
        q = f"scale {quant.scale:.6g}, zero point {quant.zero_point}" if quant else "float"
        rows.append([kind, spec.name, spec.dtype.name, "[" + ",".join(str(d) for d in spec.shape) + "]", q])
    return rows


def run_inspect(args: argparse.Namespace) -> int:
    """Prints the manifest and the model's tensors."""
    manifest = read_manifest(args.bundle)
    backend = open_backend(
        args.bundle / manifest.model, RuntimeOptions(), manifest.runtime, manifest.input_shapes
    )
    rows = _tensor_rows("input", backend.inputs) + _tensor_rows("output", backend.outputs)
    weights = weight_info(args.bundle / manifest.model)
    if args.json:
        print_json(
            {
                "manifest": manifest.to_json_dict(),
                "runtime": backend.detail,
                "weights": {
                    "precision": weights.precision,
                    "bytes_by_type": weights.bytes_by_type,
                    "dequantize_ops": weights.dequantize_ops,
                    "integer_ops": weights.quantized_ops,
                    "note": weights.note,
                },
                "tensors": [
                    dict(zip(["kind", "name", "dtype", "shape", "quantization"], r, strict=True))
                    for r in rows
                ],
            }
        )
        backend.close()
        return 0
    out = console()
    out.print(
        f"[bold]{manifest.name}[/bold] v{manifest.version}  task {manifest.task}  runtime {backend.detail}"
    )
    if manifest.description:
        out.print(manifest.description)
    out.print(table(None, ["", "tensor", "dtype", "shape", "quantization (from the model)"], rows))
    out.print(f"weights: {weights.describe()}")
    for name, shape in manifest.input_shapes.items():
        out.print(f"pinned shape: input '{name}' {list(shape)} (set at load; the model file has free sizes)")
    out.print(f"input contract: {manifest.input.model_dump()}")
    out.print(f"output decoding: {manifest.output.model_dump()}")
    for budget in manifest.latency_budgets:
        out.print(f"latency budget: {budget.device_class} invoke p99 <= {budget.p99_ms:g} ms")
    golden = manifest.golden
    if golden is None:
        out.print("golden: none")
    elif golden.outputs:
        limits = ", ".join(f"{o.name or i} {o.allowed:.4g}" for i, o in enumerate(golden.outputs))
        out.print(f"golden: {len(golden.cases)} cases, a limit per output: {limits}")
    else:
        out.print(f"golden: {len(golden.cases)} cases, tolerance {golden.tolerance:g} on every output")
    out.print(
        table(
            None,
            ["file", "bytes", "sha256"],
            [[path, entry.size, entry.sha256[:16] + "..."] for path, entry in manifest.files.items()],
        )
    )
    backend.close()
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Hashes, contract and golden self-test; exit status 0 only when all pass."""
    manifest = read_manifest(args.bundle)
    check_files(args.bundle, manifest)
    model = Model.load(args.bundle, RuntimeOptions(num_threads=args.threads), verify=False)
    report = run_golden(model)
    model.close()
    ok = report.passed
    if args.json:
        print_json(
            {
                "bundle": str(args.bundle),
                "hashes": "ok",
                "contract": "ok",
                "passed": ok,
                "tolerance": report.tolerance,
                "worst_deviation": report.worst,
                "cases": [
                    {
                        "input": case.input,
                        "max_deviation": case.max_deviation,
                        "passed": case.passed,
                        "note": case.note,
                        "error": case.error,
                        "failure": case.failure,
                        "outputs": [
                            {
                                "name": o.name,
                                "deviation": o.deviation,
                                "allowed": o.allowed,
                                "passed": o.passed,
                            }
                            for o in case.outputs
                        ],
                    }
                    for case in report.cases
                ],
            }
        )
        return 0 if ok else 1
    out = console()
    out.print(f"{model.bundle}: file hashes ok ({len(manifest.files)} files), model matches its contract")
    if not report.cases:
        out.print("golden self-test: FAIL (the bundle has no golden cases)")
        return 1
    rows = [
        [c.input, c.max_deviation, "pass" if c.passed else "FAIL", c.failure or c.note] for c in report.cases
    ]
    out.print(table(None, ["golden case", "max deviation", "", "note"], rows))
    verdict = "PASS" if ok else "FAIL"
    limit = (
        "a limit per output"
        if manifest.golden is not None and manifest.golden.outputs
        else f"tolerance {report.tolerance:.4g}"
    )
    out.print(f"golden self-test: {verdict}, worst deviation {report.worst:.4g} ({limit})")
    return 0 if ok else 1


def run_init(args: argparse.Namespace) -> int:
    """Drafts and writes a bundle, then prints what to review."""
    draft = draft_from_args(args)
    report = draft.write(args, args.model_file, args.out)
    print_written(report, len(draft.samples))
    load_bundle(report.path)  # proves the written bundle verifies
    return 0
