#!/usr/bin/env python3
"""Rebuilds the bundled INT8 models in models/ from real data sets (dev tool; needs the `build` extra).

    .venv/bin/pip install -e '.[build]'      # TensorFlow CPU, onnx, scikit-learn, scikit-image (+ sktime data)
    .venv/bin/python scripts/build_models.py

Training and conversion live in scripts/modelbuild/ (they write models and sample sets to build/stage/); this script
turns each staged model into a bundle with the agent's own `init_bundle` (manifest, hashes, golden vectors, drift
reference), keeps the float twin and a held-out evaluation set under models/float/ for the float-vs-INT8 agreement
test, and writes models/REPORT.json with what was measured. The built artifacts are committed: devices and tests
never need TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from agent.inference.bundler import init_bundle  # noqa: E402
from agent.inference.manifest import ImageInput, WindowInput  # noqa: E402
from agent.monitor.reference import feature_table  # noqa: E402

# Latency budgets written into the manifests: invoke p99 on a Raspberry Pi 4 class device, with headroom.
BUDGETS_MS = {"digits-cls": 5.0, "digits-det": 20.0, "motion-cls": 5.0, "motion-ae": 5.0}
EVAL_LIMIT = 150  # held-out inputs kept for the agreement test


def contract_of(spec: dict[str, Any]) -> ImageInput | WindowInput:
    """The input contract a staged spec describes."""
    data = spec["input"]
    return ImageInput.model_validate(data) if data["kind"] == "image" else WindowInput.model_validate(data)


def build_bundle(spec: dict[str, Any], stage: Path, models: Path) -> dict[str, Any]:
    """Makes models/<bundle>/ from a staged spec, and models/float/<bundle>.* for the agreement test."""
    out = models / spec["bundle"]
    if out.exists():
        shutil.rmtree(out)
    with np.load(stage / spec["samples"], allow_pickle=False) as samples_file:
        samples = list(samples_file["x"])
    report = init_bundle(
        stage / spec["model_file"],
        out,
        name=spec["name"],
        version=spec["version"],
        task=spec["task"],
        samples=samples,
        labels=spec.get("labels"),
        input_contract=contract_of(spec),
        output=spec["output"],
        golden_count=4,
        description=spec.get("description", ""),
        latency_budgets=[{"device_class": "rpi4", "p99_ms": BUDGETS_MS[spec["name"]]}],
        features=feature_table,
    )
    floats = models / "float"
    floats.mkdir(exist_ok=True)
    float_file = stage / spec["float_model_file"]
    shutil.copyfile(float_file, floats / f"{spec['bundle']}{float_file.suffix}")
    with np.load(stage / spec["eval"], allow_pickle=True) as eval_file:
        kept = {key: eval_file[key][:EVAL_LIMIT] for key in eval_file.files}
    np.savez_compressed(floats / f"{spec['bundle']}.eval.npz", **kept)
    print(
        f"built {out.relative_to(ROOT)}: {report.manifest.name} v{report.manifest.version}, "
        f"{(out / report.manifest.model).stat().st_size / 1024:.0f} KiB"
    )
    return {"bundle": spec["bundle"], "metrics": spec.get("metrics", {})}


def main() -> int:
    """Trains, converts and bundles every model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "stage")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--skip-training", action="store_true", help="reuse what build/stage already holds")
    args = parser.parse_args()
    if args.skip_training:
        specs = [json.loads(p.read_text()) for p in sorted(args.stage.glob("*.spec.json"))]
    else:
        import modelbuild

        args.stage.mkdir(parents=True, exist_ok=True)
        specs = modelbuild.stage_all(args.stage)
    report = [build_bundle(spec, args.stage, args.models) for spec in specs]
    (args.models / "REPORT.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.models / 'REPORT.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
