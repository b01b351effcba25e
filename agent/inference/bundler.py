"""Drafting a bundle from a bare `.tflite`/`.onnx` file (`edge-agent model init`).

The input contract is drafted from the model's own tensors (layout, size, channels; for integer inputs the value range
the quantization implies); what the model cannot tell (colour order, mean/std of a float model) comes from the caller
with defaults and is listed in the report for review. Golden vectors and the drift reference are computed from
sample inputs by the agent's own pre-processing and runtime. The bundle is written to a temporary folder and renamed
into place, so an interrupted init leaves nothing half-made.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from agent.errors import InputError, ManifestError
from agent.fsutil import fsync_dir, write_atomic
from agent.inference.bundle import Bundle, file_entry
from agent.inference.golden import expected_outputs
from agent.inference.inputs import load_inputs
from agent.inference.manifest import (
    MANIFEST_NAME,
    ImageInput,
    InputContract,
    Manifest,
    Task,
    TensorInput,
    WindowInput,
)
from agent.inference.model import Model
from agent.inference.options import RuntimeOptions
from agent.inference.reference import compute_reference
from agent.inference.results import AnomalyResult, ClassificationResult, Result
from agent.inference.runtimes import Shapes, TensorSpec, open_backend, runtime_for
from agent.types import int_range
from agent.validation import describe_validation_error

FeatureHook = Callable[
    [InputContract, str, Sequence[str], Sequence[np.ndarray], Sequence[Result]], dict[str, Any]
]
"""Makes reference.json's `features` entry from the contract, task, labels, samples and the model's results."""


@dataclass
class InputHints:
    """What the caller says about the input where the model cannot tell."""

    color: str = "RGB"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "stretch"
    pad_value: int = 114
    channels: tuple[str, ...] | None = None


@dataclass
class InitReport:
    """The written bundle and what a person should review."""

    path: Path
    manifest: Manifest
    review: list[str] = field(default_factory=list)


def _range_from_quantization(spec: TensorSpec) -> tuple[float, float] | None:
    quant = spec.quantization
    if spec.dtype.kind not in "iu" or quant is None:
        return None
    low, high = int_range(spec.dtype)
    return (low - quant.zero_point) * quant.scale, (high - quant.zero_point) * quant.scale


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


def draft_input(
    spec: TensorSpec, hints: InputHints, samples: Sequence[np.ndarray], review: list[str]
) -> InputContract:
    """An input contract drafted from the model's input tensor, the hints and the samples."""
    shape = spec.shape if len(spec.shape) != 3 or spec.shape[0] in (1, -1) else (1, *spec.shape)
    if len(shape) == 4 and (shape[3] in (1, 3) or shape[1] in (1, 3)):
        nchw = shape[1] in (1, 3) and shape[3] not in (1, 3)
        height, width = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
        channels = shape[1] if nchw else shape[3]
        if height <= 0 or width <= 0:
            pin = ",".join(str(d) if d > 0 else "N" for d in (1, *shape[1:]))
            raise ManifestError(
                f"input '{spec.name}' has a free size {_dims(spec.shape)}: pin it, e.g. "
                f"--input-shape {spec.name}={pin} with the N the model was trained for"
            )
        color = "GRAY" if channels == 1 else hints.color
        mean, std = hints.mean, hints.std
        implied = _range_from_quantization(spec)
        if mean is None or std is None:
            if implied is not None:
                low, high = implied
                mean = (round(-low * 255.0 / (high - low), 3) + 0.0,)
                std = (round(255.0 / (high - low), 3),)
                review.append(
                    f"mean/std {mean[0]:.4g}/{std[0]:.4g} inferred from the input quantization range "
                    f"[{low:.4g}, {high:.4g}] (pixels 0..255 mapped onto it)"
                )
            else:
                mean, std = (0.0,), (255.0,)
                review.append(
                    "mean/std default to 0/255 (pixels scaled to 0..1): pass --mean/--std if the model was "
                    "trained otherwise"
                )
        if channels == 3 and hints.color == "RGB":
            review.append("colour order defaults to RGB: pass --color BGR if the model was trained on BGR")
        return ImageInput(
            layout="NCHW" if nchw else "NHWC",
            color=color,
            width=width,
            height=height,
            resize=hints.resize,
            mean=mean,
            std=std,
            pad_value=hints.pad_value,
        )
    if len(shape) == 3 and shape[1] > 0 and shape[2] > 0:
        names = hints.channels
        nct = names is not None and len(names) == shape[1] and len(names) != shape[2]
        length, count = (shape[2], shape[1]) if nct else (shape[1], shape[2])
        names = names or tuple(f"ch{i}" for i in range(count))
        if len(names) != count:
            raise ManifestError(f"{len(names)} channel names given, the model input has {count} channels")
        mean, std = hints.mean, hints.std
        if (mean is None or std is None) and samples:
            stacked = np.concatenate([np.asarray(s, np.float64).reshape(-1, count) for s in samples])
            mean = tuple(float(v) for v in stacked.mean(axis=0))
            std = tuple(float(max(v, 1e-6)) for v in stacked.std(axis=0))
            review.append("per-channel mean/std computed from the samples")
        review.append(
            f"window layout drafted as {'NCT' if nct else 'NTC'} ({length} samples x {count} channels)"
        )
        return WindowInput(
            layout="NCT" if nct else "NTC",
            length=length,
            channels=names,
            mean=mean or (0.0,),
            std=std or (1.0,),
        )
    if (
        len(shape) == 2
        and shape[0] in (1, -1)
        and shape[1] > 0
        and hints.channels
        and len(hints.channels) == 1
    ):
        # [1, time]: one channel, as audio models take their samples
        review.append(f"one-channel window of {shape[1]} samples ([1, time] input)")
        return WindowInput(
            layout="NCT",
            length=shape[1],
            channels=hints.channels,
            mean=hints.mean or (0.0,),
            std=hints.std or (1.0,),
        )
    review.append("input fed as a raw tensor (not an image or a [1, time, channel] window)")
    return TensorInput()


