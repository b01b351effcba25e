"""`edge-agent model quantize`: a float ONNX model becomes a bundle in the integer format that is fastest on this
device among those that still agree with the float model, measured here, not guessed.

The samples calibrate the activation ranges; the evaluation samples (the same ones unless `--eval-samples` is given)
judge agreement as the task implies: classification the top-1 label, detection the boxes matched one to one (same
label, IoU >= 0.5, as the shadow evaluation judges), anomaly and raw outputs the worst Pearson correlation of an
output. The float model is always a candidate, so a model that no format speeds up is bundled as it came.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from agent.cli.drafting import (
    Draft,
    add_draft_arguments,
    bounded,
    draft_from_args,
    load_samples,
    print_written,
)
from agent.errors import InputError
from agent.inference.bundle import load_bundle
from agent.inference.model import Model, Prepared
from agent.inference.options import RuntimeOptions
from agent.inference.quantize import TABLE_HEADER, AgreementFn, Metric, QuantizeReport, quantize_search
from agent.pipeline.agreement import agrees
from agent.term import console, print_json, table

TFLITE_PATH = (
    "full-integer quantization of a TensorFlow model needs TensorFlow's converter, a workstation tool: "
    "scripts/quantize_tflite.py (docs/byom.md); `model quantize` takes a float .onnx"
)


def _fraction(text: str) -> float:
    """0.99, or 99%."""
    return float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)


_share = bounded(_fraction, -1.0, 1.0, "an agreement such as 0.99 or 99%")
_count = bounded(int, 1, None, "a whole number >= 1")


def add_parser(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `model quantize`."""
    quantize = cmds.add_parser(
        "quantize",
        help="quantize a float .onnx on this device: try the integer formats, measure speed and agreement with "
        "the float model, bundle the fastest that agrees",
    )
    quantize.add_argument("model_file", type=Path, metavar="MODEL.onnx")
    add_draft_arguments(quantize)
    quantize.add_argument(
        "--eval-samples",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="inputs that judge agreement (default: the calibration samples)",
    )
    quantize.add_argument(
        "--calibration",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="how activation ranges are taken from the samples (default minmax)",
    )
    quantize.add_argument(
        "--min-agreement",
        type=_share,
        default=0.99,
        help="the least agreement with the float model a format must keep (default 0.99)",
    )
    quantize.add_argument("--threads", type=_count, default=None, help="runtime threads (default: all cores)")
    quantize.add_argument(
        "--rounds", type=_count, default=5, help="timing rounds, formats interleaved (default 5)"
    )
    quantize.add_argument(
        "--calls", type=_count, default=20, help="invokes per format per round (default 20)"
    )
    quantize.add_argument("--json", action="store_true", help="print JSON instead of tables")
    quantize.set_defaults(handler=run_quantize)


def prepared_inputs(model: Model, samples: Sequence[np.ndarray]) -> list[Prepared]:
    """Each sample pre-processed, copied out of the pre-processor's reused buffer."""
    out = []
    for sample in samples:
        prepared = model.prepare(sample)
        normalized = None if prepared.normalized is None else prepared.normalized.copy()
        out.append(Prepared(prepared.tensor.copy(), prepared.frame_map, normalized))
    return out


