"""The model slot's vocabulary: its states, the outcome of a transition, and the checks a model passes to serve.

Pure data and the golden self-test; the state machine itself is `agent.daemon.model_service.ModelService`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import ModelError
from agent.inference import Model
from agent.inference.golden import GoldenReport, run_golden
from agent.inference.inputs import synthetic_input


class SlotState(str, enum.Enum):
    """Where the model slot stands."""

    NO_MODEL = "no-model"
    LOADING = "loading"
    SERVING = "serving"
    CANDIDATE_READY = "candidate-ready"
    STUCK = "stuck"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Outcome:
    """What a transition did: whether it worked, the state it left, and one line for a person."""

    ok: bool
    state: SlotState
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (command replies)."""
        return {"ok": self.ok, "state": self.state.value, "message": self.message, **self.evidence}


def evidence_of(model: Model) -> dict[str, Any]:
    """Name, version, runtime and bundle of a model, for events and status."""
    return {
        "name": model.name,
        "version": model.version,
        "runtime": model.manifest.runtime,
        "bundle": str(model.bundle.path),
    }


def measure_gate(model: Model, runs: int) -> tuple[GoldenReport, float | None]:
    """The golden gate's evidence on this device's runtime: the golden report, and the p95 of `runs` timed
    inferences (pre-process, invoke, decode: what the health counters time) in ms."""
    report = run_golden(model)
    data = synthetic_input(model.manifest.input, tuple(model.data_spec.shape))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.infer(data)
        times.append(time.perf_counter() - start)
    if not times:
        return report, None
    return report, float(np.percentile(np.asarray(times), 95)) * 1000.0


def self_test(model: Model) -> None:
    """Raises ModelError when the bundle's golden cases do not reproduce on this device's runtime."""
    report = run_golden(model)
    if not report.cases or report.passed:
        return
    failed = [case for case in report.cases if not case.passed]
    first = failed[0]
    why = first.failure or f"deviation {first.max_deviation:.4g} > tolerance {report.tolerance:.4g}"
    raise ModelError(
        f"model {model.name} v{model.version} fails its golden self-test here: {len(failed)} of "
        f"{len(report.cases)} cases ({first.input}: {why})"
    )


__all__ = ["Outcome", "SlotState", "evidence_of", "measure_gate", "self_test"]
