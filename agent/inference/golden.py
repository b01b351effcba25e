"""The golden self-test: run the bundle's golden inputs and compare the outputs with the expected ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.errors import AgentError
from agent.inference.inputs import load_inputs
from agent.inference.model import Model


@dataclass(frozen=True)
class CaseReport:
    """One golden case: its largest deviation, or the error that stopped it."""

    input: str
    max_deviation: float
    passed: bool
    note: str = ""
    error: str | None = None


@dataclass(frozen=True)
class GoldenReport:
    """All golden cases of a bundle against its tolerance."""

    tolerance: float
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
    """Dequantized outputs of one source input, as stored in a golden `expected` file."""
    prepared = model.prepare(data)
    return model.dequantize(model.invoke(prepared.tensor))


def run_golden(model: Model) -> GoldenReport:
    """Runs every golden case of the model's bundle."""
    golden = model.manifest.golden
    if golden is None:
        return GoldenReport(0.0, ())
    reports = []
    for case in golden.cases:
        try:
            data = load_inputs(model.bundle.file(case.input), model.manifest.input)[0][1]
            outputs = expected_outputs(model, data)
            with np.load(model.bundle.file(case.expected), allow_pickle=False) as stored:
                expected = [stored[f"output_{i}"] for i in range(len(stored.files))]
            if len(expected) != len(outputs):
                raise AgentError(f"expected {len(expected)} outputs, the model gives {len(outputs)}")
            deviation = 0.0
            for got, want in zip(outputs, expected, strict=True):
                if got.shape != want.shape:
                    raise AgentError(
                        f"output shape {list(got.shape)} differs from expected {list(want.shape)}"
                    )
                if got.size:
                    deviation = max(deviation, float(np.max(np.abs(got.astype(np.float64) - want))))
            reports.append(CaseReport(case.input, deviation, deviation <= golden.tolerance, case.note))
        except (AgentError, OSError, KeyError, ValueError) as error:
            reports.append(CaseReport(case.input, float("inf"), False, case.note, str(error)))
    return GoldenReport(golden.tolerance, tuple(reports))
