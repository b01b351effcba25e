"""`edge-agent model inspect|verify|init`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

import numpy as np

from agent.errors import InputError, ManifestError
from agent.inference.bundle import check_files, load_bundle, read_labels, read_manifest
from agent.inference.bundler import InputHints, draft_input, init_bundle
from agent.inference.golden import run_golden
from agent.inference.inputs import IMAGE_SUFFIXES, read_csv, read_image, read_npy, sliding_windows
from agent.inference.manifest import ImageInput, InputContract, Task, WindowInput
from agent.inference.model import Model
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes import TensorSpec, open_backend
from agent.inference.weights import weight_info
from agent.monitor.reference import feature_table
from agent.term import console, print_json, table


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from error


def _shape_pin(text: str) -> tuple[str, tuple[int, ...]]:
    """`NAME=1,3,48,192`, or `1,3,48,192` for a model with one input (the name is then found at load)."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(v) for v in dims.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected NAME=SIZES such as x=1,3,48,192, got '{text}'"
        ) from error
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"every size must be >= 1, got '{text}'")
    return name.strip(), shape


def _byte(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"expected a pixel value 0..255, got '{text}'")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share 0..1 such as 0.02, got '{text}'")
    return value


def pins_for(specs: tuple[TensorSpec, ...], given: list[tuple[str, tuple[int, ...]]]) -> dict[str, tuple[int, ...]]:
    """`--input-shape` values by input name; a nameless one belongs to a model's only input."""
    pins: dict[str, tuple[int, ...]] = {}
    for name, shape in given:
        if not name:
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise InputError(f"the model has several inputs ({names}): give --input-shape NAME=SIZES")
            name = specs[0].name
        pins[name] = shape
    return pins


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `model inspect|verify|init`."""
    model = sub.add_parser("model", help="inspect, verify or create model bundles")
    cmds = model.add_subparsers(dest="model_command", required=True, metavar="{inspect,verify,init}")
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
    init.add_argument("--task", required=True, choices=get_args(Task))
    init.add_argument("--out", required=True, type=Path, help="new bundle folder")
    init.add_argument(
        "--samples",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="sample inputs: images, .npy arrays, CSV recordings (for golden vectors and drift stats)",
    )
    init.add_argument("--labels", type=Path, help="labels file, one per line")
    init.add_argument("--name", help="model name (default: the file name)")
    init.add_argument("--version", type=int, default=1)
    init.add_argument(
        "--color", choices=["RGB", "BGR"], default="RGB", help="image colour order (default RGB)"
    )
    init.add_argument(
        "--mean", type=_floats, help="per-channel mean in pixel/sensor units, e.g. 123.7,116.3,103.5"
    )
    init.add_argument("--std", type=_floats, help="per-channel std in pixel/sensor units")
    init.add_argument(
        "--resize",
        choices=["stretch", "letterbox", "pad", "center_crop"],
        default="stretch",
        help="fit frames to the input: stretch; letterbox (aspect kept, centred); pad (aspect kept, padded right "
        "and bottom, as text recognisers expect); center_crop",
    )
    init.add_argument("--pad-value", type=_byte, default=114, help="letterbox/pad pixel value 0..255 (default 114)")
    init.add_argument(
        "--input-shape",
        type=_shape_pin,
        action="append",
        default=[],
        metavar="NAME=SIZES",
        help="pin a model input's free dimensions, e.g. x=1,3,48,192 (repeat per input; the file is unchanged)",
    )
    init.add_argument("--channels", help="sensor channel names, comma-separated, in model order")
    init.add_argument("--top-k", type=int, default=5, help="classification: labels reported")
    init.add_argument(
        "--detection-format", choices=["yolo", "ssd"], help="detection: output layout (default: guessed)"
    )
    init.add_argument("--score-threshold", type=float, default=0.5, help="detection: minimum score")
    init.add_argument("--threshold", type=float, help="anomaly: score threshold (default: from the samples)")
    init.add_argument("--golden", type=int, default=4, help="golden cases to store (default 4)")
    init.add_argument(
        "--tolerance",
        type=float,
        help="one absolute golden limit for every output (default: a limit per output, from its own range)",
    )
    init.add_argument(
        "--rtol",
        type=_share,
        default=0.02,
        help="per-output golden limit as a share of each output's range over the samples (default 0.02)",
    )
    init.set_defaults(handler=run_init)


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
                            {"name": o.name, "deviation": o.deviation, "allowed": o.allowed, "passed": o.passed}
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


def _load_samples(paths: list[Path], contract: InputContract) -> list[np.ndarray]:
    samples: list[np.ndarray] = []
    for path in paths:
        suffix = path.suffix.lower()
        if isinstance(contract, ImageInput) and suffix in IMAGE_SUFFIXES:
            samples.append(read_image(path))
        elif suffix == ".npy":
            array = read_npy(path)
            is_batch = array.ndim == (4 if isinstance(contract, ImageInput) else 3)
            samples += list(array) if is_batch else [array]
        elif suffix == ".csv" and isinstance(contract, WindowInput):
            columns = contract.channels if not contract.channels[0].startswith("ch") else None
            data = read_csv(path, columns)
            if columns is None:
                data = data[:, -len(contract.channels) :]  # drop leading time columns
            samples += sliding_windows(data, contract.length, max(contract.length // 2, 1))
        else:
            raise InputError(f"{path.name}: not a usable sample for a {contract.kind} input")
    return samples


def run_init(args: argparse.Namespace) -> int:
    """Drafts and writes a bundle, then prints what to review."""
    if args.out.exists() and any(args.out.iterdir()):
        raise ManifestError(f"{args.out} exists and is not empty; choose a new folder")
    channels = tuple(c.strip() for c in args.channels.split(",")) if args.channels else None
    hints = InputHints(
        color=args.color,
        mean=args.mean,
        std=args.std,
        resize=args.resize,
        pad_value=args.pad_value,
        channels=channels,
    )
    backend = open_backend(args.model_file)
    pins = pins_for(backend.inputs, args.input_shape)
    if pins:
        backend.close()
        backend = open_backend(args.model_file, shapes=pins)
    shape_contract = draft_input(backend.inputs[0], hints, [], []) if len(backend.inputs) == 1 else None
    backend.close()
    if shape_contract is None:
        raise ManifestError("the model has several inputs; edge-agent feeds models with one input")
    samples = _load_samples(args.samples, shape_contract)
    output: dict[str, Any] | None = None
    if args.task == "classification":
        output = {"top_k": args.top_k}
    elif args.task == "detection":
        output = {"score_threshold": args.score_threshold}
        if args.detection_format:
            output["format"] = args.detection_format
    elif args.task == "anomaly" and args.threshold is not None:
        output = {"threshold": args.threshold}
    labels = list(read_labels(args.labels)) if args.labels else None
    name = args.name or args.model_file.stem.lower().replace(" ", "-")
    report = init_bundle(
        args.model_file,
        args.out,
        name=name,
        version=args.version,
        task=args.task,
        samples=samples,
        labels=labels,
        hints=hints,
        output=output,
        golden_count=args.golden,
        tolerance=args.tolerance,
        rtol=args.rtol,
        features=feature_table,
        input_shapes=pins,
    )
    out = console()
    manifest = report.manifest
    out.print(
        f"wrote bundle {report.path}: {manifest.name} v{manifest.version} ({manifest.runtime}, {manifest.task}), "
        f"{len(samples)} samples, {len(manifest.golden.cases) if manifest.golden else 0} golden cases"
    )
    out.print(f"input contract: {manifest.input.model_dump()}")
    out.print(f"output decoding: {manifest.output.model_dump()}")
    for item in report.review:
        out.print(f"review: {item}")
    load_bundle(report.path)  # proves the written bundle verifies
    return 0
