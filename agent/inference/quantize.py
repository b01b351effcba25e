"""Post-training static quantization of a float ONNX model, the format chosen by measurement on this machine.

Invariants: the float model is always the first trial and always kept, so a search always has an answer; a candidate
that cannot be built, loaded or run becomes a trial with a one-line `error`, never an exception out of the search;
agreement is measured on every sample; in each timing round every trial runs once, in a rotated order, so that load
drift hits all alike. `onnx` and `sympy` (the `quantize` extra) are imported only when a function needs them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from agent.errors import AgentError, InputError, ModelError, RuntimeUnavailable
from agent.inference.options import RuntimeOptions
from agent.inference.runtimes import Backend, open_backend
from agent.types import Array

if TYPE_CHECKING:
    import onnx

__all__ = [
    "DEFAULT_CANDIDATES",
    "TABLE_HEADER",
    "AgreementFn",
    "Candidate",
    "Metric",
    "QuantizeReport",
    "Trial",
    "prepare_float_model",
    "quantize_search",
]

INSTALL_HINT = "pip install 'edge-agent[quantize]'"
MIN_OPSET = 13  # per-channel QDQ (DequantizeLinear's axis) needs 13; older graphs are converted

Metric = Literal["top1", "correlation"]
AgreementFn = Callable[[Sequence[Sequence[Array]], Sequence[Sequence[Array]]], float]
"""(float model outputs per sample, candidate outputs per sample) -> agreement in [0, 1] (correlation: [-1, 1])."""
Calibration = Literal["minmax", "entropy", "percentile"]
IntType = Literal["int8", "uint8"]

TABLE_HEADER = ("format", "invoke ms", "vs float", "agreement", "result")


@dataclass(frozen=True)
class Candidate:
    """One quantized format to try: operator layout, activation and weight integer types, per-channel weights."""

    name: str
    format: Literal["float", "QDQ", "QOperator"]
    activations: IntType | None
    weights: IntType | None
    per_channel: bool = False

    @property
    def slug(self) -> str:
        """The candidate's file stem, e.g. `qdq-s8-s8-per-channel`."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "candidate"


FLOAT = Candidate("float", "float", None, None)
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("QDQ s8/s8", "QDQ", "int8", "int8"),
    Candidate("QDQ s8/s8 per-channel", "QDQ", "int8", "int8", per_channel=True),
    Candidate("QDQ u8/s8", "QDQ", "uint8", "int8"),
    Candidate("QOperator u8/s8", "QOperator", "uint8", "int8"),
    Candidate("QOperator u8/s8 per-channel", "QOperator", "uint8", "int8", per_channel=True),
    Candidate("QOperator s8/s8", "QOperator", "int8", "int8"),
)


@dataclass(frozen=True)
class Trial:
    """What one candidate measured: its file, median invoke latency, speed against float and agreement."""

    candidate: Candidate
    path: Path | None  # None when it failed to build
    invoke_ms: float | None
    speedup: float | None  # float ms / this ms
    agreement: float | None  # the float trial agrees with itself by definition: 1.0
    kept: bool  # agreement >= min_agreement; the float trial always
    error: str | None = None  # one line: why it failed to build, load or run

    def result(self, chosen: bool, min_agreement: float) -> str:
        """The table's last column: chosen, kept, dropped or the error."""
        if self.error is not None:
            return f"error: {self.error}"
        if chosen:
            return "chosen"
        return "kept" if self.kept else f"dropped (< {min_agreement:g})"


