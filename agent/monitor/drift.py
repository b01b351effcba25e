"""Data drift with a stated false-alarm rate: a site baseline, calibrated thresholds, episodes. Pure: no I/O.

Two questions, kept apart:
- *has this site changed?* The monitor learns a baseline from the first `baseline_items` items after a model comes
  into service (the site's own camera or sensor), has it calibrated (`agent.monitor.calibration`, off the hot path:
  `pending()` hands the job out, `install()` takes the result) and from then on compares every window of `every_n`
  items with it. A window whose statistics exceed their thresholds starts a drift episode (a warning), reminders go
  out every `update_windows` windows while it lasts, and it ends after `clear_windows` quiet windows in a row (info).
  The thresholds are set for an expected run time of `ert_items` items between false alarms on unchanged data.
- *does this site differ from the training data?* While it learns, the monitor also compares its windows with the
  bundle's reference (the calibration samples' features, thresholds calibrated when the bundle was made). If most of
  them exceed a threshold, it says so once, as information: a fixed camera is a narrow slice of the population a
  model was calibrated on, and that alone is no alarm.

Every drift event carries the statistic, its value and threshold, the ERT, the window and the sample counts.
Statistics come from `agent.monitor.features`; inputs from every `input_every`-th item, outputs from every item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from agent.events import AgentEvent
from agent.inference.results import Result
from agent.monitor.calibration import Calibration, window_values
from agent.monitor.features import FeatureSpec, Statistic
from agent.types import Array

State = Literal["learning", "calibrating", "watching"]
DIFFERS_SHARE = 0.5
"""The site differs from the training data when at least this share of its learning windows exceed a threshold."""


@dataclass(frozen=True)
class BaselineJob:
    """A learnt baseline waiting to be calibrated (on another thread): its items and the thresholds wanted."""

    spec: FeatureSpec
    inputs: np.ndarray
    outputs: np.ndarray
    input_step: int
    every_n: int
    input_every: int
    ert_items: float
    generation: int = 0
    """The monitor's baseline generation when the job was taken: a reset in between makes its result stale."""


@dataclass(frozen=True)
class WindowReport:
    """One window compared with a profile."""

    against: Literal["baseline", "bundle"]
    items: int
    input_samples: int
    values: dict[str, float]
    deltas: dict[str, float]
    thresholds: dict[str, float]
    exceeding: tuple[str, ...]
    worst: str | None
    worst_ratio: float

    def describe(self, name: str | None = None) -> str:
        """`input.brightness -41.2 (threshold 6.1)` or `output.label PSI 0.41 (threshold 0.12)` for one statistic."""
        name = name or self.worst
        if name is None:
            return "no statistic"
        value, threshold = self.values[name], self.thresholds.get(name, math.inf)
        if name in self.deltas:
            return f"{name} {self.deltas[name]:+.3g} (threshold {threshold:.3g})"
        return f"{name} PSI {value:.3g} (threshold {threshold:.3g})"

    def evidence(self, calibration: Calibration) -> dict[str, Any]:
        """JSON-ready evidence of an event."""
        worst = self.worst
        return {
            "against": self.against,
            "statistic": worst,
            "value": _round(self.values.get(worst, 0.0)) if worst else None,
            "delta": _round(self.deltas[worst]) if worst in self.deltas else None,
            "threshold": _round(self.thresholds.get(worst, 0.0)) if worst else None,
            "exceeding": {
                name: {"value": _round(self.values[name]), "threshold": _round(self.thresholds[name])}
                for name in self.exceeding[:12]
            },
            "ert_items": calibration.ert_items,
            "every_n": calibration.every_n,
            "items": self.items,
            "input_samples": self.input_samples,
            "level": calibration.level,
            "baseline_items": calibration.items,
        }


