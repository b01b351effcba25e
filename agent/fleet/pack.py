"""`bundle pack`: a bundle folder checked by the inference core, golden-tested on this machine, packed for release.

Nothing is packed that a device would refuse at its golden gate: the bundle is loaded with `Model.load` (manifest
against the model's own tensors, every file against its sha256 and size), its golden cases run through
`run_golden` and must all pass (a bundle without golden cases is refused: the device's self-test has nothing to run),
then `agent.release.archive.pack` writes the reproducible archive and `block_index` cuts it into blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.fleet.errors import ReleaseRefused
from agent.fleet.release import capabilities_of
from agent.fleet.repository import ProgressFn
from agent.inference import Model
from agent.inference.golden import GoldenReport, run_golden
from agent.inference.reference import DriftReference
from agent.release.archive import pack
from agent.release.chunking import block_index

STEPS = 4


@dataclass(frozen=True)
class Packed:
    """A packed bundle: what it is, how its golden test went, and the archive's size, hash and blocks."""

    archive: Path
    name: str
    version: int
    runtime: str
    input_kind: str
    golden: GoldenReport
    size: int
    sha256: str
    blocks: int
    chunking: str
    drift: str
    """What the bundle's drift reference gives a device: feature rows and the window/ERT of their thresholds."""


def pack_bundle(model_dir: Path, out: Path, progress: ProgressFn | None = None) -> Packed:
    """Checks, golden-tests and packs the bundle in `model_dir` into the archive `out`."""
    if not out.parent.is_dir():
        raise ReleaseRefused(f"cannot write {out}: {out.parent} is not a folder")
    _step(progress, f"loading {model_dir}", 0)
    model = Model.load(model_dir)
    try:
        manifest = model.manifest
        capabilities = capabilities_of(manifest)
        _step(progress, "running the golden self-test", 1)
        report = run_golden(model)
    finally:
        model.close()
    if not report.cases:
        raise ReleaseRefused(
            f"{manifest.name} v{manifest.version} has no golden cases: a device could not self-test it"
        )
    if not report.passed:
        raise ReleaseRefused(
            f"{manifest.name} v{manifest.version} fails its golden self-test: {_failure(report)}"
        )
    _step(progress, f"packing {out.name}", 2)
    pack(model_dir, out)
    _step(progress, "cutting the block index", 3)
    index = block_index(out)
    _step(progress, "packed", 4)
    return Packed(
        out,
        manifest.name,
        manifest.version,
        capabilities.runtime,
        capabilities.input_kind,
        report,
        index.archive_length,
        index.archive_sha256,
        len(index.blocks),
        index.chunking,
        _drift_note(model_dir, manifest.reference),
    )


def _drift_note(model_dir: Path, reference: str | None) -> str:
    if not reference:
        return "no drift reference: devices watch only their site baseline"
    try:
        raw = DriftReference.model_validate_json((model_dir / reference).read_bytes())
    except (OSError, ValueError) as problem:
        raise ReleaseRefused(f"{reference} cannot be read: {problem}") from None
    features = raw.features or {}
    rows = len(features.get("outputs") or ())
    if not rows:
        return (
            "no per-sample feature rows (made before calibrated drift): devices watch only their site baseline; "
            "`edge-agent model init` or scripts/refresh_references.py adds them"
        )
    calibration = features.get("calibration") or {}
    return (
        f"{rows} sample feature rows, thresholds for windows of {calibration.get('every_n', '?')} items and one "
        f"false alarm per {calibration.get('ert_items', '?'):g} items"
        if isinstance(calibration.get("ert_items"), int | float)
        else f"{rows} sample feature rows (devices calibrate them)"
    )


def _failure(report: GoldenReport) -> str:
    failed = [case for case in report.cases if not case.passed]
    case = failed[0]
    why = case.failure or f"deviation {case.max_deviation:.3g} over the tolerance {report.tolerance:g}"
    more = f" (and {len(failed) - 1} more case(s))" if len(failed) > 1 else ""
    return f"{case.input}: {why}{more}"


def _step(progress: ProgressFn | None, what: str, done: int) -> None:
    if progress is not None:
        progress(what, done, STEPS)


__all__ = ["Packed", "pack_bundle"]