@dataclass(frozen=True)
class QuantizeReport:
    """Every trial (float first), the one chosen, and how agreement was judged."""

    trials: tuple[Trial, ...]
    chosen: Trial
    metric: str
    min_agreement: float
    calibration: str
    notes: tuple[
        str, ...
    ] = ()  # what preparing the float model did: opset conversion, Constant weights moved

    def table_rows(self) -> list[list[object]]:
        """One row per trial under TABLE_HEADER: format, ms, speed against float, agreement, result."""
        rows: list[list[object]] = []
        for trial in self.trials:
            rows.append(
                [
                    trial.candidate.name,
                    "-" if trial.invoke_ms is None else f"{trial.invoke_ms:.3f}",
                    "-" if trial.speedup is None else f"{trial.speedup:.2f}x",
                    "-" if trial.agreement is None else f"{trial.agreement:.4f}",
                    trial.result(trial is self.chosen, self.min_agreement),
                ]
            )
        return rows


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0].strip() if text else type(error).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _quantization_tools() -> Any:
    """onnxruntime.quantization, after checking that onnx and sympy are installed (one-line error naming the extra)."""
    for package, needed_for in (("onnx", "rewriting the model"), ("sympy", "symbolic shape inference")):
        try:
            importlib.import_module(package)
        except ImportError as error:
            raise RuntimeUnavailable(
                f"quantization needs {package} ({needed_for}), which is not installed: {INSTALL_HINT}"
            ) from error
    try:
        return importlib.import_module("onnxruntime.quantization")
    except ImportError as error:
        raise RuntimeUnavailable(
            f"onnxruntime.quantization cannot be imported ({_one_line(error)})"
        ) from error


def _replace_into(out: Path, write: Callable[[Path], None]) -> None:
    """Has `write` make a temp file next to `out`, then moves it into place."""
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    temp = Path(name)
    try:
        write(temp)
        temp.replace(out)
    finally:
        temp.unlink(missing_ok=True)


def prepare_float_model(source: Path, out: Path, input_shape: Sequence[int] | None = None) -> list[str]:
    """Writes a copy of the float model ready for quantization to `out`; returns notes of what was done.

    `input_shape` fixes the free dimensions of the (one) input in the copy, the shape the samples have: symbolic
    shape inference fails on some exporters' unnamed dimensions, and a pinned model runs at that shape anyway. When
    pre-processing fails all the same, the copy is quantized without it (and the note says so)."""
    quantization = _quantization_tools()
    import onnx
    from onnx import version_converter

    try:
        model = onnx.load(str(source))
    except Exception as error:  # onnx raises DecodeError, OSError...
        raise ModelError(f"{source.name}: not a readable ONNX model: {_one_line(error)}") from error
    notes: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as error:  # the converter raises RuntimeError/ConvertError for unsupported ops
            raise ModelError(
                f"{source.name}: cannot convert opset {opset} to {MIN_OPSET}: {_one_line(error)}"
            ) from error
        notes.append(f"opset {opset} converted to {MIN_OPSET}")
    if input_shape is not None and len(model.graph.input) >= 1:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if len(dims) == len(input_shape) and any(not d.HasField("dim_value") for d in dims):
            for dim, size in zip(dims, input_shape, strict=True):
                if not dim.HasField("dim_value"):
                    dim.dim_value = int(size)
            notes.append(f"input '{model.graph.input[0].name}' fixed at {list(input_shape)} for quantization")
    moved = _constants_to_initializers(model)
    if moved:
        notes.append(
            f"{moved} Constant node(s) moved to initializers (the quantizer skips Constant-node weights)"
        )

    def pre_process(temp: Path, symbolic: bool = True) -> None:
        with tempfile.TemporaryDirectory(prefix=".prepare.", dir=out.parent) as scratch:
            rewritten = Path(scratch) / "rewritten.onnx"
            onnx.save(model, str(rewritten))
            quantization.quant_pre_process(str(rewritten), str(temp), skip_symbolic_shape=not symbolic)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _replace_into(out, pre_process)
    except Exception as error:  # shape inference and the optimiser raise whatever they meet
        why = _one_line(error) if str(error).strip() else type(error).__name__
        try:  # ONNX's own shape inference and the optimiser, without the symbolic pass that failed
            _replace_into(out, partial(pre_process, symbolic=False))
            notes.append(
                f"symbolic shape inference failed ({why}): ONNX shape inference and optimisation only"
            )
            return notes
        except Exception:  # the fallback below says what happened
            pass
        try:
            _replace_into(out, lambda temp: onnx.save(model, str(temp)))
        except Exception as again:  # a model onnx cannot even serialise again
            raise ModelError(f"{source.name}: cannot write the prepared copy: {_one_line(again)}") from again
        notes.append(f"quant_pre_process failed ({why}): quantized without shape inference and optimisation")
        return notes
    notes.append("shape inference and graph optimisation (quant_pre_process)")
    return notes


