"""The model service: the one owner of the model slot, and the narrow face the updater and the activation trial use.

States (`SlotState`) and the transitions between them, each a method that returns its `Outcome`:

    NO_MODEL --load/retry--> LOADING --ok--> SERVING <--activate/restore-- CANDIDATE_READY
        ^                       | fail                 \\--load_candidate--------^   | discard
        +-----------------------+                       SERVING <--returns-- STUCK <-- an invoke hangs
    any --stop--> STOPPED

- NO_MODEL: nothing serves (the configured model could not be loaded); the daemon stays up and `tick` retries every
  `model.retry_s`. LOADING: a model is being loaded and warmed up on the main thread. SERVING: one model serves.
  CANDIDATE_READY: a model serves and a loaded, warmed-up candidate waits beside it (to be activated, shadowed or
  discarded). STUCK: the model in service has been inside one invoke longer than `pipeline.hang_timeout_s`; the
  watchdog starves until it returns (then back to SERVING) or systemd restarts the process.

Invariants:
- at most one model serves, and only through `activate`, `restore_previous`, a (re)start or a reconfiguration;
- the model a swap replaced is kept loaded as `previous`, for an instant `restore_previous`, until the next swap;
- a model whose invoke hung in a stopped loop is quarantined: never served again, and closed only once that thread has
  come out of the invoke; a pipeline restarted on it serves a fresh copy loaded from the same bundle;
- transitions run on the main thread (callers on other threads go through `MainThread.submit`); readers (status,
  health, the watchdog) may run on any thread;
- every model this service loaded is closed by it exactly once (or left to the process exit while an invoke hangs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, activated_in_place, default_bundle, source_channels, source_kind
from agent.daemon.ports import Reporter
from agent.daemon.serving import Pipeline, PipelinePorts
from agent.daemon.slot import Outcome, SlotState, evidence_of, self_test
from agent.errors import AgentError, ModelError
from agent.inference import Model
from agent.monitor.health import HealthSnapshot
from agent.pipeline import ActiveModel, InferenceLoop, bind_model, warm_up
from agent.pipeline.shadow import ShadowTee

log = logging.getLogger("agent.daemon.models")

LOAD_LIMIT_S = 600.0
"""A model load (with warm-up) on the main thread, as long as it may take on the slowest device."""


@dataclass
class _Quarantined:
    model: ActiveModel
    loop: InferenceLoop


class ModelService:
    """Owns the active, previous, candidate and quarantined models and the pipeline that serves the active one."""

    def __init__(self, config: AgentConfig, state_dir: Path, ports: PipelinePorts) -> None:
        self.config = config
        self._state_dir = state_dir
        self._ports = ports
        self._report: Reporter = ports.report
        self._lock = threading.RLock()
        self._state = SlotState.NO_MODEL
        self._pipeline: Pipeline | None = None
        self._previous: ActiveModel | None = None
        self._candidate: ActiveModel | None = None
        self._quarantine: list[_Quarantined] = []
        self.problem: str | None = None
        self._next_try = 0.0
        self._loading_since: float | None = None
        self._before_stuck = SlotState.SERVING
        self._lingering_shadow: ShadowTee | None = None
        self._restarting: ActiveModel | None = None  # between a pipeline's stop and the next one's start

    # ------------------------------------------------------------------ readers (any thread)

    @property
    def state(self) -> SlotState:
        """The slot's state now."""
        return self._state

    @property
    def active(self) -> ActiveModel | None:
        """The model in service, if any (also while its pipeline is being restarted)."""
        pipeline = self._pipeline
        return pipeline.active if pipeline is not None else self._restarting

    @property
    def previous(self) -> ActiveModel | None:
        """The model the last swap replaced, kept for `restore_previous`."""
        return self._previous

    @property
    def candidate(self) -> ActiveModel | None:
        """The loaded candidate waiting beside the active model, if any."""
        return self._candidate

    @property
    def pipeline(self) -> Pipeline | None:
        """The pipeline serving the active model, if any."""
        return self._pipeline

    @property
    def quarantined(self) -> int:
        """How many models wait, never to serve again, for their hung invoke to return."""
        return len(self._quarantine)

    def loading_for(self, now: float) -> float | None:
        """Seconds the model load in progress has taken (None when none is in progress)."""
        since = self._loading_since
        return None if since is None else now - since

    def health(self) -> dict[str, Any] | None:
        """The active model's health counters since its swap (None when nothing serves)."""
        pipeline = self._pipeline
        return pipeline.monitors.health.snapshot().to_dict(time.time()) if pipeline is not None else None

    def health_snapshot(self) -> HealthSnapshot | None:
        """The active model's health counters since its swap (None when nothing serves)."""
        pipeline = self._pipeline
        return pipeline.monitors.health.snapshot() if pipeline is not None else None

    def shadow_stats(self) -> dict[str, Any] | None:
        """The shadow run's comparison counts (None when no shadow runs)."""
        pipeline = self._pipeline
        shadow = pipeline.shadow if pipeline is not None else None
        if shadow is None:
            return None
        return {"candidate": evidence_of(shadow.candidate.model), **shadow.stats.to_dict()}

    def bundle_path(self, config: AgentConfig | None = None) -> Path:
        """The model to serve: the configured bundle, or the release activated in its place (models/{name}/active,
        which the activation keeps naming a model that passed its gate); the installed one by default."""
        config = config or self.config
        configured = config.model.bundle
        if configured is None:
            return default_bundle(self._state_dir)
        return activated_in_place(self._state_dir, configured) or configured

    # ------------------------------------------------------------------ transitions (main thread)

    def start(self) -> Outcome:
        """Loads the configured model and starts serving it; if that fails, stays up without one (NO_MODEL)."""
        with self._lock:
            try:
                first = self._load_bound(self.bundle_path(), self.config)
            except (ModelError, OSError) as problem:
                return self._without_model(problem)
            return self._serve_first(first)

    def tick(self, now: float, system: Mapping[str, Any] | None = None) -> None:
        """Main thread, every tick: reaps quarantined models, follows a hang in and out, retries a missing model,
        and (given the latest system sample) lets the monitors judge their operational window."""
        if self._quarantine:
            self._reap()
        pipeline = self._pipeline
        if pipeline is not None:
            hung = pipeline.loop.busy_s(now) >= self.config.pipeline.hang_timeout_s
            if hung and self._state is not SlotState.STUCK:
                self._before_stuck, self._state = self._state, SlotState.STUCK
                model = pipeline.active.model
                self._report(
                    "model",
                    "critical",
                    f"model {model.name} v{model.version} hangs in an invoke "
                    f"(over {self.config.pipeline.hang_timeout_s:g} s); the watchdog is no longer fed",
                    evidence_of(model),
                )
            elif not hung and self._state is SlotState.STUCK:
                self._state = self._before_stuck
                log.warning("the hung invoke returned; serving again")
        elif self._state is SlotState.NO_MODEL and now >= self._next_try:
            self.retry()
        if (
            pipeline is not None and system is not None
        ):  # last: a failure here cannot hold up the rest of the tick
            pipeline.monitors.watch(now, next(iter(pipeline.source_status()), None), system)

    def retry(self) -> Outcome:
        """Tries the configured model again while none serves; on success the pipeline starts."""
        with self._lock:
            if self._pipeline is not None:
                return self._outcome(True, "a model is already in service")
            try:
                candidate = self._load_bound(self.bundle_path(), self.config)
            except (ModelError, OSError) as problem:
                self._next_try = time.monotonic() + self.config.model.retry_s
                if str(problem) != self.problem:
                    return self._without_model(problem)
                log.info("model still cannot be loaded: %s", problem)
                return self._outcome(False, f"no model in service: {problem}")
            return self._serve_first(candidate)

    def load_candidate(self, bundle: Path, self_test: bool = True) -> Outcome:
        """Loads, checks and warms up a model off the hot path, bound to the source; served at once if none serves.
        `self_test` False leaves the golden self-test to the caller (the activation's gate runs it with figures)."""
        with self._lock:
            try:
                candidate = self._load_bound(bundle, self.config, self_test)
            except (ModelError, OSError) as problem:
                return self._outcome(False, f"candidate refused: {problem}", {"bundle": str(bundle)})
            if self._pipeline is None:
                return self._serve_first(candidate)
            self._drop_candidate()
            self._candidate = candidate
            self._settle()
            model = candidate.model
            return self._outcome(True, f"candidate {model.name} v{model.version} ready", evidence_of(model))

    def discard_candidate(self) -> Outcome:
        """Closes the waiting candidate (ending its shadow run)."""
        with self._lock:
            if self._candidate is None:
                return self._outcome(False, "no candidate is loaded")
            self._drop_candidate()
            self._settle()
            return self._outcome(True, "candidate discarded")

    def activate(self) -> Outcome:
        """Puts the waiting candidate in service between two items; the replaced model is kept as `previous`."""
        with self._lock:
            candidate, pipeline = self._candidate, self._pipeline
            if candidate is None or pipeline is None:
                return self._outcome(False, "no candidate is loaded")
            if self._state is SlotState.STUCK:
                return self._outcome(
                    False, "the model in service hangs in an invoke: restart the pipeline first"
                )
            pipeline.stop_shadow()
            try:
                old = pipeline.swap(candidate)
            except ModelError as problem:
                return self._outcome(False, str(problem))
            self._candidate = None
            previous, self._previous = self._previous, old
            if previous is not None and previous.model is not candidate.model:
                self._close(previous)
            self._settle()
            return self._in_service(candidate.model)

    def restore_previous(self) -> Outcome:
        """Puts the model that the last swap replaced back in service at once, closing the one it replaces."""
        with self._lock:
            previous, pipeline = self._previous, self._pipeline
            if previous is None or pipeline is None:
                return self._outcome(False, "no previous model to restore")
            if self._state is SlotState.STUCK:
                return self._outcome(
                    False, "the model in service hangs in an invoke: restart the pipeline first"
                )
            try:
                current = pipeline.swap(previous)
            except ModelError as problem:
                return self._outcome(False, str(problem))
            self._previous = None
            self._close(current)
            model = previous.model
            self._report("model", "warning", f"restored model {model.name} v{model.version}")
            return self._outcome(True, f"restored model {model.name} v{model.version}", evidence_of(model))

    def release_previous(self) -> Outcome:
        """Closes the model the last swap replaced (memory for a candidate; a rollback then loads it from disk)."""
        with self._lock:
            previous, self._previous = self._previous, None
            if previous is None:
                return self._outcome(True, "no previous model is loaded")
            self._close(previous)
            return self._outcome(
                True, f"previous model {previous.model.name} v{previous.model.version} released"
            )

    def start_shadow(self, every_n: int = 4, cpu_share: float = 0.25) -> Outcome:
        """Runs the waiting candidate on every `every_n`-th live item beside the active model, within `cpu_share`."""
        with self._lock:
            candidate, pipeline = self._candidate, self._pipeline
            if candidate is None or pipeline is None:
                return self._outcome(False, "no candidate is loaded")
            try:
                pipeline.start_shadow(candidate, every_n, cpu_share)
            except AgentError as problem:
                return self._outcome(False, str(problem))
            return self._outcome(True, f"shadowing {candidate.model.name} v{candidate.model.version}")

    def restart(self) -> Outcome:
        """Stops and starts the source and the worker with the current config (model kept)."""
        with self._lock:
            if self._pipeline is None:  # running without a model: the restart is a new try at loading it
                return self.retry()
            active = self._stop_pipeline()
            assert active is not None  # a pipeline was running
            try:
                self._start_pipeline(active)
            except Exception as problem:
                return self._lost_pipeline(active, problem)
        self._report("source", "info", "pipeline restarted")
        return self._outcome(True, "pipeline restarted")

    def reconfigure(self, new: AgentConfig, reload_model: bool, restart: bool) -> Outcome:
        """Adopts `new`: loads its model (`reload_model`) and/or restarts the pipeline on it (`restart`).

        Raises AgentError when the change cannot be made; the running config and pipeline are then restored.
        """
        with self._lock:
            old, running = self.config, self.active
            candidate = self._load_bound(self.bundle_path(new), new) if reload_model else None
            self.config = new
            try:
                following = candidate
                if following is None and running is not None:
                    following = bind_model(running.model, source_kind(new), source_channels(new))
                if following is None:  # running without a model: try again under the new config
                    self._next_try = 0.0
                elif restart or candidate is not None:
                    self._stop_pipeline()
                    self._start_pipeline(following)
                    self.problem = None
                    if candidate is not None and running is not None and not self._quarantined(running):
                        self._close(running)
            except Exception as problem:  # back to what ran before, so the device keeps working
                self.config = old
                if candidate is not None:
                    candidate.model.close()
                self._restart_after_failure(running)
                if isinstance(problem, AgentError):
                    raise
                raise AgentError(f"{type(problem).__name__}: {problem}") from None
            return self._outcome(True, "reconfigured")

    def replace_local_sinks(self, new: AgentConfig) -> None:
        """Opens the sinks `new` asks for in place of the running ones (raises AgentError if one cannot open)."""
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.replace_local_sinks(new)
            self.config = self.config.model_copy(update={"sinks": new.sinks})

    def uplink_changed(self) -> None:
        """The uplink was restarted: the loop picks up its new results sink."""
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.uplink_changed()

    def reset_baseline(self) -> dict[str, Any]:
        """Forgets the serving model's site drift baseline; the monitor learns a new one from the next items."""
        with self._lock:
            pipeline = self._pipeline
            if pipeline is None:
                raise AgentError("no model in service: there is no baseline to reset")
            reply = pipeline.monitors.reset_baseline()
        self._report(
            "drift",
            "info",
            f"site baseline reset for {reply['model']} v{reply['version']}: learning anew",
            reply,
        )
        return reply

    def stop(self, deadline: float) -> None:
        """Stops the pipeline and closes every model, within `deadline` (a model inside a hung invoke is left)."""
        with self._lock:
            active = self._stop_pipeline(deadline)
            self._restarting = None  # nothing will start again
            self._drop_candidate()
            previous, self._previous = self._previous, None
            for model in (active, previous):
                if model is not None:
                    self._close(model)
            self._state = SlotState.STOPPED

    # ------------------------------------------------------------------ internals

    def _outcome(self, ok: bool, message: str, evidence: dict[str, Any] | None = None) -> Outcome:
        return Outcome(ok, self._state, message, evidence or {})

    def _load_bound(self, bundle: Path, config: AgentConfig, self_test_too: bool = True) -> ActiveModel:
        """A model loaded from `bundle`, checked, warmed up and bound to the config's source."""
        before, self._state = self._state, SlotState.LOADING
        self._loading_since = time.monotonic()
        try:
            model = Model.load(bundle, config.model.runtime, verify=config.model.verify)
            try:
                warm_up(model, config.model.warmup_runs)
                if config.model.self_test and self_test_too:
                    self_test(model)
                return bind_model(model, source_kind(config), source_channels(config))
            except ModelError:
                model.close()
                raise
            except Exception as problem:
                model.close()
                raise ModelError(
                    f"model {model.name} v{model.version} fails on a warm-up input: {problem}"
                ) from None
        finally:
            self._loading_since = None
            self._state = before

    def _serve_first(self, candidate: ActiveModel) -> Outcome:
        """Starts the pipeline on a model while none serves; on failure, back to serving none."""
        try:
            self._start_pipeline(candidate)
        except Exception as problem:  # the pipeline cannot start even without local sinks
            candidate.model.close()
            return self._without_model(problem)
        self.problem = None
        return self._in_service(candidate.model)

    def _start_pipeline(self, active: ActiveModel) -> None:
        """Starts a pipeline on `active` (a fresh copy if it is quarantined); again without local sinks if need be."""
        fresh: ActiveModel | None = None
        if self._quarantined(active):
            # a stopped loop's thread is still inside this model's invoke: serve a fresh copy of it
            fresh = active = self._load_bound(active.model.bundle.path, self.config)
            log.warning(
                "the previous inference thread is stuck in an invoke; serving a fresh copy of the model"
            )
        try:
            self._pipeline = self._started(active)
        except Exception:
            if fresh is not None:
                fresh.model.close()
            raise
        finally:
            self._restarting = None
        self._state = SlotState.SERVING  # a fresh pipeline is not stuck
        self._settle()

    def _settle(self) -> None:
        """Serving: CANDIDATE_READY while a candidate waits, else SERVING (kept for after a hang, while STUCK)."""
        target = SlotState.CANDIDATE_READY if self._candidate is not None else SlotState.SERVING
        if self._state is SlotState.STUCK:
            self._before_stuck = target
        else:
            self._state = target

    def _started(self, active: ActiveModel) -> Pipeline:
        """A running pipeline on `active`; if it fails (a results file that cannot be written), one without sinks."""
        pipeline = Pipeline(active, self.config, self._ports)
        try:
            pipeline.start()
            return pipeline
        except Exception as error:
            self._report("error", "error", f"pipeline start failed ({error}); running without local sinks")
        pipeline = Pipeline(active, self.config, self._ports, local_sinks=False)
        pipeline.start()
        return pipeline

    def _stop_pipeline(self, deadline: float | None = None) -> ActiveModel | None:
        """Stops the pipeline (if any); returns the model it served, quarantined if its invoke hangs."""
        pipeline = self._pipeline
        if pipeline is None:
            return None
        active = self._restarting = pipeline.active
        self._pipeline = None
        stuck = pipeline.stop(deadline)
        if stuck is not None:
            self._quarantine.append(_Quarantined(stuck.active, stuck))
        if pipeline.lingering_shadow is not None:
            self._lingering_shadow = pipeline.lingering_shadow
        if self._state in (SlotState.SERVING, SlotState.CANDIDATE_READY, SlotState.STUCK):
            self._state = SlotState.NO_MODEL
        return active

    def _restart_after_failure(self, running: ActiveModel | None) -> None:
        """After a failed change: a clean pipeline on the model that ran before (if any)."""
        self._stop_pipeline()
        if running is not None:
            try:
                self._start_pipeline(running)
            except Exception as problem:
                self._lost_pipeline(running, problem)

    def _lost_pipeline(self, active: ActiveModel | None, problem: Exception) -> Outcome:
        """The pipeline could not be started again: close the model and serve none (retried later)."""
        if active is not None and not self._quarantined(active):
            active.model.close()
        return self._without_model(problem)

    def _without_model(self, problem: Exception) -> Outcome:
        """Nothing serves: report it and try again every `model.retry_s` (a dead daemon cannot be fixed remotely)."""
        self.problem = str(problem)
        retry_s = self.config.model.retry_s
        self._next_try = time.monotonic() + retry_s
        self._state = SlotState.NO_MODEL
        message = f"no model in service: {problem}; running without one, trying again every {retry_s:g} s"
        self._report("model", "critical", message, {"bundle": str(self.bundle_path())})
        return self._outcome(False, message)

    def _in_service(self, model: Model) -> Outcome:
        message = f"model {model.name} v{model.version} in service"
        self._report("model", "info", message, evidence_of(model))
        return self._outcome(True, message, evidence_of(model))

    def _drop_candidate(self) -> None:
        candidate, self._candidate = self._candidate, None
        if candidate is None:
            return
        if self._pipeline is not None:
            self._pipeline.stop_shadow()
            self._lingering_shadow = self._pipeline.lingering_shadow
        lingering = self._lingering_shadow
        if lingering is not None and lingering.alive() and lingering.candidate.model is candidate.model:
            log.warning("the shadow run is stuck in an invoke; its candidate is left to the process exit")
            return
        self._close(candidate)

    def _close(self, active: ActiveModel) -> None:
        """Closes a model unless it is still in use (serving, previous, candidate) or quarantined."""
        in_use = [a.model for a in (self.active, self._previous, self._candidate) if a is not None]
        if any(active.model is model for model in in_use) or self._quarantined(active):
            return
        active.model.close()

    def _quarantined(self, active: ActiveModel) -> bool:
        return any(entry.model.model is active.model for entry in self._quarantine)

    def _reap(self) -> None:
        """Closes each quarantined model once its thread has come out of the invoke (unless it serves again)."""
        with self._lock:
            ended = [entry for entry in self._quarantine if not entry.loop.alive()]
            if not ended:
                return
            self._quarantine = [entry for entry in self._quarantine if entry.loop.alive()]
            for entry in ended:
                self._close(entry.model)
        log.info("the inference thread that hung has ended; its model copy is closed")


__all__ = ["LOAD_LIMIT_S", "ModelService", "Outcome", "SlotState"]
