"""Drafting a bundle from the command line, shared by `model init` and `model quantize`: the arguments, the pinned
shapes, the input hints, and the samples loaded against the drafted contract."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import numpy as np

from agent.errors import InputError, ManifestError
from agent.inference.bundle import read_labels
from agent.inference.bundler import InitReport, InputHints, draft_input, init_bundle
from agent.inference.inputs import IMAGE_SUFFIXES, read_csv, read_image, read_npy, sliding_windows
from agent.inference.manifest import ImageInput, InputContract, Task, WindowInput
from agent.inference.runtimes import TensorSpec, open_backend
from agent.monitor.reference import feature_table
from agent.term import console


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
        raise argparse.ArgumentTypeError(f"expected NAME=SIZES such as x=1,3,48,192, got '{text}'") from error
    if any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"every size must be >= 1, got '{text}'")
    return name.strip(), shape


Number = TypeVar("Number", int, float)


def bounded(
    parse: Callable[[str], Number], low: float | None, high: float | None, expected: str
) -> Callable[[str], Number]:
    """An argparse type: `parse(text)` within [low, high] (either end open when None), else the usage error
    `expected <expected>, got '<text>'`."""

    def check(text: str) -> Number:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{text}'")
        return value

    return check


_byte = bounded(int, 0, 255, "a pixel value 0..255")
_share = bounded(float, 0.0, 1.0, "a share 0..1 such as 0.02")


def _json_value(text: str, opening: str) -> Any:
    """JSON given inline (starting with `opening`) or as the path of a file holding it."""
    source = text
    if not text.lstrip().startswith(opening):
        try:
            source = Path(text).read_text(encoding="utf-8")
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror or error}") from error
    try:
        return json.loads(source)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"{text}: invalid JSON at line {error.lineno}: {error.msg}"
        ) from error


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline or as a file."""
    value = _json_value(text, "{")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON object")
    return value


def _json_list(text: str) -> list[dict[str, Any]]:
    """A JSON list of objects given inline or as a file."""
    value = _json_value(text, "[")
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise argparse.ArgumentTypeError(f"{text}: expected a JSON list of objects")
    return value


def pins_for(
    specs: tuple[TensorSpec, ...], given: list[tuple[str, tuple[int, ...]]]
) -> dict[str, tuple[int, ...]]:
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


def add_draft_arguments(parser: argparse.ArgumentParser) -> None:
    """What `model init` and `model quantize` need to draft a bundle: task, samples, input hints, golden limits."""
    parser.add_argument("--task", required=True, choices=get_args(Task))
    parser.add_argument("--out", required=True, type=Path, help="new bundle folder")
    parser.add_argument(
        "--samples",
        nargs="+",
        type=Path,
        required=True,
        metavar="FILE",
        help="sample inputs: images, .npy arrays, CSV recordings (for golden vectors and drift stats)",
    )
    parser.add_argument("--labels", type=Path, help="labels file, one per line")
    parser.add_argument("--name", help="model name (default: the file name)")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument(
        "--color", choices=["RGB", "BGR"], default="RGB", help="image colour order (default RGB)"
    )
    parser.add_argument(
        "--mean", type=_floats, help="per-channel mean in pixel/sensor units, e.g. 123.7,116.3,103.5"
    )
    parser.add_argument("--std", type=_floats, help="per-channel std in pixel/sensor units")
    parser.add_argument(
        "--resize",
        choices=["stretch", "letterbox", "pad", "center_crop"],
        default="stretch",
        help="fit frames to the input: stretch; letterbox (aspect kept, centred); pad (aspect kept, padded right "
        "and bottom, as text recognisers expect); center_crop",
    )
    parser.add_argument(
        "--pad-value", type=_byte, default=114, help="letterbox/pad pixel value 0..255 (default 114)"
    )
    parser.add_argument(
        "--input-shape",
        type=_shape_pin,
        action="append",
        default=[],
        metavar="NAME=SIZES",
        help="pin a model input's free dimensions, e.g. x=1,3,48,192 (repeat per input; the file is unchanged)",
    )
    parser.add_argument("--channels", help="sensor channel names, comma-separated, in model order")
    parser.add_argument("--top-k", type=int, default=5, help="classification: labels reported")
    parser.add_argument(
        "--detection-format",
        choices=["yolo", "ssd", "anchors"],
        help="detection: output layout (default: guessed from the output count)",
    )
    parser.add_argument("--score-threshold", type=float, default=0.5, help="detection: minimum score")
    parser.add_argument(
        "--inputs",
        type=_json_list,
        metavar="JSON|FILE.json",
        help='every input of a model with several: [{"name": ..., "role": "data"|"constant"|"state", '
        '"value": ..., "from_output": ...}] (docs/byom.md)',
    )
    parser.add_argument(
        "--output-options",
        type=_json_object,
        metavar="JSON|FILE.json",
        help="decoding options merged into the manifest's `output`, e.g. an anchors-format detector's anchor "
        "options and keypoint names (docs/byom.md)",
    )
    parser.add_argument(
        "--threshold", type=float, help="anomaly: score threshold (default: from the samples)"
    )
    parser.add_argument("--golden", type=int, default=4, help="golden cases to store (default 4)")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="one absolute golden limit for every output (default: a limit per output, from its own range)",
    )
    parser.add_argument(
        "--rtol",
        type=_share,
        default=0.02,
        help="per-output golden limit as a share of each output's range over the samples (default 0.02)",
    )


