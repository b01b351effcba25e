"""The bundle's side of drift: per-item features of its calibration samples and their thresholds, in reference.json.

`model init` (through `init_bundle`'s `features` hook; the inference core does not import the monitors) stores, under
the reference's `features` key, the samples' input and output feature rows (`agent.monitor.features`) and thresholds
calibrated for the default window and ERT (`agent.monitor.calibration`, the samples treated as a population: shuffled,
a third held out). A device whose `[monitor.drift]` asks for another window or ERT calibrates again from the same rows
when the model is loaded (a fraction of a second, off the loop); a bundle without rows (made before) gets no
comparison with its training data, only the site baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.inference.manifest import ImageInput, InputContract, WindowInput
from agent.inference.results import Result
from agent.monitor.calibration import Calibration, calibrate
from agent.monitor.features import FeatureSpec, Mode, spec_for

DEFAULT_EVERY_N = 100
DEFAULT_INPUT_EVERY = 4
DEFAULT_ERT_ITEMS = 1_000_000.0


class FeatureTable(BaseModel):
    """reference.json `features`: the calibration samples' feature rows and the thresholds made from them."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    inputs: list[list[float]] = Field(description="One input feature row per sample.")
    outputs: list[list[float]] = Field(
        description="One output feature row per sample (the model's result on it)."
    )
    calibration: Calibration | None = None


def spec_of(contract: InputContract, task: str, labels: Sequence[str]) -> FeatureSpec:
    """The feature layout of a model with this input contract, task and labels."""
    mode: Mode = (
        "image"
        if isinstance(contract, ImageInput)
        else "window"
        if isinstance(contract, WindowInput)
        else "tensor"
    )
    channels = tuple(contract.channels) if isinstance(contract, WindowInput) else ()
    return spec_for(mode, task, channels, labels)


def feature_table(
    contract: InputContract,
    task: str,
    labels: Sequence[str],
    samples: Sequence[np.ndarray],
    results: Sequence[Result],
    *,
    every_n: int = DEFAULT_EVERY_N,
    input_every: int = DEFAULT_INPUT_EVERY,
    ert_items: float = DEFAULT_ERT_ITEMS,
) -> dict[str, Any]:
    """The `features` entry of a bundle's reference.json (JSON-ready)."""
    spec = spec_of(contract, task, labels)
    rows_in, rows_out = [], []
    for sample, result in zip(samples, results, strict=True):
        features = spec.input_features(np.asarray(sample)) if spec.input_size else np.zeros(0)
        if features is None:
            continue
        rows_in.append(features)
        rows_out.append(spec.output_features(result))
    inputs = np.array(rows_in).reshape(len(rows_in), spec.input_size)
    outputs = np.array(rows_out).reshape(len(rows_out), spec.output_size)
    calibration = (
        _population(spec, inputs, outputs, every_n, input_every, ert_items) if len(outputs) >= 4 else None
    )
    table = FeatureTable(
        fingerprint=spec.fingerprint,
        inputs=[[float(f"{v:.4g}") for v in row] for row in inputs],
        outputs=[[float(f"{v:.4g}") for v in row] for row in outputs],
        calibration=calibration,
    )
    return table.model_dump()


def bundle_calibration(
    raw: dict[str, Any] | None, spec: FeatureSpec, *, every_n: int, input_every: int, ert_items: float
) -> Calibration | None:
    """Thresholds against a bundle's samples for this window and ERT: the stored ones, else calibrated anew.

    None where the reference has no feature rows or they were made for another feature layout.
    """
    if not raw:
        return None
    table = FeatureTable.model_validate(raw)
    if table.fingerprint != spec.fingerprint or len(table.outputs) < 4:
        return None
    stored = table.calibration
    if (
        stored is not None
        and stored.every_n == every_n
        and stored.input_every == input_every
        and stored.ert_items == float(ert_items)
    ):
        return stored
    inputs = np.array(table.inputs, np.float64).reshape(len(table.inputs), spec.input_size)
    outputs = np.array(table.outputs, np.float64).reshape(len(table.outputs), spec.output_size)
    return _population(spec, inputs, outputs, every_n, input_every, ert_items)


def _population(
    spec: FeatureSpec,
    inputs: np.ndarray,
    outputs: np.ndarray,
    every_n: int,
    input_every: int,
    ert_items: float,
) -> Calibration:
    """Thresholds from a bundle's samples: exchangeable (shuffled, drawn one by one), an input for every sample."""
    return calibrate(
        spec,
        inputs,
        outputs,
        input_step=1,
        every_n=every_n,
        input_every=input_every,
        ert_items=ert_items,
        sequential=False,
    )