def agreement_for(model: Model, prepared: Sequence[Prepared]) -> tuple[Metric | AgreementFn, str]:
    """The agreement the task implies, and its name for the report."""
    task = model.manifest.task
    if task in ("classification", "detection"):

        def same_answer(
            reference: Sequence[Sequence[np.ndarray]], candidate: Sequence[Sequence[np.ndarray]]
        ) -> float:
            votes = [
                agrees(model.decode(list(ref), item), model.decode(list(got), item))
                for ref, got, item in zip(reference, candidate, prepared, strict=True)
            ]
            return sum(1 for vote in votes if vote) / max(len(votes), 1)

        return same_answer, "top-1 label" if task == "classification" else "detections matched (IoU >= 0.5)"
    return "correlation", "worst output correlation"


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer warns on the root logger about the formats it is asked to try: to the debug log."""
    root = logging.getLogger()
    level = root.level
    if not logging.getLogger("agent").isEnabledFor(logging.INFO):
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def run_quantize(args: argparse.Namespace) -> int:
    """Searches the formats, prints the table, writes the bundle of the chosen one."""
    if args.model_file.suffix.lower() == ".tflite":
        raise InputError(f"{args.model_file.name}: {TFLITE_PATH}")
    if args.model_file.suffix.lower() != ".onnx":
        raise InputError(f"{args.model_file.name}: expected a float .onnx model")
    if not args.model_file.is_file():
        raise InputError(f"model file not found: {args.model_file}")
    draft = draft_from_args(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.quantize.", dir=args.out.parent))
    try:
        report, evaluation, what = _search(args, draft, work)
        chosen = report.chosen
        assert chosen.path is not None
        source = args.model_file if chosen.candidate.format == "float" else chosen.path
        description = (
            f"{args.model_file.name}, {chosen.candidate.name}: chosen by `edge-agent model quantize` on this "
            f"device, {chosen.speedup or 1.0:.2f}x the float model's invoke speed, {what} agreement "
            f"{chosen.agreement if chosen.agreement is not None else 1.0:.4f} over {evaluation} samples"
        )
        written = draft.write(args, source, args.out, description)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_bundle(written.path)
    _print(args, report, what, evaluation, written.path)
    if not args.json:
        print_written(written, len(draft.samples))
    return 0


def _search(args: argparse.Namespace, draft: Draft, work: Path) -> tuple[QuantizeReport, int, str]:
    float_bundle = work / "float-bundle"
    draft.write(args, args.model_file, float_bundle)  # the contract and decoders, to prepare and judge
    model = Model.load(float_bundle, RuntimeOptions(num_threads=args.threads))
    try:
        calibration = prepared_inputs(model, draft.samples)
        evaluation = calibration
        if args.eval_samples:
            evaluation = prepared_inputs(model, load_samples(args.eval_samples, model.manifest.input))
        metric, what = agreement_for(model, evaluation)
        say = (lambda _m: None) if args.json else (lambda message: print(f"  {message}", file=sys.stderr))
        with quiet_quantizer():
            report = quantize_search(
                args.model_file,
                [p.tensor for p in calibration],
                work / "candidates",
                metric=metric,
                min_agreement=args.min_agreement,
                calibration=args.calibration,
                threads=args.threads,
                rounds=args.rounds,
                calls=args.calls,
                progress=say,
                evaluation=[p.tensor for p in evaluation],
            )
    finally:
        model.close()
    return report, len(evaluation), what


def _print(
    args: argparse.Namespace, report: QuantizeReport, what: str, evaluation: int, bundle: Path
) -> None:
    chosen = report.chosen
    if args.json:
        print_json(
            {
                "bundle": str(bundle),
                "chosen": chosen.candidate.name,
                "metric": what,
                "min_agreement": report.min_agreement,
                "calibration": report.calibration,
                "evaluation_samples": evaluation,
                "notes": list(report.notes),
                "trials": [
                    {
                        "format": t.candidate.name,
                        "invoke_ms": t.invoke_ms,
                        "speedup": t.speedup,
                        "agreement": t.agreement,
                        "kept": t.kept,
                        "chosen": t is chosen,
                        "error": t.error,
                    }
                    for t in report.trials
                ],
            }
        )
        return
    out = console()
    for note in report.notes:
        out.print(f"prepared: {note}")
    out.print(
        table(
            f"{args.model_file.name}: agreement = {what} over {evaluation} samples, at least "
            f"{report.min_agreement:g}; {report.calibration} calibration",
            list(TABLE_HEADER),
            report.table_rows(),
        )
    )
    if chosen.candidate.format == "float":
        out.print("no integer format was faster and kept agreement: the bundle holds the float model")
    else:
        out.print(
            f"chosen: {chosen.candidate.name}, {chosen.speedup or 1.0:.2f}x the float model on this device"
        )