def load_samples(paths: list[Path], contract: InputContract) -> list[np.ndarray]:
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


@dataclass
class Draft:
    """Everything `init_bundle` needs from the command line, the samples loaded against the drafted contract."""

    hints: InputHints
    pins: dict[str, tuple[int, ...]]
    samples: list[np.ndarray]
    output: dict[str, Any] | None
    labels: list[str] | None
    name: str
    inputs: list[dict[str, Any]]

    def write(
        self, args: argparse.Namespace, model_file: Path, out: Path, description: str = ""
    ) -> InitReport:
        """Writes the bundle of `model_file` at `out`."""
        return init_bundle(
            model_file,
            out,
            name=self.name,
            version=args.version,
            task=args.task,
            samples=self.samples,
            labels=self.labels,
            hints=self.hints,
            output=self.output,
            golden_count=args.golden,
            tolerance=args.tolerance,
            rtol=args.rtol,
            description=description,
            features=feature_table,
            input_shapes=self.pins,
            inputs=self.inputs,
        )


def draft_from_args(args: argparse.Namespace) -> Draft:
    """Reads the model's input (pinned where asked), drafts its contract and loads the samples against it."""
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
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
    data = [
        spec
        for spec in backend.inputs
        if spec.name in {i.get("name") for i in args.inputs or () if i.get("role") == "data"}
    ]
    if not args.inputs and len(backend.inputs) == 1:
        data = [backend.inputs[0]]
    backend.close()
    if len(data) != 1:
        names = ", ".join(f"'{s.name}'" for s in backend.inputs)
        raise ManifestError(
            f"the model has {len(backend.inputs)} inputs ({names}): describe each with --inputs, one of them "
            "the data input (docs/byom.md)"
        )
    shape_contract = draft_input(data[0], hints, [], [])
    samples = load_samples(args.samples, shape_contract)
    output: dict[str, Any] | None = None
    if args.task == "classification":
        output = {"top_k": args.top_k}
    elif args.task == "detection":
        output = {"score_threshold": args.score_threshold}
        if args.detection_format:
            output["format"] = args.detection_format
    elif args.task == "anomaly" and args.threshold is not None:
        output = {"threshold": args.threshold}
    if args.output_options:
        output = {**(output or {}), **args.output_options}
    labels = list(read_labels(args.labels)) if args.labels else None
    name = args.name or args.model_file.stem.lower().replace(" ", "-")
    return Draft(hints, pins, samples, output, labels, name, list(args.inputs or ()))


def print_written(report: InitReport, samples: int) -> None:
    """What `init` wrote and what to review."""
    out = console()
    manifest = report.manifest
    out.print(
        f"wrote bundle {report.path}: {manifest.name} v{manifest.version} ({manifest.runtime}, {manifest.task}), "
        f"{samples} samples, {len(manifest.golden.cases) if manifest.golden else 0} golden cases"
    )
    out.print(f"input contract: {manifest.input.model_dump()}")
    out.print(f"output decoding: {manifest.output.model_dump()}")
    for item in report.review:
        out.print(f"review: {item}")
