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
    )


def _failure(report: GoldenReport) -> str:
    failed = [case for case in report.cases if not case.passed]
    case = failed[0]
    why = case.error or f"deviation {case.max_deviation:.3g} over the tolerance {report.tolerance:g}"
    more = f" (and {len(failed) - 1} more case(s))" if len(failed) > 1 else ""
    return f"{case.input}: {why}{more}"


def _step(progress: ProgressFn | None, what: str, done: int) -> None:
    if progress is not None:
        progress(what, done, STEPS)


__all__ = ["Packed", "pack_bundle"]