def _round(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else value


class DriftMonitor:
    """Per-window drift statistics against a site baseline (the alarm) and the bundle's reference (information)."""

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        every_n: int = 100,
        input_every: int = 4,
        ert_items: float = 1_000_000,
        baseline_items: int = 3000,
        clear_windows: int = 3,
        update_windows: int = 10,
        bundle: Calibration | None = None,
        baseline: Calibration | None = None,
    ) -> None:
        if every_n < 2 or input_every < 1 or every_n % input_every or baseline_items < 2 * every_n:
            raise ValueError(
                "every_n must be >= 2 and a multiple of input_every (>= 1), baseline_items at least 2 windows"
            )
        if ert_items <= 2 * every_n:
            raise ValueError(f"ert_items ({ert_items:g}) must be more than twice every_n ({every_n})")
        self.spec = spec
        self.every_n, self.input_every, self.ert_items = every_n, input_every, float(ert_items)
        self.baseline_items = (baseline_items // input_every) * input_every
        self.clear_windows, self.update_windows = clear_windows, update_windows
        self.bundle = bundle if bundle is not None and bundle.fingerprint == spec.fingerprint else None
        self.state: State = "learning"
        self.calibration: Calibration | None = None
        self.problem: str | None = None
        self._in_sum = np.zeros(spec.input_size)
        self._out_sum = np.zeros(spec.output_size)
        self._n_in = 0
        self._items = 0
        self.checks = 0
        self.skipped = 0
        self.drifting = False
        self._episode_windows = 0
        self._quiet = 0
        self.episodes = 0
        self.last_report: WindowReport | None = None
        self._learn_out = np.zeros((self.baseline_items, spec.output_size))
        self._learn_in = np.full((self.baseline_items // input_every, spec.input_size), np.nan)
        self._learnt = 0
        self._job_taken = False
        self.generation = 0
        self._failed: str | None = None
        self.site: dict[str, Any] = {
            "compared_windows": 0,
            "exceeding_windows": 0,
            "worst": {},
            "differs": None,
        }
        self._site_report: WindowReport | None = None
        if baseline is not None:
            self.install(baseline)

    # ------------------------------------------------------------------ baseline life cycle

    def reset(self) -> None:
        """Forgets the baseline and learns a new one from the next items (the site was moved or re-aimed)."""
        self.state, self.calibration, self.problem = "learning", None, None
        self._learnt, self._job_taken = 0, False
        self.generation += 1
        self._learn_in[:] = np.nan
        self.drifting, self._episode_windows, self._quiet = False, 0, 0
        self.site = {"compared_windows": 0, "exceeding_windows": 0, "worst": {}, "differs": None}
        self._restart()

    def pending(self) -> BaselineJob | None:
        """The learnt baseline, once, when it is complete and not calibrated yet."""
        if self.state != "calibrating" or self._job_taken:
            return None
        self._job_taken = True
        return BaselineJob(
            self.spec,
            self._learn_in.copy(),
            self._learn_out.copy(),
            self.input_every,
            self.every_n,
            self.input_every,
            self.ert_items,
            self.generation,
        )

    def install(self, calibration: Calibration, generation: int | None = None) -> bool:
        """Starts watching with calibrated thresholds; False (and stays as it is) if they do not fit this monitor, or
        come from a job taken before a reset (`generation`)."""
        if (
            (generation is not None and generation != self.generation)
            or calibration.fingerprint != self.spec.fingerprint
            or calibration.every_n != self.every_n
            or calibration.input_every != self.input_every
            or calibration.ert_items != self.ert_items
        ):
            return False
        self.calibration, self.state, self.problem = calibration, "watching", None
        return True

    def calibration_failed(self, problem: str) -> None:
        """The baseline could not be calibrated: learn again from fresh items (at the next item; any thread)."""
        self._failed = problem

    def resume(self, inputs: np.ndarray, outputs: np.ndarray) -> None:
        """Takes stored baseline rows (of this feature layout) as learnt; calibrates them if they are enough."""
        count = min(len(outputs), self.baseline_items, len(inputs) * self.input_every)
        count = (count // self.input_every) * self.input_every
        self._learn_out[:count] = outputs[:count]
        self._learn_in[: count // self.input_every] = inputs[: count // self.input_every]
        self._learnt, self._job_taken = count, False
        self.state = "calibrating" if count >= self.baseline_items else "learning"

    def baseline_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The learnt baseline items (inputs every `input_every`, outputs every item), for persisting."""
        return self._learn_in[: self._learnt // self.input_every].copy(), self._learn_out[
            : self._learnt
        ].copy()

    # ------------------------------------------------------------------ accumulation (inference thread)

    def observe(self, data: Array | None, result: Result | None = None) -> AgentEvent | None:
        """Counts one item; at the end of each window compares and returns an event on a change."""
        if self._failed is not None:
            problem, self._failed = self._failed, None
            self.reset()
            self.problem = problem
        position = self._items
        features = None
        if data is not None and position % self.input_every == 0 and self.spec.input_size:
            features = self.spec.input_features(data)
            if features is None:
                self.skipped += 1
            else:
                self._in_sum += features
                self._n_in += 1
        outputs = self.spec.output_features(result) if result is not None and self.spec.output_size else None
        if outputs is not None:
            self._out_sum += outputs
        if self.state == "learning":
            index = self._learnt
            if outputs is not None:
                self._learn_out[index] = outputs
            if features is not None and index % self.input_every == 0:
                self._learn_in[index // self.input_every] = features
            self._learnt += 1
            if self._learnt >= self.baseline_items:
                self.state = "calibrating"
        self._items += 1
        if self._items < self.every_n:
            return None
        return self.check()

    def check(self) -> AgentEvent | None:
        """Compares the window gathered so far, restarts it; returns the event it causes, if any."""
        items, n_in = self._items, self._n_in
        in_mean = self._in_sum / n_in if n_in else np.zeros(self.spec.input_size)
        out_mean = self._out_sum / items if items else np.zeros(self.spec.output_size)
        self._restart()
        if items == 0:
            return None
        self.checks += 1
        if self.calibration is not None and self.state == "watching":
            report = self._report("baseline", self.calibration, in_mean, out_mean, items, n_in)
            self.last_report = report
            return self._episode(report, self.calibration)
        if self.bundle is not None and self.site["differs"] is None:
            report = self._report("bundle", self.bundle, in_mean, out_mean, items, n_in)
            self._note_site(report)
            if self.state != "learning":
                return self._site_verdict()
        return None

    def _report(
        self,
        against: Literal["baseline", "bundle"],
        calibration: Calibration,
        in_mean: np.ndarray,
        out_mean: np.ndarray,
        items: int,
        n_in: int,
    ) -> WindowReport:
        spec, profile = self.spec, calibration.profile
        stats: tuple[Statistic, ...] = spec.statistics
        if n_in == 0:
            stats = tuple(s for s in stats if s.family == "output")
        values_row = window_values(spec, profile, in_mean[None, :], out_mean[None, :])[0]
        values, deltas, thresholds = {}, {}, {}
        for index, stat in enumerate(spec.statistics):
            if stat not in stats:
                continue
            values[stat.name] = float(values_row[index])
            thresholds[stat.name] = calibration.thresholds.get(stat.name, math.inf)
            if stat.kind == "mean":
                block = in_mean if stat.family == "input" else out_mean
                deltas[stat.name] = float(block[stat.start] - profile.means.get(stat.name, 0.0))
        ratios = {name: values[name] / thresholds[name] for name in values if thresholds[name] > 0}
        exceeding = tuple(sorted((n for n, r in ratios.items() if r > 1), key=lambda n: -ratios[n]))
        worst = max(ratios, key=lambda n: ratios[n]) if ratios else None
        return WindowReport(
            against, items, n_in, values, deltas, thresholds, exceeding, worst, ratios.get(worst or "", 0.0)
        )

    def _episode(self, report: WindowReport, calibration: Calibration) -> AgentEvent | None:
        evidence = report.evidence(calibration)
        if not self.drifting:
            if not report.exceeding:
                return None
            self.drifting, self._episode_windows, self._quiet = True, 1, 0
            self.episodes += 1
            evidence["episode"] = self.episodes
            more = f" and {len(report.exceeding) - 1} more" if len(report.exceeding) > 1 else ""
            return AgentEvent(
                "drift",
                "warning",
                f"data drift against the site baseline: {report.describe()}{more}",
                evidence,
                phase="start",
            )
        self._episode_windows += 1
        evidence["episode"], evidence["windows"] = self.episodes, self._episode_windows
        if not report.exceeding:
            self._quiet += 1
            if self._quiet < self.clear_windows:
                return None
            self.drifting = False
            return AgentEvent(
                "drift",
                "info",
                f"data drift cleared after {self._episode_windows} windows ({self._quiet} quiet in a row)",
                evidence,
                phase="end",
            )
        self._quiet = 0
        if self._episode_windows % self.update_windows:
            return None
        return AgentEvent(
            "drift",
            "warning",
            f"data drift continues ({self._episode_windows} windows): {report.describe()}",
            evidence,
            phase="ongoing",
        )

    def _note_site(self, report: WindowReport) -> None:
        site = self.site
        site["compared_windows"] += 1
        if report.exceeding:
            site["exceeding_windows"] += 1
        worst: dict[str, float] = site["worst"]
        for name in report.exceeding:
            worst[name] = max(worst.get(name, 0.0), report.values[name] / report.thresholds[name])
        self._site_report = report

    def _site_verdict(self) -> AgentEvent | None:
        site = self.site
        compared, exceeding = site["compared_windows"], site["exceeding_windows"]
        site["differs"] = compared > 0 and exceeding >= DIFFERS_SHARE * compared
        if not site["differs"] or self.bundle is None or self._site_report is None:
            return None
        ranked = sorted(site["worst"].items(), key=lambda kv: -kv[1])[:5]
        text = ", ".join(f"{name} {ratio:.1f}x its threshold" for name, ratio in ranked)
        evidence = self._site_report.evidence(self.bundle)
        evidence.update({"windows": compared, "exceeding_windows": exceeding, "ratios": dict(ranked)})
        return AgentEvent(
            "drift",
            "info",
            f"this site differs from the model's calibration data ({exceeding} of {compared} windows): {text}; "
            "drift alarms compare with the site's own baseline",
            evidence,
            phase="start",
        )

    def _restart(self) -> None:
        self._in_sum[:] = 0.0
        self._out_sum[:] = 0.0
        self._n_in = 0
        self._items = 0

    # ------------------------------------------------------------------ readers

    def status(self) -> dict[str, Any]:
        """JSON-ready state for `status` and telemetry."""
        calibration = self.calibration
        last = self.last_report
        return {
            "state": self.state,
            "drifting": self.drifting,
            "episodes": self.episodes,
            "checks": self.checks,
            "every_n": self.every_n,
            "items_in_window": self._items,
            "skipped_inputs": self.skipped,
            "baseline": {
                "items": self._learnt if calibration is None else calibration.items,
                "of": self.baseline_items,
                "problem": self.problem,
            },
            "calibration": None
            if calibration is None
            else {
                "ert_items": calibration.ert_items,
                "level": calibration.level,
                "window_level": calibration.window_level,
                "block_items": calibration.block_items,
                "held_out_windows": calibration.held_out_windows,
                "held_out_alarms": calibration.held_out_alarms,
                "note": calibration.note,
            },
            "site_differs": self.site["differs"],
            "bundle_reference": self.bundle is not None,
            "last": None
            if last is None
            else {
                "worst": last.worst,
                "worst_ratio": round(last.worst_ratio, 3),
                "exceeding": list(last.exceeding),
                "summary": last.describe(),
            },
        }