def _size(spec: TensorSpec) -> int:
    return int(np.prod([d for d in spec.shape if d > 0]))


def draft_output(
    task: Task,
    given: dict[str, Any] | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    review: list[str] | None = None,
) -> dict[str, Any]:
    """Output decoding parameters: defaults for the task and the model's outputs, overridden by the caller's."""
    given = given or {}
    notes = review if review is not None else []
    drafted: dict[str, Any] = {}
    if task == "detection":
        drafted = {"format": {4: "ssd", 2: "anchors"}.get(len(outputs), "yolo")}
        if drafted["format"] == "anchors" and "anchors" not in given:
            notes.append(
                "2 outputs read as an anchor head (regressors, scores): give the anchor options and keypoint "
                "names with --output-options (docs/byom.md)"
            )
    elif task == "anomaly":
        same_shape = outputs[0].shape == inputs[0].shape
        drafted = {"mode": "reconstruction" if same_shape else "score", "threshold": 0.0}
    elif task == "segmentation":
        maps = [i for i, spec in enumerate(outputs) if len(spec.shape) >= 3]
        index = max(maps or [0], key=lambda i: _size(outputs[i]))
        drafted = {"output_index": index}
        notes.append(f"segmentation map: output '{outputs[index].name}' {list(outputs[index].shape)}")
    elif task == "keypoints":
        index = max(range(len(outputs)), key=lambda i: _size(outputs[i]))
        size = _size(outputs[index])
        per = 3 if size % 3 == 0 else 2
        drafted = {"output_index": index, "values_per_point": per}
        single = [i for i, spec in enumerate(outputs) if i != index and _size(spec) == 1]
        if single:
            drafted["presence_index"] = single[0]
        if "values_per_point" not in given:
            notes.append(
                f"keypoints: output '{outputs[index].name}' read as {size // per} points of {per} values"
                + (f", presence from output '{outputs[single[0]].name}'" if single else "")
                + ': correct with --output-options \'{"values_per_point": 2, "names": [...]}\''
            )
    return {**drafted, **given}


def _save_input(folder: Path, stem: str, contract: InputContract, data: np.ndarray) -> str:
    if isinstance(contract, ImageInput):
        ok, encoded = cv2.imencode(".png", data)
        if not ok:
            raise InputError("cannot encode a golden image as PNG")
        (folder / f"{stem}.png").write_bytes(encoded.tobytes())
        return f"{stem}.png"
    np.save(folder / f"{stem}.npy", np.asarray(data))
    return f"{stem}.npy"


