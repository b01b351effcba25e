"""The daemon: a small supervisor over the model service, the uplink, the control socket and the watchdog.

Invariants:
- the main thread only supervises: it handles signals (SIGTERM/SIGINT stop, SIGHUP reload), refreshes the system
  sample and the systemd status, runs the work other threads submitted (`MainThread`), ticks the model service and
  the uplink, and applies reloads and pipeline restarts between two ticks;
- the helpers get narrow ports (`agent.daemon.ports`), never the daemon; the model slot is the model service's alone;
- a bad input, a failing source, a broken broker or a bad reload is reported (an event, a log line) and survived;
- stop takes at most ~2 s: each part is asked to stop within one shared budget, then joined with a timeout.
"""

from __future__ import annotations

import faulthandler
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig, apply_patch, load_config
from agent.daemon.activation import ActivationPorts, ActivationService
from agent.daemon.control import ControlServer
from agent.daemon.events import EventLog
from agent.daemon.model_commands import ModelCommands
from agent.daemon.model_service import ModelService
from agent.daemon.ports import MainThread, Reporter, StatusBrief
from agent.daemon.reload import Step, adopt, plan_reload
from agent.daemon.serving import PipelinePorts
from agent.daemon.status import Identity, healthy, source_state, status_line, status_of, telemetry_of
from agent.errors import AgentError, ConfigError
from agent.events import EventType
from agent.pipeline.samples import SampleStore
from agent.platform.memory import trim, tune_malloc
from agent.platform.sdnotify import Notifier, Watchdog
from agent.platform.system import SystemProbe
from agent.sources import Item

if TYPE_CHECKING:
    from agent.daemon.updates import UpdateService
    from agent.daemon.uplink import Uplink
    from agent.link import ResultsPolicy
    from agent.ota.state import UpdateRecord
    from agent.pipeline import Sink
    from agent.release.formats import Desired

log = logging.getLogger("agent.daemon")

TICK_S = 0.5
STATE_UMASK = 0o077  # files 0600, folders 0700
STOP_BUDGET_S = 1.6  # of the 2 s from SIGTERM to exit: the rest is the interpreter's own shutdown
PIPELINE_STOP_S = 0.6  # the pipeline's share; the link gets the rest to send what waits and say offline


