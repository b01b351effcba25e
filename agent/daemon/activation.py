"""Safe activation of installed releases: golden gate, shadow on live items, hot swap, trial window, rollback.

The daemon's main thread drives it (`tick`, and the `models` commands through `MainThread`); the decisions are pure
(`agent.ota.activation` for the life cycle, `agent.ota.verdict` for the judgements), the acts are the model service's
(load a candidate, shadow it, swap, restore) and the links' (`agent.ota.links`). Invariants:
- the record (ota/activation.json) is saved before its act and its event: a power cut at any step leaves a record
  that `recover` (run before the first model loads) turns back into a consistent device: the links are repaired so
  that `active` names the release only in trial or committed, else the model it was to replace;
- nothing serves that has not passed the gate: a candidate is loaded beside the active model, gated, shadowed,
  swapped between two items; a restart in activating goes back to the gate;
- the thresholds are the release's signed ones, tightened by `[ota.activation]`, fixed in the record at `begin`;
- an update begins only for the desired release once the updater has installed it, never for a release rejected or
  rolled back here; a desired version equal to the previous model on disk puts that model back (the newer one is
  marked rejected), it is not refused as a downgrade;
- a crash counts only on the same boot without the clean-stop marker (`stop_clean` writes it); a lost broker is not a
  model fault: nothing here reads the link's state.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.daemon.activation_report import activation_event, activation_status, update_view
from agent.daemon.ports import Reporter, UpdateView
from agent.daemon.slot import measure_gate
from agent.errors import AgentError
from agent.events import AgentEvent
from agent.fsutil import fsync_dir, write_atomic
from agent.monitor.operational import budget_for
from agent.ota import links
from agent.ota.activation import (
    PRE_SERVING,
    SERVING,
    ActivationMachine,
    ActivationRecord,
    Figures,
    Step,
    Verdict,
)
from agent.ota.layout import Layout
from agent.ota.state import ReleaseId, UpdateRecord, UpdateState
from agent.ota.store import RecordDamaged, load_as, save_record
from agent.ota.verdict import MemoryPlan, TrialFigures, gate, memory_plan, shadow, tightened, trial
from agent.platform.host import boot_id, memory_limit_mb, rss_mb
from agent.release.formats import Activation, Desired

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.daemon.model_service import ModelService
    from agent.inference import Model

log = logging.getLogger("agent.daemon.activation")

PROGRESS_SAVE_S = 15.0
"""The shadow's figures are saved to the record at most this often (an SD card wears)."""
EPISODE_TYPES = frozenset({"drift", "anomaly"})


@dataclass(frozen=True)
class ActivationPorts:
    """What the activation needs from the daemon: the model slot, events, the desired state, the updater's record."""

    models: ModelService
    report: Reporter
    desired: Callable[[], Desired | None]
    delivery: Callable[[], UpdateRecord | None]


def same_release(model: Model | None, release: ReleaseId | None) -> bool:
    return (
        model is not None
        and release is not None
        and (model.name, model.version) == (release.name, release.version)
    )