def _pick_golden(results: Sequence[Result], count: int) -> list[int]:
    """Sample indices for golden cases: confident and of distinct top labels first."""
    order = list(range(len(results)))
    tops = [r.top for r in results if isinstance(r, ClassificationResult)]
    if results and len(tops) == len(results):  # a classifier's results
        scores = [top.score if top else 0.0 for top in tops]
        labels = [top.label if top else "" for top in tops]
        order.sort(key=lambda i: -scores[i])
        seen: set[str] = set()
        first = []
        for i in order:
            label = labels[i]
            if label not in seen:
                seen.add(label)
                first.append(i)
        order = first + [i for i in order if i not in first]
    return order[:count]


def output_limits(
    outputs: Sequence[Sequence[np.ndarray]], specs: Sequence[TensorSpec], rtol: float = 0.02
) -> list[dict[str, Any]]:
    """Per-output golden limits from the outputs of every sample: `rtol` of each output's own range, plus an
    absolute part of 4 quantization steps for an integer output (a float floor otherwise)."""
    limits = []
    for index, spec in enumerate(specs):
        values = [np.asarray(case[index], np.float64) for case in outputs if case[index].size]
        low = min((float(v.min()) for v in values), default=0.0)
        high = max((float(v.max()) for v in values), default=0.0)
        largest = max(abs(low), abs(high))
        quant = spec.quantization
        step = quant.scale if quant is not None and spec.dtype.kind in "iu" else 0.0
        atol = max(4 * step, 1e-4, 1e-5 * largest)
        limits.append(
            {
                "name": spec.name,
                "atol": float(f"{atol:.6g}"),
                "rtol": rtol,
                "range": float(f"{high - low:.6g}"),
            }
        )
    return limits


def _fresh(model: Model, sample: np.ndarray) -> Result:
    """One sample's result from the model's initial state (a stateful model's samples stand alone)."""
    model.reset_state()
    return model.infer(sample)


def _manifest(base: dict[str, Any], folder: Path) -> Manifest:
    files = {
        p.relative_to(folder).as_posix(): file_entry(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }
    try:
        return Manifest.model_validate({**base, "files": files})
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, "the drafted manifest")) from error


