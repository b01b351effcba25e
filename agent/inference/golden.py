"""The golden self-test: run the bundle's golden inputs and compare the outputs with the expected ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.errors import AgentError
from agent.inference.inputs import load_inputs
from agent.inference.model import Model


@dataclass(frozen=True)
class OutputDeviation:
    """One output of one golden case: its largest deviation and the limit on it."""

    name: str
    deviation: float
    allowed: float

    @property
    def passed(self) -> bool:
        """Within the limit."""
        return self.deviation <= self.allowed


@dataclass(frozen=True)
class CaseReport:
    """One golden case: its largest deviation, or the error that stopped it."""

    input: str
    max_deviation: float
    passed: bool
    note: str = ""
    error: str | None = None
    outputs: tuple[OutputDeviation, ...] = ()

    @property
    def failure(self) -> str | None:
        """Why the case failed, in one line (None when it passed)."""
        if self.passed:
            return None
        if self.error:
            return self.error
        worst = max(self.outputs, key=lambda o: o.deviation / o.allowed, default=None)
        if worst is None:
            return f"deviation {self.max_deviation:.4g}"
        return f"output '{worst.name}' deviates {worst.deviation:.4g}, over its limit {worst.allowed:.4g}"


@dataclass(frozen=True)
class GoldenReport:
    """All golden cases of a bundle against its limits."""

    tolerance: float
    """The widest limit on any output (the one limit of a bundle without per-output limits)."""
    cases: tuple[CaseReport, ...]

    @property
    def passed(self) -> bool:
        """True when there are cases and all passed."""
        return bool(self.cases) and all(case.passed for case in self.cases)

    @property
    def worst(self) -> float:
        """The largest deviation over all cases (inf if a case failed to run)."""
        return max((case.max_deviation for case in self.cases), default=0.0)


def expected_outputs(model: Model, data: np.ndarray) -> list[np.ndarray]:
    """Dequantized outputs of one source input, as stored in a golden `expected` file (a stateful model from its
    initial state, so that every case stands alone)."""
    model.reset_state()
    prepared = model.prepare(data)
    return model.dequantize(model.invoke(prepared.tensor))


def run_golden(model: Model) -> GoldenReport:
    """Runs every golden case of the model's bundle; each output is held to its own limit."""
    golden = model.manifest.golden
    if golden is None:
        return GoldenReport(0.0, ())
    names = [spec.name for spec in model.backend.outputs]
    reports = []
    for case in golden.cases:
        try:
            data = load_inputs(model.bundle.file(case.input), model.manifest.input)[0][1]
            outputs = expected_outputs(model, data)
            with np.load(model.bundle.file(case.expected), allow_pickle=False) as stored:
                expected = [stored[f"output_{i}"] for i in range(len(stored.files))]
            if len(expected) != len(outputs):
                raise AgentError(f"expected {len(expected)} outputs, the model gives {len(outputs)}")
            deviations = []
            for index, (got, want) in enumerate(zip(outputs, expected, strict=True)):
                if got.shape != want.shape:
                    raise AgentError(
                        f"output shape {list(got.shape)} differs from expected {list(want.shape)}"
                    )
                moved = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
                if not np.isfinite(moved):
                    moved = float("inf")
                deviations.append(OutputDeviation(names[index], moved, golden.allowed(index)))
            worst = max((d.deviation for d in deviations), default=0.0)
            passed = all(d.passed for d in deviations)
            reports.append(CaseReport(case.input, worst, passed, case.note, None, tuple(deviations)))
        except (AgentError, OSError, KeyError, ValueError) as error:
            reports.append(CaseReport(case.input, float("inf"), False, case.note, str(error)))
    widest = max((o.allowed for o in golden.outputs), default=golden.tolerance or 0.0)
    return GoldenReport(widest, tuple(reports))
