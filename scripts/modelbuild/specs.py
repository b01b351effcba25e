"""Bundle spec dicts and the sample / evaluation files they point at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

Spec = dict[str, Any]


def make_spec(
    *,
    bundle: str,
    name: str,
    task: str,
    model_file: str,
    float_model_file: str,
    labels: list[str] | None,
    input_contract: dict[str, Any],
    output: dict[str, Any],
    samples: str,
    evaluation: str,
    metrics: dict[str, Any],
) -> Spec:
    """Assemble one bundle spec in the format the agent's bundle tooling consumes (version 1)."""
    return {
        "bundle": bundle,
        "name": name,
        "version": 1,
        "task": task,
        "model_file": model_file,
        "float_model_file": float_model_file,
        "labels": labels,
        "input": input_contract,
        "output": output,
        "samples": samples,
        "eval": evaluation,
        "metrics": metrics,
    }


def write_spec(stage_dir: Path, spec: Spec) -> None:
    """Write ``<bundle>.spec.json`` into the stage directory."""
    path = stage_dir / f"{spec['bundle']}.spec.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")


def save_npz(path: Path, **arrays: np.ndarray) -> str:
    """Write a compressed ``.npz`` and return its file name (for the spec)."""
    payload: dict[str, Any] = dict(arrays)  # numpy's stub would also match ``allow_pickle`` here
    np.savez_compressed(path, **payload)
    return path.name


def rounded(values: dict[str, float]) -> dict[str, float | int]:
    """Round every metric value to 5 significant digits (integers stay integers) for a readable spec."""
    return {key: value if isinstance(value, int) else float(f"{value:.5g}") for key, value in values.items()}
