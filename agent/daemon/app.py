"""The daemon: wires source -> mailbox -> inference loop -> monitors and sinks -> fleet link, and runs their life cycle.

Invariants:
- the main thread only supervises: it handles signals (SIGTERM/SIGINT stop, SIGHUP reload), refreshes the system
  sample and the systemd status, publishes telemetry, and applies reloads and pipeline restarts between two ticks;
- a bad input, a failing source, a broken broker or a bad reload is reported (an event, a log line) and survived;
- stop takes at most ~2 s: each part is asked to stop, then joined with a timeout;
- the model is swapped only through `swap_model`, which keeps the previous one to restore at once (the OTA trial).
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig, default_bundle, load_config
from agent.daemon.control import ControlServer
from agent.daemon.events import EventLog
from agent.daemon.observer import Monitors
from agent.errors import AgentError, ConfigError, ModelError
from agent.events import AgentEvent
from agent.inference import Model
from agent.pipeline import (
    ActiveModel,
    InferenceLoop,
    JsonLinesSink,
    LatestMailbox,
    LoopSettings,
    Sink,
    bind_model,
)
from agent.pipeline.loop import warm_up
from agent.pipeline.records import Staged
from agent.platform.memory import trim, tune_malloc
from agent.platform.sdnotify import Notifier, Watchdog
from agent.platform.system import SystemProbe
from agent.sources import Item, SourceRunner, SourceStatus, open_source

if TYPE_CHECKING:
    from agent.daemon.fleet import FleetLink

log = logging.getLogger("agent.daemon")

TICK_S = 0.5
LOAD_LIMIT_S = (
    600.0  # a model load (with warm-up) on the main thread, as long as it may take on the slowest device
)
WITHOUT_MODEL_TICK_LIMIT_S = 30.0  # running without a model, the watchdog is fed while the main loop ticks
STOP_BUDGET_S = 1.6  # of the 2 s from SIGTERM to exit: the rest is the interpreter's own shutdown


class Daemon:
    """One running agent."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.state_dir = config.resolved_state_dir()
        self.device_id = config.device.resolved_id()
        self.events = EventLog(config.monitor.recent_events)
        self.started_at = time.time()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._restart = threading.Event()
        self._lock = threading.RLock()
        self.notifier = Notifier()
        self.system = SystemProbe(disk_path=self.state_dir)
        self._system_sample: dict[str, Any] = {}
        self._active: ActiveModel | None = None
        self._previous: ActiveModel | None = None
        self._mailbox: LatestMailbox[Staged] | None = None
        self._scheduled: queue.Queue[Callable[[], object]] = queue.Queue()
        self._loop: InferenceLoop | None = None
        self._runner: SourceRunner | None = None
        self._sinks: list[Sink] = []
        self.monitors: Monitors | None = None
        self.link: FleetLink | None = None
        self._control: ControlServer | None = None
        self._watchdog: Watchdog | None = None
        self.exit_code = 0
        # Set while no model is in service because the configured one cannot be loaded: the daemon stays up
        # (status, link, commands) and tries again every `model.retry_s`.
        self._model_problem: str | None = None
        self._next_model_try = 0.0
        self._last_tick = time.monotonic()
        # The model whose invoke a stopped loop's thread is still inside (and that loop): never served again, and
        # closed only once that thread has come out of the invoke.
        self._stuck: ActiveModel | None = None
        self._stuck_loop: InferenceLoop | None = None
        self._loading_since: float | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Loads the model, starts the pipeline, the control socket, the fleet link and the watchdog."""
        self._prepare_state_dir()
        problem: Exception | None = None
        try:
            self._active = self._load_bound(self.config)
        except (ModelError, OSError) as error:
            problem = error
        self._start_link()  # before the pipeline (the loop gets its results sink) and the report (the fleet hears it)
        if problem is not None:
            self._run_without_model(problem)
        else:
            self._start_with_sink_fallback()
        self._control = ControlServer(
            self.config.resolved_socket(), {"status": lambda _: self.status(), "ping": lambda _: "pong"}
        )
        try:
            self._control.start()
        except AgentError as problem:
            self._control = None
            self.report("error", "warning", f"no local control socket: {problem}")
        self._watchdog = Watchdog(
            self.notifier,
            progress=lambda: self._loop.progress if self._loop else 0,
            healthy=self._healthy,
        )
        self._watchdog.start()
        if self._active is not None:
            model = self._active.model
            self.report(
                "model",
                "info",
                f"model {model.name} v{model.version} in service",
                self._model_evidence(model),
            )
        self.notifier.ready(self._status_line())

    def run(self, duration_s: float | None = None, on_tick: Any = None) -> int:
        """Starts, supervises until a stop signal (or `duration_s`), then stops. Returns the exit status."""
        self._install_signals()
        faulthandler.enable()  # a watchdog SIGABRT leaves every thread's stack in the journal
        tune_malloc()
        self.start()
        trim()  # what loading and warming up the model freed
        deadline = time.monotonic() + duration_s if duration_s else None
        next_system = 0.0
        try:
            while not self._stop.wait(TICK_S):
                now = self._last_tick = time.monotonic()
                if self._stuck is not None:
                    self._guard("stuck model cleanup", self._reap_stuck)
                if self._active is None and self._model_problem is not None and now >= self._next_model_try:
                    self._guard("model retry", self._retry_model)
                if now >= next_system:
                    self._guard("system probe", self._sample_system)
                    next_system = now + self.config.monitor.system_interval_s
                if self._reload.is_set():
                    self._reload.clear()
                    self._guard("reload", self.reload)
                self._run_scheduled()
                if self._restart.is_set():
                    self._restart.clear()
                    self._guard("pipeline restart", self.restart_pipeline)
                link = self.link
                if link is not None:
                    self._guard("fleet link", functools.partial(link.tick, now))
                self._guard("status", lambda: self.notifier.status(self._status_line()))
                if on_tick is not None:
                    self._guard("live view", lambda: on_tick(self))
                if deadline is not None and now >= deadline:
                    break
        finally:
            self.stop()
        return self.exit_code

    def _sample_system(self) -> None:
        self._system_sample = self.system.sample()

    def _guard(self, what: str, step: Callable[[], object]) -> None:
        """Runs one supervision step; whatever it raises is reported, and the daemon goes on."""
        try:
            step()
        except AgentError as problem:
            self.report("error", "error", f"{what} failed: {problem}")
        except Exception as problem:
            log.exception("%s failed", what)
            self.report("error", "error", f"{what} failed: {type(problem).__name__}: {problem}")

    def schedule(self, work: Callable[[], object]) -> None:
        """Runs `work` on the main thread at the next tick (for command handlers that change the pipeline)."""
        self._scheduled.put(work)

    def _run_scheduled(self) -> None:
        while True:
            try:
                work = self._scheduled.get_nowait()
            except queue.Empty:
                return
            try:
                work()
            except AgentError as problem:
                self.report("error", "error", f"scheduled change failed: {problem}")
            except Exception as problem:
                log.exception("scheduled change failed")
                self.report("error", "error", f"scheduled change failed: {type(problem).__name__}: {problem}")

    def request_stop(self) -> None:
        """Asks the daemon to stop (signal-safe)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Asks the daemon to reload its config (signal-safe)."""
        self._reload.set()

    def request_restart(self) -> None:
        """Asks for a pipeline restart (the `restart-pipeline` command)."""
        self._restart.set()

    def stop(self) -> None:
        """Stops every part within one shared budget (SIGTERM to exit in under 2 s, whatever the broker does)."""
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping()
        if self._watchdog is not None:
            self._watchdog.stop()
        # The link (offline status, PUBACK wait, DISCONNECT) stops beside the pipeline, not after it.
        link_stopper = None
        if self.link is not None:
            link_stopper = threading.Thread(
                target=self.link.stop, args=(STOP_BUDGET_S - 0.4,), name="stop-link", daemon=True
            )
            link_stopper.start()
        self._stop_pipeline(deadline)
        if self._control is not None:
            self._control.stop()
        if link_stopper is not None:
            link_stopper.join(max(0.05, deadline - time.monotonic()))
            if link_stopper.is_alive():
                log.warning("the fleet link did not stop within the stop budget; leaving it behind")
        loop_stuck = self._loop is not None and self._loop.alive()
        stuck_model = self._stuck.model if self._stuck is not None else None
        with self._lock:
            for active in (self._active, self._previous):
                # a model still inside a hung invoke is left to the process exit: closing it could crash natively
                if active is None or active.model is stuck_model or (loop_stuck and active is self._active):
                    continue
                active.model.close()
            self._active = self._previous = None
        log.info("stopped")

    def _start_link(self) -> None:
        """Starts the fleet link when enabled; paho, ssl and sqlite are loaded only on a device that uses them."""
        if not self.config.link.enabled:
            return
        from agent.daemon.fleet import FleetLink

        self.link = FleetLink(self)
        self.link.start()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def _prepare_state_dir(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as problem:
            raise ConfigError(
                f"state directory {self.state_dir} is not writable ({problem.strerror}); set state_dir in the config"
            ) from None

    # ------------------------------------------------------------------ pipeline

    def _source_kind(self, config: AgentConfig | None = None) -> str:
        return "window" if getattr((config or self.config).source, "window", None) else "frame"

    def _source_channels(self, config: AgentConfig | None = None) -> tuple[str, ...] | None:
        channels = getattr((config or self.config).source, "channels", None)
        return tuple(channels) if channels else None

    def _start_pipeline(self, local_sinks: bool = True) -> None:
        config = self.config
        assert self._active is not None
        if self._stuck is not None and self._active.model is self._stuck.model:
            # a stopped loop's thread is still inside this model's invoke: serve a fresh copy of it
            self._active = self.load_candidate(self._stuck.model.bundle.path)
            log.warning(
                "the previous inference thread is stuck in an invoke; serving a fresh copy of the model"
            )
        self._mailbox = LatestMailbox()
        self._sinks = self._make_sinks(config) if local_sinks else []
        self.monitors = Monitors(self, self._active)
        self._loop = InferenceLoop(
            self._active,
            self._mailbox,
            sinks=[*self._sinks, *self._link_sinks()],
            observer=self.monitors,
            settings=LoopSettings(
                max_rate_hz=config.pipeline.max_rate_hz,
                cpu_affinity=config.pipeline.cpu_affinity,
                stage_on_capture=config.pipeline.preprocess_on_capture,
            ),
        )
        self._loop.start()
        source = open_source(config.source)
        self._runner = SourceRunner(source, config.source, self._loop.deliver, on_state=self._on_source_state)
        self._runner.start()

    def _stop_pipeline(self, deadline: float | None = None) -> None:
        def within(limit_s: float) -> float:
            return limit_s if deadline is None else max(0.05, min(limit_s, deadline - time.monotonic()))

        if self._runner is not None:
            self._runner.stop(within(0.5))
        loop = self._loop
        if deadline is not None or loop is None:
            wait_s = within(1.0)
        else:  # outside a shutdown the item in flight may finish: a slow model is not a hung one
            wait_s = max(1.0, self.config.pipeline.hang_timeout_s - loop.busy_s())
        if loop is not None and not loop.stop(wait_s):
            log.warning("the inference thread is stuck in an invoke; leaving it behind")
            self._stuck, self._stuck_loop = loop.active, loop
        for sink in self._sinks:
            try:
                sink.close(within(0.5))
            except Exception as problem:
                log.warning("closing sink %s: %s", sink.name, problem)
        self._sinks = []
        if self.monitors is not None:
            self.monitors.close(within(0.5))

    def _reap_stuck(self) -> None:
        """Closes the model a hung invoke held, once that thread has come out of it (unless it is in use again)."""
        stuck, loop = self._stuck, self._stuck_loop
        if stuck is None or loop is None or loop.alive():
            return
        with self._lock:
            self._stuck = self._stuck_loop = None
            in_use = [a.model for a in (self._active, self._previous) if a is not None]
            if all(stuck.model is not model for model in in_use):
                stuck.model.close()
        log.info("the inference thread that hung has ended; its model copy is closed")

    def restart_pipeline(self) -> None:
        """Stops and starts the source and the worker with the current config (model kept)."""
        if self._active is None:  # running without a model: the restart is a new try at loading it
            self._next_model_try = 0.0
            self._retry_model()
            return
        with self._lock:
            self._stop_pipeline()
            self._start_pipeline()
        self.report("source", "info", "pipeline restarted")

    def _restart_after_failure(self) -> None:
        """After a failed change: a clean pipeline with the running config (local sinks off if they were the cause)."""
        self._stop_pipeline()
        if self._active is None:  # running without a model: nothing to restart
            return
        self._start_with_sink_fallback()

    def _make_sinks(self, config: AgentConfig) -> list[Sink]:
        sinks: list[Sink] = []
        if config.sinks.jsonl.enabled:
            path = config.sinks.jsonl.path
            try:
                sinks.append(JsonLinesSink(path, config.sinks.jsonl.every_n))
            except OSError as problem:
                raise AgentError(
                    f"cannot open the results file {path} (sinks.jsonl.path): {problem.strerror or problem}"
                ) from None
        return sinks

    def _link_sinks(self) -> list[Sink]:
        return self.link.sinks() if self.link is not None else []

    def _on_source_state(self, status: SourceStatus) -> None:
        severity = (
            "info" if status.state.value in ("connected", "connecting", "stopped", "ended") else "warning"
        )
        if status.state.value == "failed":
            severity = "error"
        message = f"source {status.name}: {status.state.value}"
        if status.last_error and severity != "info":
            message += f" ({status.last_error})"
        self.report("source", severity, message, {"source": status.name, "state": status.state.value})

    def _healthy(self) -> bool:
        """False only when an invoke hangs: an idle loop behind a stalled source is healthy."""
        if self._active is None and self._model_problem is not None:
            # running without a model: healthy while the main thread keeps supervising, or loads a model
            now, loading_since = time.monotonic(), self._loading_since
            if loading_since is not None and now - loading_since < LOAD_LIMIT_S:
                return True
            return now - self._last_tick < WITHOUT_MODEL_TICK_LIMIT_S
        loop = self._loop
        if loop is None or not loop.alive():
            return False
        return loop.busy_s() < self.config.pipeline.hang_timeout_s

    # ------------------------------------------------------------------ models

    def _bundle_path(self, config: AgentConfig) -> Path:
        return config.model.bundle if config.model.bundle is not None else default_bundle(self.state_dir)

    def _load(self, bundle: Path, config: AgentConfig | None = None) -> Model:
        config = config or self.config
        self._loading_since = time.monotonic()
        try:
            return self._load_and_warm(bundle, config)
        finally:
            self._loading_since = None

    def _load_and_warm(self, bundle: Path, config: AgentConfig) -> Model:
        model = Model.load(bundle, config.model.runtime, verify=config.model.verify)
        try:
            warm_up(model, config.model.warmup_runs)
        except Exception as problem:
            model.close()
            raise ModelError(
                f"model {model.name} v{model.version} fails on a warm-up input: {problem}"
            ) from None
        return model

    def load_candidate(self, bundle: Path) -> ActiveModel:
        """Loads, checks and warms up a model off the hot path, bound to the current source."""
        model = self._load(bundle)
        try:
            return bind_model(model, self._source_kind(), self._source_channels())
        except ModelError:
            model.close()
            raise

    def _load_bound(self, config: AgentConfig) -> ActiveModel:
        """The configured model, loaded, warmed up and bound to the configured source."""
        model = self._load(self._bundle_path(config), config)
        try:
            return bind_model(model, self._source_kind(config), self._source_channels(config))
        except ModelError:
            model.close()
            raise

    def _run_without_model(self, problem: Exception) -> None:
        """Start-up could not load the model: stay up without one (a dead daemon cannot be fixed remotely)."""
        self._model_problem = str(problem)
        retry_s = self.config.model.retry_s
        self._next_model_try = time.monotonic() + retry_s
        self.report(
            "model",
            "critical",
            f"no model in service: {problem}; running without one, trying again every {retry_s:g} s",
            {"bundle": str(self._bundle_path(self.config))},
        )

    def _retry_model(self) -> None:
        """Tries the configured model again; on success the pipeline starts."""
        with self._lock:
            if self._active is not None:
                return
            try:
                candidate = self._load_bound(self.config)
            except (ModelError, OSError) as problem:
                self._next_model_try = time.monotonic() + self.config.model.retry_s
                if str(problem) != self._model_problem:
                    self._run_without_model(problem)
                else:
                    log.info("model still cannot be loaded: %s", problem)
                return
            if not self._serve_first(candidate):
                return
        model = candidate.model
        self.report(
            "model", "info", f"model {model.name} v{model.version} in service", self._model_evidence(model)
        )

    def _start_with_sink_fallback(self) -> None:
        """Starts the pipeline; if it fails (a JSON lines file that cannot be written), again without local sinks."""
        try:
            self._start_pipeline()
        except Exception as error:
            self._stop_pipeline()
            self.report("error", "error", f"pipeline start failed ({error}); running without local sinks")
            self._start_pipeline(local_sinks=False)

    def _serve_first(self, candidate: ActiveModel) -> bool:
        """Starts the pipeline on a model while none is in service; on failure, back to running without one."""
        self._active, self._model_problem = candidate, None
        try:
            self._start_with_sink_fallback()
        except Exception as problem:  # the pipeline cannot start even without local sinks
            self._stop_pipeline()
            if self._active is not None and self._active.model is not candidate.model:
                self._active.model.close()  # the fresh copy made for a stuck model
            candidate.model.close()
            self._active = None
            self._run_without_model(problem)
            return False
        return True

    def swap_model(self, candidate: ActiveModel) -> None:
        """Puts a loaded candidate in service between two items; the replaced model is kept for `restore_previous`."""
        with self._lock:
            loop = self._loop
            if (
                self._active is None or loop is None
            ):  # running without a model: the candidate starts the pipeline
                if not self._serve_first(candidate):
                    raise ModelError(
                        f"the pipeline could not start on {candidate.model.name}: {self._model_problem}"
                    )
                model = candidate.model
                self.report(
                    "model",
                    "info",
                    f"model {model.name} v{model.version} in service",
                    self._model_evidence(model),
                )
                return
            follow = self.monitors.prepare_rebind(candidate) if self.monitors is not None else None
            old = loop.swap(candidate, on_swap=follow)
            previous = self._previous
            keep = [old.model, candidate.model] + ([self._stuck.model] if self._stuck is not None else [])
            if previous is not None and all(previous.model is not model for model in keep):
                previous.model.close()
            self._previous, self._active = old, candidate
        model = candidate.model
        self.report(
            "model", "info", f"model {model.name} v{model.version} in service", self._model_evidence(model)
        )

    def restore_previous(self) -> bool:
        """Puts the model that the last swap replaced back in service at once; False if there is none."""
        with self._lock:
            previous = self._previous
            if previous is None or self._loop is None:
                return False
            follow = self.monitors.prepare_rebind(previous) if self.monitors is not None else None
            current = self._loop.swap(previous, on_swap=follow)
            self._active, self._previous = previous, None
            current.model.close()
        self.report("model", "warning", f"restored model {previous.model.name} v{previous.model.version}")
        return True

    @staticmethod
    def _model_evidence(model: Model) -> dict[str, Any]:
        return {
            "name": model.name,
            "version": model.version,
            "runtime": model.manifest.runtime,
            "bundle": str(model.bundle.path),
        }

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """Re-reads the config (SIGHUP); applies what changed, or keeps the running config if the new one is bad."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as problem:
            self.report("error", "error", f"config reload refused, keeping the running config: {problem}")
            self.notifier.ready(self._status_line())
            return
        old, changed = self.config, _changed_sections(self.config, new)
        if not changed:
            log.info("config reloaded: nothing changed")
            self.notifier.ready(self._status_line())
            return
        try:
            self.apply_config(new)
        except Exception as problem:  # whatever went wrong, the running config stays
            self.config = old
            self.report("error", "error", f"config reload failed, keeping the running config: {problem}")
        self.notifier.ready(self._status_line())

    def apply_config(self, new: AgentConfig, only: set[str] | None = None) -> list[str]:
        """Applies a new config live where it can (only the `only` sections, if given); returns what changed."""
        changed = _changed_sections(self.config, new)
        if only is not None:  # adopt just those sections; the others keep running as they are
            changed = [section for section in changed if section in only]
            new = self.config.model_copy(update={section: getattr(new, section) for section in changed})
        with self._lock:
            old = self.config
            if "log_level" in changed:
                logging.getLogger().setLevel(new.log_level.upper())
            if "model" in changed or (
                "source" in changed and self._source_kind(new) != self._source_kind(old)
            ):
                model = self._load(self._bundle_path(new), new)
                try:
                    candidate = bind_model(model, self._source_kind(new), self._source_channels(new))
                except ModelError:
                    model.close()
                    raise
            else:
                candidate = None
            self.config = new
            previous_active = self._active
            try:
                if candidate is not None or {"source", "pipeline", "monitor", "snapshots"} & set(changed):
                    following = candidate or previous_active
                    if candidate is None and "source" in changed and previous_active is not None:
                        following = bind_model(
                            previous_active.model, self._source_kind(new), self._source_channels(new)
                        )
                    if following is None:  # running without a model: try it again under the new config
                        self._next_model_try = 0.0
                    else:
                        self._stop_pipeline()
                        self._active = following
                        self._start_pipeline()
                        self._model_problem = None
                    stuck_model = self._stuck.model if self._stuck is not None else None
                    if (
                        candidate is not None
                        and previous_active is not None
                        and previous_active.model is not stuck_model
                    ):
                        previous_active.model.close()
                elif "sinks" in changed and self._loop is not None:
                    old_sinks, self._sinks = self._sinks, self._make_sinks(new)
                    self._loop.set_sinks([*self._sinks, *self._link_sinks()])
                    for sink in old_sinks:
                        sink.close()
            except Exception as problem:  # back to what ran before, so the device keeps working
                self.config = old
                if candidate is not None:
                    candidate.model.close()
                self._active = previous_active
                self._restart_after_failure()
                if isinstance(problem, AgentError):
                    raise
                raise AgentError(f"{type(problem).__name__}: {problem}") from None
            if {"link", "outbox", "device"} & set(changed):
                if self.link is not None:
                    self.link.stop()
                    self.link = None
                self._start_link()
                if self._loop is not None:
                    self._loop.set_sinks([*self._sinks, *self._link_sinks()])
        self.report(
            "model" if "model" in changed else "source",
            "info",
            f"config applied: {', '.join(changed)} changed",
        )
        return changed

    # ------------------------------------------------------------------ reports

    def report(
        self,
        kind: str,
        severity: str,
        message: str,
        evidence: dict[str, Any] | None = None,
        snapshot: str | None = None,
    ) -> AgentEvent:
        """Records an event (logged, kept for status, sent to the fleet)."""
        event = AgentEvent(kind, severity, message, evidence or {}, snapshot)  # type: ignore[arg-type]
        return self.events.emit(event)

    def _status_line(self) -> str:
        loop, active = self._loop, self._active
        if active is None and self._model_problem is not None:
            return f"no model in service: {self._model_problem}"[:200]
        if loop is None or active is None:
            return "starting"
        source = self._runner.status().state.value if self._runner else "none"
        rate = self.monitors.rate() if self.monitors else 0.0
        return f"{active.model.name} v{active.model.version}: {rate:.1f} inferences/s, source {source}"

    def latest_item(self) -> Item | None:
        """The newest item the loop handled (for the `snapshot` command)."""
        return self.monitors.latest if self.monitors is not None else None

    def status_brief(self) -> dict[str, Any]:
        """Source states by name and the model in service, for the retained MQTT status."""
        runner, active = self._runner, self._active
        sources = {runner.name: runner.status().state.value} if runner is not None else {}
        model = (active.model.name, active.model.version) if active is not None else None
        return {"sources": sources, "model": model}

    def telemetry(self) -> dict[str, Any]:
        """The metrics snapshot published to the fleet: loop metrics (with the interval), system, sources, events."""
        data: dict[str, Any] = self.monitors.snapshot(interval=True) if self.monitors else {}
        data["system"] = self._system_sample
        data["sources"] = [self._runner.status().to_dict()] if self._runner else []
        data["events"] = dict(self.events.counts)
        brief = self.status_brief()
        data["model"] = {"name": brief["model"][0], "version": brief["model"][1]} if brief["model"] else None
        return data

    def status(self) -> dict[str, Any]:
        """Everything `edge-agent status` shows, JSON-ready."""
        active, loop, previous = self._active, self._loop, self._previous
        model: dict[str, Any] | None = None
        if active is not None:
            model = {**self._model_evidence(active.model), "task": active.model.manifest.task}
        return {
            "agent": {
                "version": __version__,
                "device": self.device_id,
                "uptime_s": round(time.time() - self.started_at, 1),
                "state_dir": str(self.state_dir),
                "state": "no-model" if active is None and self._model_problem is not None else "running",
                "problem": self._model_problem if active is None else None,
            },
            "model": model,
            "previous_model": self._model_evidence(previous.model) if previous is not None else None,
            "sources": [self._runner.status().to_dict()] if self._runner else [],
            "loop": {
                "alive": loop.alive() if loop else False,
                "errors": loop.errors if loop else 0,
                "last_error": loop.last_error if loop else None,
                "busy_s": round(loop.busy_s(), 3) if loop else 0.0,
            },
            "metrics": self.monitors.snapshot() if self.monitors else {},
            "system": self._system_sample,
            "link": self.link.status() if self.link else {"enabled": False},
            "events": self.events.recent(10),
            "event_counts": dict(self.events.counts),
        }


def _changed_sections(old: AgentConfig, new: AgentConfig) -> list[str]:
    before, after = old.model_dump(), new.model_dump()
    return [key for key in after if before.get(key) != after.get(key)]