class ActivationService:
    """Drives the activation of one release at a time (see the module docstring)."""

    def __init__(
        self,
        config: AgentConfig,
        state_dir: Path,
        ports: ActivationPorts,
        *,
        boot: Callable[[], str | None] = boot_id,
        memory: Callable[[], tuple[float | None, float | None]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.layout = Layout(state_dir)
        self._ports = ports
        self._models = ports.models
        self._boot = boot()
        self._memory = memory or (
            lambda: (self.config.ota.activation.memory_max_mb or memory_limit_mb(), rss_mb())
        )
        self._monotonic = monotonic
        self._machine = ActivationMachine(None, __version__)
        self._plan: MemoryPlan | None = None
        self._live: Figures = {}
        self._saved_at = 0.0
        self._trial_since: float | None = None
        self._drift = self._anomalies = 0
        self._served_since = monotonic()
        self._served_episodes = 0

    @property
    def record_file(self) -> Path:
        """ota/activation.json."""
        return self.layout.ota_dir / "activation.json"

    @property
    def marker(self) -> Path:
        """ota/clean-stop: written by a clean stop, removed at the next start."""
        return self.layout.ota_dir / "clean-stop"

    @property
    def record(self) -> ActivationRecord | None:
        """The current record."""
        return self._machine.record

    # ------------------------------------------------------------------ start and stop (main thread)

    def recover(self) -> None:
        """Before the first model loads: takes the record over from the last process, counts a crash, repairs the
        links so that `active` names what may serve."""
        links.clean_temps(self.layout)
        loaded = load_as(self.record_file, ActivationRecord)
        if isinstance(loaded, RecordDamaged):
            self._ports.report("update", "warning", f"activation: {loaded.reason}; starting from the links")
            loaded = None
        clean = self.marker.exists()
        with contextlib.suppress(OSError):
            self.marker.unlink()
            fsync_dir(self.marker.parent)
        self._machine = ActivationMachine(loaded, __version__)
        if loaded is None:
            return
        step = self._machine.restarted(self._boot, clean)
        self._save(step)
        record = step.after
        if record.state not in SERVING and record.previous_bundle is not None:
            active = links.read_link(self.layout, record.release.name, links.ACTIVE)
            if active is not None and active.resolve() == Path(record.bundle).resolve():
                self._put_links_back(record)

    def stop_clean(self) -> None:
        """A clean stop: the next start does not count a crash."""
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.marker, (self._boot or "").encode())
        except OSError as problem:
            log.warning("cannot write the clean-stop marker: %s", problem)

    def on_event(self, event: AgentEvent) -> None:
        """Counts drift and anomaly episodes (any thread): the trial compares them with the previous model's."""
        if event.type not in EPISODE_TYPES or event.phase != "start" or event.severity == "info":
            return
        self._served_episodes += 1
        if self._trial_since is not None:
            if event.type == "drift":
                self._drift += 1
            else:
                self._anomalies += 1

    # ------------------------------------------------------------------ the main thread's tick

    def tick(self, _now: float) -> None:
        """Main thread: one step of the activation under way, or a look for one to begin."""
        if not self.config.ota.activation.enabled or self._models.active is None:
            return
        record = self._machine.record
        if record is not None and record.state in PRE_SERVING | {UpdateState.TRIAL}:
            if self._desired_moved_away(record):
                return
            self._drive(record)
        else:
            self._follow_desired(record)

    def _drive(self, record: ActivationRecord) -> None:
        if record.state is UpdateState.SELF_TESTING:
            self._gate(record)
        elif record.state is UpdateState.SHADOW:
            self._shadow(record)
        elif record.state is UpdateState.ACTIVATING:
            self._activate(record)
        elif record.state is UpdateState.TRIAL:
            self._trial(record)

    def _follow_desired(self, record: ActivationRecord | None) -> None:
        desired, active = self._ports.desired(), self._models.active
        if desired is None or active is None:
            return
        name, version = active.model.name, active.model.version
        if desired.model == name and desired.version < version:
            previous = links.version_of(links.read_link(self.layout, name, links.PREVIOUS))
            if (
                previous == desired.version
                and record is not None
                and same_release(active.model, record.release)
            ):
                self._roll_back(
                    record,
                    "desired",
                    f"the desired state names v{desired.version}, the previous model",
                    {},
                    True,
                )
            return
        delivery = self._ports.delivery()
        if delivery is None or delivery.state is not UpdateState.INSTALLED:
            return
        release = delivery.release
        if (release.name, release.version) != (desired.model, desired.version):
            return
        if release.name == name and release.version <= version:
            return
        if record is not None and (record.refused(release) or record.release == release):
            return
        if record is not None and record.origin == "manual" and record.desired_version == desired.version:
            return  # a person chose the model in service: updates wait for a new desired state
        bundle = self.layout.bundle(release.name, release.version)
        if bundle.is_dir():
            self.begin(release, bundle, delivery.activation or Activation(), "update", delivery.ram_mb)

    def _desired_moved_away(self, record: ActivationRecord) -> bool:
        """A rollout abort (or an operator) set the desired state below the release: it goes, marked rejected; a
        newer desired release, installed, replaces one that has not served yet or is held inconclusive."""
        desired = self._ports.desired()
        if record.origin != "update" or desired is None or desired.model != record.release.name:
            return False
        if desired.version == record.release.version:
            return False
        if desired.version > record.release.version:  # a newer release: it waits for this one's verdict ...
            delivery = self._ports.delivery()
            ready = (
                delivery is not None
                and delivery.state is UpdateState.INSTALLED
                and (delivery.release.name, delivery.release.version) == (desired.model, desired.version)
            )
            held = record.state in PRE_SERVING or record.verdict == "inconclusive"
            if not (ready and held):  # ... unless this one is held inconclusive or has not served yet
                return False
            self._abort(record, "superseded", f"v{desired.version} is installed and desired now")
            return True
        self._abort(record, "desired", f"the desired state names v{desired.version} now")
        return True

    # ------------------------------------------------------------------ the steps

    def begin(
        self,
        release: ReleaseId,
        bundle: Path,
        signed: Activation,
        origin: str,
        ram_mb: int | None = None,
        desired_version: int | None = None,
    ) -> ActivationRecord:
        """Starts the activation of an installed release (its golden gate runs at the next tick)."""
        active = self._models.active
        if active is None:
            raise AgentError("no model in service: nothing to compare a release with")
        thresholds = tightened(signed, self.config.ota.activation)
        previous = ReleaseId(name=active.model.name, version=active.model.version)
        step = self._machine.begin(
            release,
            str(bundle),
            thresholds,
            previous=previous,
            previous_bundle=str(Path(active.model.bundle.path).resolve()),
            origin=origin,  # type: ignore[arg-type]
            ram_mb=ram_mb or None,
            boot_id=self._boot,
            desired_version=desired_version,
        )
        self._live = {}
        self._save(step)
        return step.after

    def _gate(self, record: ActivationRecord) -> None:
        models = self._models
        models.release_previous()  # at most two models loaded: the active one and the candidate
        limit, used = self._memory()
        self._plan = plan = memory_plan(limit, used, record.ram_mb)
        if not plan.fits:
            self._reject(record, "memory", plan.reason, {"ram_mb": record.ram_mb or 0})
            return
        candidate = self._candidate(record)
        if candidate is None:
            return
        report, p95_ms = measure_gate(candidate, self.config.ota.activation.gate_runs)
        failed = [case for case in report.cases if not case.passed]
        judgement = gate(
            golden_cases=len(report.cases),
            golden_failed=len(failed),
            golden_worst=report.worst,
            tolerance=report.tolerance,
            golden_error=failed[0].failure if failed else None,
            latency_p95_ms=p95_ms,
            budget_ms=self._budget(candidate),
            thresholds=record.thresholds,
        )
        if judgement.verdict != "pass":
            self._reject(record, judgement.code or "gate", judgement.reason, judgement.figures)
            return
        self._save(self._machine.gate_passed(judgement.figures))

    def _candidate(self, record: ActivationRecord) -> Model | None:
        """The release loaded beside the active model (loaded now if need be); None when it was rejected."""
        models = self._models
        loaded = models.candidate
        if loaded is not None and same_release(loaded.model, record.release):
            return loaded.model
        if loaded is not None:
            models.discard_candidate()
        outcome = models.load_candidate(
            Path(record.bundle), self_test=record.state is not UpdateState.SELF_TESTING
        )
        loaded = models.candidate
        if not outcome.ok or loaded is None or not same_release(loaded.model, record.release):
            code = "golden" if "golden" in outcome.message else "load"
            self._reject(record, code, outcome.message, {})
            return None
        return loaded.model

    def _shadow(self, record: ActivationRecord) -> None:
        models = self._models
        if self._candidate(record) is None:
            return
        stats = models.shadow_stats()
        if stats is None or not same_release(
            models.candidate.model if models.candidate else None, record.release
        ):
            settings = self.config.ota.activation
            outcome = models.start_shadow(settings.shadow_every_n, settings.shadow_share)
            if not outcome.ok:
                self._reject(record, "shadow", outcome.message, {})
            return
        candidate = models.candidate
        assert candidate is not None
        latency = stats.get("latency_ms") or {}
        extra: Figures = {
            key: stats[key]
            for key in (
                "errors",
                "skipped_busy",
                "skipped_budget",
                "share_got",
                "score_correlation",
                "mean_iou",
                "mean_score_delta",
            )
            if isinstance(stats.get(key), (int, float))
        }
        judgement = shadow(
            items=int(stats.get("compared") or 0),
            agreement=stats.get("agreement"),
            latency_p95_ms=latency.get("p95"),
            budget_ms=self._budget(candidate.model),
            thresholds=record.thresholds,
            extra=extra,
        )
        self._live = judgement.figures
        if judgement.verdict is None:
            if self._monotonic() - self._saved_at >= PROGRESS_SAVE_S:
                self._save(self._machine.shadow_progress(judgement.figures))
            return
        if judgement.verdict == "pass":
            self._save(self._machine.shadow_passed(judgement.figures))
        else:
            self._reject(record, judgement.code or "shadow", judgement.reason, judgement.figures)

    def _activate(self, record: ActivationRecord) -> None:
        models = self._models
        if self._candidate(record) is None:
            return
        before = models.health_snapshot()
        served_s = max(1e-6, self._monotonic() - self._served_since)
        previous_figures: Figures = {
            "previous_episode_rate_per_h": round(self._served_episodes / served_s * 3600, 4)
        }
        if before is not None and before.low_confidence_share is not None:
            previous_figures["previous_low_confidence_share"] = round(before.low_confidence_share, 6)
        outcome = models.activate()
        if not outcome.ok:
            self._reject(record, "activate", outcome.message, {})
            return
        try:
            previous = Path(record.previous_bundle) if record.previous_bundle else None
            links.swap_links(self.layout, record.release.name, Path(record.bundle), previous)
        except OSError as problem:
            models.restore_previous()
            self._reject(record, "disk", f"cannot replace the model links: {problem}", {})
            return
        self._save(self._machine.activated(self._boot, previous_figures))
        self._start_trial_clock()

    def _trial(self, record: ActivationRecord) -> None:
        if self._trial_since is None:  # a restart in trial: the window starts again
            self._start_trial_clock()
        snapshot = self._models.health_snapshot()
        active = self._models.active
        if snapshot is None or active is None or not same_release(active.model, record.release):
            return
        assert self._trial_since is not None
        figures = record.figures
        rate = figures.get("previous_episode_rate_per_h")
        now = TrialFigures(
            elapsed_s=self._monotonic() - self._trial_since,
            items=snapshot.items,
            errors=snapshot.errors,
            latency_p95_ms=None if snapshot.latency_p95_s is None else snapshot.latency_p95_s * 1000.0,
            low_confidence_share=snapshot.low_confidence_share,
            episodes=self._drift + self._anomalies,
            drift=self._drift,
            anomalies=self._anomalies,
            crashes=record.crashes,
            budget_ms=self._budget(active.model),
            previous_low_confidence_share=_float(figures.get("previous_low_confidence_share")),
            previous_episode_rate_per_s=None if rate is None else float(rate) / 3600.0,
        )
        judgement = trial(now, record.thresholds)
        self._live = judgement.figures
        if judgement.verdict is None:
            return
        if judgement.verdict == "pass":
            self._save(self._machine.commit(judgement.figures))
            self._trial_since = None
            self._prune(record.release.name)
        elif judgement.verdict == "fail":
            self._roll_back(record, judgement.code or "trial", judgement.reason, judgement.figures, False)
        elif record.verdict != "inconclusive":
            self._save(self._machine.hold(judgement.reason, judgement.figures))

    # ------------------------------------------------------------------ endings

    def _reject(self, record: ActivationRecord, code: str, reason: str, figures: Figures) -> None:
        """Before serving: the candidate goes (the active model never changed)."""
        self._save(self._machine.reject(code, reason, figures))
        candidate = self._models.candidate
        if candidate is not None and same_release(candidate.model, record.release):
            self._models.discard_candidate()

    def _abort(self, record: ActivationRecord, code: str, reason: str) -> None:
        if record.state in PRE_SERVING:
            self._save(self._machine.reject(code, reason, self._live, verdict=None))
            candidate = self._models.candidate
            if candidate is not None and same_release(candidate.model, record.release):
                self._models.discard_candidate()
        else:
            self._roll_back(record, code, reason, self._live, True)

    def _roll_back(
        self, record: ActivationRecord, code: str, reason: str, figures: Figures, aborted: bool
    ) -> None:
        """The release served: the record first, then the links, then the previous model back in service."""
        verdict: Verdict | None = None if aborted else "fail"
        self._save(self._machine.roll_back(code, reason, figures, verdict, aborted=aborted))
        self._trial_since = None
        self._put_links_back(record)
        models = self._models
        previous = models.previous
        if previous is not None and same_release(previous.model, record.previous):
            outcome = models.restore_previous()
        elif record.previous_bundle is not None:
            outcome = models.load_candidate(Path(record.previous_bundle))
            if outcome.ok and models.candidate is not None:
                outcome = models.activate()
                models.release_previous()
        else:
            outcome = None
        if outcome is None or not outcome.ok:
            why = outcome.message if outcome is not None else "no previous model is known"
            self._ports.report(
                "model",
                "critical",
                f"rollback of {record.release} could not restore the previous model: {why}",
            )
        self._served_since, self._served_episodes = self._monotonic(), 0

    def _put_links_back(self, record: ActivationRecord) -> None:
        if record.previous_bundle is None:
            return
        try:
            links.point(self.layout, record.release.name, links.ACTIVE, Path(record.previous_bundle))
            links.unlink(self.layout, record.release.name, links.PREVIOUS)
        except OSError as problem:
            self._ports.report("update", "error", f"cannot put the model links back: {problem}")

    def _prune(self, name: str) -> None:
        try:
            removed = links.prune(self.layout, name)
        except OSError as problem:
            self._ports.report("update", "warning", f"cannot remove old versions of {name}: {problem}")
            return
        if removed:
            log.info("removed old versions of %s: %s", name, removed)

    # ------------------------------------------------------------------ helpers

    def _start_trial_clock(self) -> None:
        self._trial_since = self._monotonic()
        self._drift = self._anomalies = 0
        self._served_since, self._served_episodes = self._trial_since, 0

    def _budget(self, model: Model) -> float | None:
        """The latency budget for this device class: the manifest's, tightened (never loosened) by the config."""
        operational = self.config.monitor.operational
        manifest_ms, _ = budget_for(model.manifest.latency_budgets, operational.device_class, None)
        local = operational.latency_budget_ms
        if manifest_ms is None:
            return local
        return manifest_ms if local is None else min(manifest_ms, local)

    def _save(self, step: Step) -> None:
        if step.before is step.after:
            return
        save_record(self.record_file, step.after)
        self._saved_at = self._monotonic()
        if step.changed:
            self._ports.report.emit(activation_event(step.after))

    # ------------------------------------------------------------------ for the manual controls and readers

    @property
    def ports(self) -> ActivationPorts:
        """The daemon's ports (the model slot, the desired state, the updater's record)."""
        return self._ports

    @property
    def live(self) -> Figures:
        """The figures measured since the last saved step (shadow, trial)."""
        return self._live

    @property
    def memory_plan(self) -> MemoryPlan | None:
        """The last memory decision."""
        return self._plan

    def abort(self, record: ActivationRecord, code: str, reason: str) -> None:
        """Main thread: ends the activation of `record` by a person's or the fleet's decision (marked rejected)."""
        self._abort(record, code, reason)

    def view(self, delivery: UpdateRecord | None) -> UpdateView | None:
        """The update for the retained status (see `activation_report.update_view`)."""
        return update_view(self._machine.record, delivery)

    def status(self) -> dict[str, Any]:
        """The activation for `edge-agent status` and `models list`."""
        return activation_status(
            self._machine.record, self._live, self._plan, self.config.ota.activation.enabled
        )


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


__all__ = ["ActivationPorts", "ActivationService", "same_release"]