def _constants_to_initializers(model: onnx.ModelProto) -> int:
    """Moves the main graph's tensor-valued Constant nodes into initializers; returns how many."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        value = (
            next((a for a in node.attribute if a.name == "value"), None)
            if node.op_type == "Constant"
            else None
        )
        if value is None or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            kept.append(node)
            continue
        tensor = value.t
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
    return moved


class _SampleReader:
    """The CalibrationDataReader protocol (ORT checks for `get_next` alone) over the samples, keyed by input name."""

    def __init__(self, name: str, samples: Sequence[Array]) -> None:
        self._feeds = [{name: sample} for sample in samples]
        self._next = 0

    def get_next(self) -> dict[str, Array] | None:
        """The next feed dict, None when all were given."""
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]


def _build(
    quantization: Any,
    prepared: Path,
    target: Path,
    candidate: Candidate,
    reader: _SampleReader,
    calibration: Calibration,
) -> None:
    types = {"int8": quantization.QuantType.QInt8, "uint8": quantization.QuantType.QUInt8}
    formats = {"QDQ": quantization.QuantFormat.QDQ, "QOperator": quantization.QuantFormat.QOperator}
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }
    if (
        candidate.format not in formats
        or candidate.activations not in types
        or candidate.weights not in types
    ):
        raise ValueError(
            f"not a quantized format: {candidate.format} {candidate.activations}/{candidate.weights}"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
        quantization.quantize_static(
            str(prepared),
            str(target),
            reader,
            quant_format=formats[candidate.format],
            activation_type=types[candidate.activations],
            weight_type=types[candidate.weights],
            per_channel=candidate.per_channel,
            calibrate_method=methods[calibration],
        )


def _pearson(a: Array, b: Array) -> float:
    if a.shape != b.shape:
        return 0.0
    if np.array_equal(a, b):
        return 1.0
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def correlation(reference: Sequence[Sequence[Array]], candidate: Sequence[Sequence[Array]]) -> float:
    """The lowest, over outputs, Pearson correlation of the float and candidate outputs stacked over samples."""
    if len(reference) != len(candidate) or any(
        len(r) != len(c) for r, c in zip(reference, candidate, strict=False)
    ):
        return 0.0
    worst = 1.0
    for index in range(len(reference[0]) if reference else 0):
        if any(np.size(r[index]) != np.size(c[index]) for r, c in zip(reference, candidate, strict=False)):
            return 0.0
        a = np.concatenate([np.asarray(r[index], dtype=np.float64).ravel() for r in reference])
        b = np.concatenate([np.asarray(c[index], dtype=np.float64).ravel() for c in candidate])
        worst = min(worst, _pearson(a, b))
    return worst


def top1(
    reference: Sequence[Sequence[Array]], candidate: Sequence[Sequence[Array]], output_index: int
) -> float:
    """The share of samples whose argmax of output `output_index` (a batch of 1, flattened) is the float model's."""
    if len(reference) != len(candidate) or not reference:
        return 0.0
    same = 0
    for r, c in zip(reference, candidate, strict=True):
        if len(c) > output_index and np.size(r[output_index]) == np.size(c[output_index]):
            same += int(np.argmax(r[output_index]) == np.argmax(c[output_index]))
    return same / len(reference)