class Daemon:
    """One running agent."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.state_dir = config.resolved_state_dir()
        self.device_id = config.device.resolved_id()
        self.events = EventLog(config.monitor.recent_events)
        self.report = Reporter(self.events.emit)
        self.main = MainThread()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.notifier = Notifier()
        self.system = SystemProbe(disk_path=self.state_dir)
        self.system_sample: dict[str, Any] = {}
        self.uplink: Uplink | None = None  # imported only when the link is enabled
        self.updates: UpdateService | None = None  # signed model updates, when ota.enabled
        # The hard examples' folder and budget are read here, once: one store for the daemon's life.
        capture = config.monitor.capture
        self.samples = SampleStore(capture.folder or self.state_dir / "samples", capture.max_bytes)
        self.models = ModelService(
            config,
            self.state_dir,
            PipelinePorts(self.report, self.state_dir, self._uplink_sinks, self.samples),
        )
        self.activation = ActivationService(
            config,
            self.state_dir,
            ActivationPorts(self.models, self.report, self._desired, self._delivery),
        )
        self.model_commands = ModelCommands(self.activation, self.main)
        self._control: ControlServer | None = None
        self._watchdog: Watchdog | None = None
        self._last_tick = time.monotonic()
        self.exit_code = 0

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Starts the uplink, the model service, the control socket and the watchdog."""
        self._prepare_state_dir()
        self._guard("activation recovery", self.activation.recover)  # the links right before a model loads
        self.events.subscribe(self.activation.on_event)
        self._start_uplink()  # before the pipeline (the loop gets its results sink) and the report (the fleet hears it)
        self.models.start()
        self._control = ControlServer(
            self.config.resolved_socket(),
            {
                "status": lambda _: self.status(),
                "ping": lambda _: "pong",
                "reset-baseline": lambda _: self.models.reset_baseline(),
                **self.model_commands.control_handlers(),
            },
        )
        try:
            self._control.start()
        except AgentError as problem:
            self._control = None
            self.report("error", "warning", f"no local control socket: {problem}")
        self._watchdog = Watchdog(self.notifier, progress=self._progress, healthy=self._healthy)
        self._watchdog.start()
        self.notifier.ready(status_line(self.models))

    def run(self, duration_s: float | None = None, on_tick: Callable[[Daemon], object] | None = None) -> int:
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
                self._guard("model service", functools.partial(self.models.tick, now, self.system_sample))
                self._guard("activation", functools.partial(self.activation.tick, now))
                if now >= next_system:
                    self._guard("system probe", self._sample_system)
                    next_system = now + self.config.monitor.system_interval_s
                if self._reload.is_set():
                    self._reload.clear()
                    self._guard("reload", self.reload)
                self.main.run_pending()
                uplink = self.uplink
                if uplink is not None:
                    self._guard("fleet link", functools.partial(uplink.tick, now))
                self._guard("status", lambda: self.notifier.status(status_line(self.models)))
                if on_tick is not None:
                    self._guard("live view", lambda: on_tick(self))
                if deadline is not None and now >= deadline:
                    break
        finally:
            self.stop()
        return self.exit_code

    def _sample_system(self) -> None:
        self.system_sample = self.system.sample()

    def _guard(self, what: str, step: Callable[[], object]) -> None:
        """Runs one supervision step; whatever it raises is reported, and the daemon goes on."""
        try:
            step()
        except AgentError as problem:
            self.report("error", "error", f"{what} failed: {problem}")
        except Exception as problem:
            log.exception("%s failed", what)
            self.report("error", "error", f"{what} failed: {type(problem).__name__}: {problem}")

    def request_stop(self) -> None:
        """Asks the daemon to stop (signal-safe)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Asks the daemon to reload its config (signal-safe)."""
        self._reload.set()

    def request_restart(self) -> None:
        """Asks for a pipeline restart on the main thread (the `restart-pipeline` command)."""
        self.main.submit(self.models.restart)

    def stop(self) -> None:
        """Stops every part within one shared budget (SIGTERM to exit in under 2 s, whatever the broker does).

        The pipeline stops first (at most `PIPELINE_STOP_S`), so that its last events (the source stopping) are in
        the outbox before the link sends what waits, publishes `offline` and disconnects in the rest of the budget.
        """
        deadline = time.monotonic() + STOP_BUDGET_S
        self.notifier.stopping()
        self.main.close()
        if self._watchdog is not None:
            self._watchdog.stop()
        self.models.stop(time.monotonic() + PIPELINE_STOP_S)
        self.activation.stop_clean()
        stopper = None
        if self.uplink is not None:  # on a side thread, beside the control socket's own stop
            stopper = threading.Thread(
                target=self._stop_uplink,
                args=(max(0.3, deadline - time.monotonic() - 0.1),),
                name="stop-link",
                daemon=True,
            )
            stopper.start()
        if self._control is not None:
            self._control.stop()
        if stopper is not None:
            stopper.join(max(0.05, deadline - time.monotonic()))
            if stopper.is_alive():
                log.warning("the fleet link did not stop within the stop budget; leaving it behind")
        log.info("stopped")

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # State files are the device's own, whatever umask the agent was started with (SQLite creates its -wal and
        # -shm files itself, so the process umask is the one place to say it); the control socket is chmod-ed 0660
        # for the technicians' group.
        os.umask(STATE_UMASK)
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

    # ------------------------------------------------------------------ uplink

    def _start_uplink(self) -> None:
        """Starts the uplink when the link is enabled; paho, ssl and sqlite load only on a device that uses them."""
        if not self.config.link.enabled:
            return
        from agent.daemon.commands import CommandPorts, DeviceCommands
        from agent.daemon.uplink import Uplink, UplinkPorts

        commands = DeviceCommands(
            CommandPorts(
                config=_RunningConfig(self),
                main=self.main,
                report=self.report,
                state_dir=self.state_dir,
                latest_item=self.latest_item,
                restart_pipeline=self.models.restart,
                source_state=lambda: source_state(self.models),
                set_results_policy=self._set_results_policy,
                samples=self.samples,
                reset_baseline=self.models.reset_baseline,
                models=self.model_commands,
            )
        )
        ports = UplinkPorts(self.events, self.report, self.status_brief, self.telemetry, commands)
        self.uplink = Uplink(self.config, self.device_id, self.state_dir, ports)
        self.uplink.start()
        if self.config.ota.enabled:
            if self.uplink.link is None:
                self.report("update", "error", "signed model updates are off: the fleet link did not start")
                return
            from agent.daemon.updates import start_updates

            self.updates = start_updates(
                self.config, self.state_dir, self.uplink.link, self.report, self._serving
            )

    def _stop_uplink(self, timeout_s: float) -> None:
        if self.updates is not None:
            self.updates.stop(min(0.3, timeout_s / 3))
            self.updates = None
        if self.uplink is not None:
            self.uplink.stop(max(0.2, timeout_s - 0.3))
            self.uplink = None

    def _desired(self) -> Desired | None:
        return self.updates.desired() if self.updates is not None else None

    def _delivery(self) -> UpdateRecord | None:
        return self.updates.record() if self.updates is not None else None

    def _serving(self) -> tuple[str, int] | None:
        active = self.models.active
        return (active.model.name, active.model.version) if active is not None else None

    def _uplink_sinks(self) -> list[Sink]:
        return self.uplink.sinks() if self.uplink is not None else []

    def _set_results_policy(self, policy: ResultsPolicy) -> None:
        link = self.uplink.link if self.uplink is not None else None
        if link is None:
            raise AgentError("the link is not running")
        link.set_results_policy(policy)

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        """Re-reads the config (SIGHUP); applies what changed, or keeps the running config if the new one is bad."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as problem:
            self.report("error", "error", f"config reload refused, keeping the running config: {problem}")
            self.notifier.ready(status_line(self.models))
            return
        if not plan_reload(self.config, new).changed:
            log.info("config reloaded: nothing changed")
        else:
            try:
                self.apply_config(new)
            except Exception as problem:  # whatever went wrong, the running config stays
                self.report("error", "error", f"config reload failed, keeping the running config: {problem}")
        self.notifier.ready(status_line(self.models))

    def apply_config(self, new: AgentConfig, only: set[str] | None = None) -> list[str]:
        """Applies a new config live where it can (only the `only` sections, if given); returns what changed."""
        plan = plan_reload(self.config, new, only)
        new = adopt(self.config, new, plan)
        if Step.SET_LOG_LEVEL in plan:
            logging.getLogger().setLevel(new.log_level.upper())
        if Step.RESTART_PIPELINE in plan:
            self.models.reconfigure(new, reload_model=Step.LOAD_MODEL in plan, restart=True)
        elif Step.REPLACE_SINKS in plan:
            self.models.replace_local_sinks(new)
        self.models.config = new
        self.config = new
        if Step.RESTART_UPLINK in plan:
            self._stop_uplink(5.0)
            self._start_uplink()
            self.models.uplink_changed()
        kind: EventType = "model" if "model" in plan.changed else "source"
        self.report(kind, "info", f"config applied: {', '.join(plan.changed)} changed")
        return list(plan.changed)

    # ------------------------------------------------------------------ readers (any thread)

    def _progress(self) -> int:
        pipeline = self.models.pipeline
        return pipeline.loop.progress if pipeline is not None else 0

    def _healthy(self) -> bool:
        """False only when an invoke hangs: an idle loop behind a stalled source is healthy."""
        return healthy(self.models, self._last_tick, time.monotonic())

    def latest_item(self) -> Item | None:
        """The newest item the loop handled (for the `snapshot` command)."""
        pipeline = self.models.pipeline
        return pipeline.monitors.latest if pipeline is not None else None

    def status_brief(self) -> StatusBrief:
        """The model in service and each source's state, for the retained MQTT status."""
        active, pipeline = self.models.active, self.models.pipeline
        update = self.activation.view(self._delivery())
        if active is None:
            return StatusBrief(None, {}, update)
        model = active.model
        return StatusBrief(
            (model.name, model.version), pipeline.source_states() if pipeline is not None else {}, update
        )

    def telemetry(self) -> dict[str, Any]:
        """The metrics snapshot published to the fleet."""
        return telemetry_of(self.models, self.events, self.system_sample)

    def status(self) -> dict[str, Any]:
        """Everything `edge-agent status` shows, JSON-ready."""
        link = (
            self.uplink.status()
            if self.uplink is not None
            else {"enabled": self.config.link.enabled, "state": "off"}
        )
        identity = Identity(self.device_id, self.state_dir, self.started_at)
        data = status_of(identity, self.models, self.events, self.system_sample, link)
        data["update"] = (
            self.updates.status() if self.updates is not None else {"enabled": self.config.ota.enabled}
        )
        data["update"]["activation"] = self.activation.status()
        return data


class _RunningConfig:
    """The daemon's running config as the commands see it (the `ConfigPort`)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def current(self) -> AgentConfig:
        """The config running now."""
        return self._daemon.config

    def apply_live(self, patch: Mapping[str, Any], sections: set[str]) -> list[str]:
        """Main thread: the patch on the config running now (not a stale copy), applied live."""
        return self._daemon.apply_config(apply_patch(self._daemon.config, patch), only=sections)

    def adopt(self, patch: Mapping[str, Any]) -> None:
        """Main thread: records a patch that its part already applied."""
        self._daemon.config = apply_patch(self._daemon.config, patch)
        self._daemon.models.config = self._daemon.config