def init_bundle(
    model_file: Path,
    out: Path,
    *,
    name: str,
    version: int,
    task: Task,
    samples: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    hints: InputHints | None = None,
    input_contract: InputContract | None = None,
    output: dict[str, Any] | None = None,
    golden_count: int = 4,
    tolerance: float | None = None,
    rtol: float = 0.02,
    description: str = "",
    latency_budgets: Sequence[dict[str, Any]] = (),
    options: RuntimeOptions | None = None,
    features: FeatureHook | None = None,
    input_shapes: Shapes | None = None,
    inputs: Sequence[dict[str, Any]] = (),
) -> InitReport:
    """Writes a complete, verified bundle folder at `out` from a model file and sample inputs.

    `features` (the drift monitor's `agent.monitor.reference.feature_table`, passed in by the CLI: the inference core
    does not import the monitors) adds per-sample feature rows and calibrated drift thresholds to reference.json.
    """
    if out.exists() and any(out.iterdir()):
        raise ManifestError(f"{out} exists and is not empty; choose a new folder")
    if not samples:
        raise InputError(
            "at least one sample input is needed to compute golden vectors and the drift reference"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)
    try:
        report = _build(
            model_file,
            work,
            name=name,
            version=version,
            task=task,
            samples=samples,
            labels=labels,
            hints=hints or InputHints(),
            input_contract=input_contract,
            output=output,
            golden_count=golden_count,
            tolerance=tolerance,
            rtol=rtol,
            description=description,
            latency_budgets=latency_budgets,
            options=options,
            features=features,
            input_shapes=dict(input_shapes or {}),
            inputs=inputs,
        )
        if out.exists():
            out.rmdir()
        work.replace(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report.path = out
    return report


def _build(
    model_file: Path,
    work: Path,
    *,
    name: str,
    version: int,
    task: Task,
    samples: Sequence[np.ndarray],
    labels: Sequence[str] | None,
    hints: InputHints,
    input_contract: InputContract | None,
    output: dict[str, Any] | None,
    golden_count: int,
    tolerance: float | None,
    rtol: float,
    description: str,
    latency_budgets: Sequence[dict[str, Any]],
    options: RuntimeOptions | None,
    features: FeatureHook | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    inputs: Sequence[dict[str, Any]] = (),
) -> InitReport:
    model_name = f"model{model_file.suffix.lower()}"
    runtime_for(model_file)
    shutil.copyfile(model_file, work / model_name)
    input_shapes = input_shapes or {}
    backend = open_backend(work / model_name, options, shapes=input_shapes)
    review: list[str] = []
    data_spec = backend.inputs[0]
    if inputs:
        data_names = [item["name"] for item in inputs if item.get("role") == "data"]
        found = [spec for spec in backend.inputs if spec.name in data_names]
        if len(data_names) != 1 or not found:
            raise ManifestError('`inputs` must name exactly one data input of the model (role "data")')
        data_spec = found[0]
    elif len(backend.inputs) != 1:
        names = ", ".join(f"'{s.name}'" for s in backend.inputs)
        raise ManifestError(
            f"the model has {len(backend.inputs)} inputs ({names}): describe each with --inputs (a data input, "
            "constants, states fed from outputs; docs/byom.md)"
        )
    for pinned_name, pinned in input_shapes.items():
        review.append(f"input '{pinned_name}' pinned to {list(pinned)} at load (the model file is unchanged)")
    contract = input_contract or draft_input(data_spec, hints, samples, review)
    base: dict[str, Any] = {
        "schema": 1,
        "name": name,
        "version": version,
        "description": description,
        "task": task,
        "model": model_name,
        "input": contract.model_dump(),
        "input_shapes": {name: list(shape) for name, shape in input_shapes.items()},
        "inputs": list(inputs or ()),
        "latency_budgets": list(latency_budgets),
        "output": draft_output(task, output, (data_spec,), backend.outputs, review),
    }
    if labels:
        (work / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        base["labels"] = "labels.txt"
    model = Model(Bundle(work, _manifest(base, work), tuple(labels or ())), backend=backend)
    results = [_fresh(model, sample) for sample in samples]
    if task == "anomaly" and "threshold" not in (output or {}):
        scores = np.array([r.score for r in results if isinstance(r, AnomalyResult)])
        threshold = float(np.quantile(scores, 0.995) * 1.25) if scores.size else 0.0
        base["output"] = {**base["output"], "threshold": threshold}
        review.append(f"anomaly threshold {threshold:.4g}: 1.25 x the 99.5th percentile of the sample scores")
        model = Model(Bundle(work, _manifest(base, work), tuple(labels or ())), backend=backend)
        results = [_fresh(model, sample) for sample in samples]
    golden_dir = work / "golden"
    golden_dir.mkdir()
    cases = []
    for number, index in enumerate(_pick_golden(results, golden_count)):
        stored = _save_input(golden_dir, f"case{number}", contract, samples[index])
        reloaded = load_inputs(golden_dir / stored, contract)[0][1]
        expected = expected_outputs(model, reloaded)
        arrays: dict[str, Any] = {f"output_{i}": a for i, a in enumerate(expected)}
        np.savez(golden_dir / f"case{number}.expected.npz", **arrays)
        cases.append(
            {
                "input": f"golden/{stored}",
                "expected": f"golden/case{number}.expected.npz",
                "note": results[index].summary(),
            }
        )
    if tolerance is not None:  # the caller's one absolute limit for every output
        base["golden"] = {"tolerance": tolerance, "cases": cases}
    else:
        every = [expected_outputs(model, sample) for sample in samples]
        limits = output_limits(every, backend.outputs, rtol)
        widest = max(limit["atol"] + limit["rtol"] * limit["range"] for limit in limits)
        # `tolerance` (the widest limit) is what agents made before per-output limits read
        base["golden"] = {"tolerance": float(f"{widest:.6g}"), "outputs": limits, "cases": cases}
    reference = compute_reference(contract, task, samples, results)
    if features is not None:
        reference.features = features(contract, task, tuple(labels or ()), samples, results)
    (work / "reference.json").write_text(reference.model_dump_json(by_alias=True), encoding="utf-8")
    base["reference"] = "reference.json"
    manifest = _manifest(base, work)
    backend.close()
    write_atomic(
        work / MANIFEST_NAME, (json.dumps(manifest.to_json_dict(), indent=2) + "\n").encode(), mode=0o644
    )
    return InitReport(work, manifest, review)