@dataclass
class _Run:
    """One trial while the search is under way."""

    candidate: Candidate
    path: Path | None = None
    backend: Backend | None = None
    outputs: list[list[Array]] = field(default_factory=list)
    agreement: float | None = None
    ms: list[float] = field(default_factory=list)
    error: str | None = None

    def fail(self, error: BaseException | str) -> None:
        self.error = error if isinstance(error, str) else _one_line(error)
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def run_all(self, samples: Sequence[Array]) -> None:
        assert self.backend is not None
        self.outputs = [list(self.backend.invoke((sample,))) for sample in samples]


def _try(
    run: _Run, build: Callable[[Path], None], target: Path, options: RuntimeOptions, samples: Sequence[Array]
) -> None:
    """Builds one candidate into `target`, loads it and runs it on every sample; a failure goes into `run.error`."""
    target.unlink(missing_ok=True)  # a file left by an earlier search must not pass for this one
    try:
        build(target)
    except Exception as error:  # the quantizer raises ValueError, onnx and ORT errors of every kind
        run.fail(f"cannot build: {_one_line(error)}")
        return
    run.path = target
    try:
        run.backend = open_backend(target, options, "onnxruntime")
        run.run_all(samples)
    except AgentError as error:
        run.fail(error)


def _checked_samples(backend: Backend, samples: Sequence[Array]) -> list[Array]:
    if len(backend.inputs) != 1:
        raise InputError(
            f"quantization search needs a model with one input; this one has {len(backend.inputs)}"
        )
    spec = backend.inputs[0]
    if not samples:
        raise InputError("quantization needs at least one calibration sample")
    checked = []
    for index, sample in enumerate(samples):
        array = np.asarray(sample)
        fits = array.ndim == len(spec.shape) and all(
            w in (-1, d) for w, d in zip(spec.shape, array.shape, strict=False)
        )
        if array.dtype.kind != "f" or not fits:
            raise InputError(
                f"sample {index} is {array.dtype.name}{list(array.shape)}; the model takes {spec.describe()}"
            )
        checked.append(np.ascontiguousarray(array, dtype=spec.dtype))
    return checked


def _per_call_ms(backend: Backend, tensor: Array, calls: int) -> float:
    inputs = (tensor,)
    invoke = backend.invoke
    start = time.perf_counter()
    for _ in range(calls):
        invoke(inputs)
    return (time.perf_counter() - start) * 1000.0 / calls


