#!/usr/bin/env python3
"""Adds drift feature rows and calibrated thresholds to the bundled models' reference.json (no TensorFlow needed).

`scripts/build_models.py` does this when it rebuilds the bundles (`init_bundle(..., features=feature_table)`); this
script does it for the bundles as they are: the feature rows come from each bundle's held-out inputs shipped in
`models/float/<bundle>.eval.npz` (the calibration samples the pooled histograms were made from are not shipped),
run through the bundled INT8 model, and the manifest's hash of reference.json is updated.

    .venv/bin/python scripts/refresh_references.py [BUNDLE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.fsutil import write_atomic  # noqa: E402
from agent.inference import Model, load_bundle  # noqa: E402
from agent.inference.bundle import file_entry  # noqa: E402
from agent.inference.reference import DriftReference  # noqa: E402
from agent.monitor.reference import feature_table  # noqa: E402


def refresh(folder: Path) -> str:
    """Rewrites one bundle's reference.json with feature rows; returns a line for the log."""
    bundle = load_bundle(folder)
    manifest = bundle.manifest
    if not manifest.reference:
        return f"{folder.name}: no reference.json, skipped"
    with np.load(ROOT / "models" / "float" / f"{folder.name}.eval.npz", allow_pickle=False) as data:
        samples = list(data["x"])
    model = Model(bundle)
    try:
        results = [model.infer(sample) for sample in samples]
    finally:
        model.close()
    path = folder / manifest.reference
    reference = DriftReference.model_validate_json(path.read_bytes())
    reference.features = feature_table(manifest.input, manifest.task, bundle.labels, samples, results)
    write_atomic(path, reference.model_dump_json(by_alias=True).encode(), mode=0o644)
    data = manifest.to_json_dict()
    data["files"][manifest.reference] = file_entry(path).model_dump(mode="json")
    write_atomic(folder / "manifest.json", (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)
    load_bundle(folder)  # verifies the new hashes
    calibration = reference.features["calibration"] if reference.features else None
    held = f"{calibration['held_out_alarms']}/{calibration['held_out_windows']}" if calibration else "-"
    return f"{folder.name}: {len(samples)} samples, held-out windows over a threshold {held}"


def main() -> int:
    """Refreshes the named bundles, or every bundle under models/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("bundles", nargs="*", type=Path)
    args = parser.parse_args()
    folders = args.bundles or sorted(p.parent for p in (ROOT / "models").glob("*/manifest.json"))
    for folder in folders:
        print(refresh(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