def _time_rounds(
    runs: list[_Run], samples: Sequence[Array], rounds: int, calls: int, progress: Callable[[str], None]
) -> None:
    """Appends each live trial's per-call mean ms of every round, after a warm-up round that is not kept."""
    live = [run for run in runs if run.backend is not None]
    for index in range(-1, rounds):
        if index >= 0:
            progress(f"timing round {index + 1}/{rounds}")
        shift = index % len(live)
        tensor = samples[max(index, 0) % len(samples)]
        for run in live[shift:] + live[:shift]:
            if run.backend is None:
                continue
            try:
                ms = _per_call_ms(run.backend, tensor, calls if index >= 0 else max(calls // 4, 2))
            except AgentError as error:
                run.fail(error)
                continue
            if index >= 0:
                run.ms.append(ms)


def quantize_search(
    model_file: Path,
    samples: Sequence[Array],
    work: Path,
    *,
    metric: Metric | AgreementFn = "correlation",
    output_index: int = 0,
    min_agreement: float = 0.99,
    calibration: Calibration = "minmax",
    candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
    threads: int | None = None,
    rounds: int = 5,
    calls: int = 20,
    progress: Callable[[str], None] | None = None,
    evaluation: Sequence[Array] | None = None,
) -> QuantizeReport:
    """Quantizes the float model in each candidate format and chooses the fastest that keeps agreement.

    `samples` calibrate; `evaluation` (default: the samples) judge agreement and are timed."""
    say = progress or (lambda _message: None)
    if threads is not None and not 1 <= threads <= 64:
        raise InputError(f"threads must be between 1 and 64 (got {threads})")
    if rounds < 1 or calls < 1:
        raise InputError(f"rounds and calls must be at least 1 (got rounds={rounds}, calls={calls})")
    if calibration not in ("minmax", "entropy", "percentile"):
        raise InputError(f"unknown calibration '{calibration}': expected minmax, entropy or percentile")
    if isinstance(metric, str) and metric not in ("top1", "correlation"):
        raise InputError(f"unknown agreement metric '{metric}': expected top1, correlation or a function")
    if not model_file.is_file():
        raise ModelError(f"model file not found: {model_file}")
    quantization = _quantization_tools()
    work.mkdir(parents=True, exist_ok=True)
    options = RuntimeOptions(num_threads=threads)
    float_copy = work / f"{FLOAT.slug}.onnx"
    reference = _Run(FLOAT, float_copy)
    runs = [reference]
    try:
        if model_file.resolve() != float_copy.resolve():
            shutil.copyfile(model_file, float_copy)
        reference.backend = open_backend(float_copy, options, "onnxruntime")
        samples = _checked_samples(reference.backend, samples)
        judged = samples if evaluation is None else _checked_samples(reference.backend, evaluation)
        say(f"float model on {len(judged)} sample(s)")
        reference.run_all(judged)
        reference.agreement = 1.0
        if metric == "top1" and not 0 <= output_index < len(reference.outputs[0]):
            raise InputError(
                f"output_index {output_index} is out of range: the model has {len(reference.outputs[0])} output(s)"
            )

        def agree(outputs: list[list[Array]]) -> float:
            if metric == "top1":
                return top1(reference.outputs, outputs, output_index)
            if metric == "correlation":
                return correlation(reference.outputs, outputs)
            return float(metric(reference.outputs, outputs))

        prepared = work / "float-prepared.onnx"
        notes: tuple[str, ...] = ()
        prepare_error: str | None = None
        try:
            notes = tuple(prepare_float_model(model_file, prepared, samples[0].shape))
        except ModelError as error:
            prepare_error = f"preparing the float model failed: {error}"
        name = reference.backend.inputs[0].name
        slugs = {FLOAT.slug, prepared.stem}
        for candidate in candidates:
            if candidate.format == "float":
                continue  # the float model is always measured, as the first trial
            run = _Run(candidate)
            runs.append(run)
            if prepare_error is not None:
                run.fail(prepare_error)
                continue
            slug = candidate.slug
            while slug in slugs:
                slug += "-again"
            slugs.add(slug)
            say(f"quantizing {candidate.name}")
            reader = _SampleReader(name, samples)
            build = partial(
                _build, quantization, prepared, candidate=candidate, reader=reader, calibration=calibration
            )
            _try(run, build, work / f"{slug}.onnx", options, judged)
            if run.error is None:
                run.agreement = agree(run.outputs)
        _time_rounds(runs, judged, rounds, calls, say)
    finally:
        for run in runs:
            if run.backend is not None:
                run.backend.close()
    if reference.error is not None:
        raise ModelError(f"{model_file.name}: the float model failed while timing: {reference.error}")
    float_ms = statistics.median(reference.ms)
    trials = [_trial(run, float_ms, min_agreement, run is reference) for run in runs]
    chosen = min((t for t in trials if t.kept and t.invoke_ms is not None), key=lambda t: t.invoke_ms or 0.0)
    label = metric if isinstance(metric, str) else f"custom ({getattr(metric, '__name__', 'function')})"
    return QuantizeReport(tuple(trials), chosen, label, min_agreement, calibration, notes)


def _trial(run: _Run, float_ms: float, min_agreement: float, is_float: bool) -> Trial:
    ms = statistics.median(run.ms) if run.ms and run.error is None else None
    kept = is_float or (run.error is None and run.agreement is not None and run.agreement >= min_agreement)
    return Trial(
        candidate=run.candidate,
        path=run.path,
        invoke_ms=ms,
        speedup=None if ms is None else float_ms / ms,
        agreement=run.agreement if run.error is None else None,
        kept=kept,
        error=run.error,
    )
