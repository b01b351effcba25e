"""One running pipeline for one model: source runner -> mailbox -> inference loop (monitors, health) -> sinks.

Invariants:
- a pipeline serves exactly one `ActiveModel` at a time; `swap` changes it between two items, and the monitors and the
  model's health counters follow at that same point;
- a pipeline never closes a model: the model service owns every model; `stop` returns the loop whose thread is still
  inside an invoke (None when it ended), so that the service can quarantine that model;
- `start` either leaves every part running or, having failed, every part it started stopped again;
- `stop` is bounded: each part gets a share of the caller's deadline; outside a shutdown the item in flight may
  finish within `hang_timeout_s` (a slow model is not a hung one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.daemon.observer import MonitorPorts, Monitors
from agent.daemon.ports import Reporter
from agent.errors import AgentError
from agent.events import Severity
from agent.pipeline import ActiveModel, InferenceLoop, JsonLinesSink, LatestMailbox, LoopSettings, Sink
from agent.pipeline.mailbox import Mailbox, OrderedMailbox
from agent.pipeline.records import Staged
from agent.pipeline.samples import SampleStore
from agent.pipeline.shadow import ShadowTee
from agent.sources import SourceRunner, SourceStatus, open_source

log = logging.getLogger("agent.daemon")


@dataclass(frozen=True)
class PipelinePorts:
    """What a pipeline needs besides its model and config: a reporter, where files go, the uplink's sinks."""

    report: Reporter
    state_dir: Path
    uplink_sinks: Callable[[], Sequence[Sink]]
    samples: SampleStore | None = None


def make_local_sinks(config: AgentConfig) -> list[Sink]:
    """The local result sinks the config asks for; a file that cannot be opened is an error naming the key."""
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


class Pipeline:
    """The source, the loop and their monitors and sinks for one model and one config."""

    def __init__(
        self, active: ActiveModel, config: AgentConfig, ports: PipelinePorts, local_sinks: bool = True
    ):
        self.config = config
        self._ports = ports
        self._want_local_sinks = local_sinks
        self._sinks: list[Sink] = []
        self._shadow: ShadowTee | None = None
        self.lingering_shadow: ShadowTee | None = None
        """A shadow run whose worker was still inside an invoke when it was stopped (its model must stay open)."""
        self.monitors = Monitors(
            MonitorPorts(config.monitor, config.snapshots, ports.state_dir, ports.report, ports.samples),
            active,
        )
        # a model that carries a state from item to item must see every item in order: an ordered queue that drops
        # nothing (and holds capture back when full); every other model gets the newest item only
        mailbox: Mailbox[Staged] = (
            OrderedMailbox[Staged]() if active.model.stateful else LatestMailbox[Staged]()
        )
        self.loop = InferenceLoop(
            active,
            mailbox,
            observer=self.monitors,
            settings=LoopSettings(
                max_rate_hz=config.pipeline.max_rate_hz,
                cpu_affinity=config.pipeline.cpu_affinity,
                stage_on_capture=config.pipeline.preprocess_on_capture,
            ),
        )
        self.runner: SourceRunner | None = None

    @property
    def active(self) -> ActiveModel:
        """The model in service."""
        return self.loop.active

    def start(self) -> None:
        """Opens the local sinks, starts the loop and the source; on failure stops what it started and raises."""
        try:
            self._sinks = make_local_sinks(self.config) if self._want_local_sinks else []
            self._wire_sinks()
            self.loop.start()
            source = open_source(self.config.source)
            self.runner = SourceRunner(
                source, self.config.source, self.loop.deliver, on_state=self._on_source_state
            )
            self.runner.start()
        except Exception:
            self.stop(time.monotonic() + 1.0)
            raise

    def stop(self, deadline: float | None = None) -> InferenceLoop | None:
        """Stops the source, the loop, the sinks and the monitors; returns the loop if its thread hangs in an invoke."""

        def within(limit_s: float) -> float:
            return limit_s if deadline is None else max(0.05, min(limit_s, deadline - time.monotonic()))

        if self.runner is not None:
            self.runner.stop(within(0.5))
        loop = self.loop
        if deadline is not None:
            wait_s = within(1.0)
        else:  # outside a shutdown the item in flight may finish: a slow model is not a hung one
            wait_s = max(1.0, self.config.pipeline.hang_timeout_s - loop.busy_s())
        stuck = loop if not loop.stop(wait_s) else None
        if stuck is not None:
            log.warning("the inference thread is stuck in an invoke; leaving it behind")
        self.stop_shadow(within(0.5))
        for sink in self._sinks:
            try:
                sink.close(within(0.5))
            except Exception as problem:
                log.warning("closing sink %s: %s", sink.name, problem)
        self._sinks = []
        self.monitors.close(within(0.5))
        return stuck

    # ------------------------------------------------------------------ changes while running

    def swap(self, candidate: ActiveModel) -> ActiveModel:
        """Puts `candidate` in service between two items (monitors and health follow); returns the replaced model."""
        return self.loop.swap(candidate, on_swap=self.monitors.prepare_rebind(candidate))

    def replace_local_sinks(self, config: AgentConfig) -> None:
        """Opens the sinks of `config` and closes the old ones (the loop switches between two items)."""
        fresh = make_local_sinks(config)
        old, self._sinks, self.config = self._sinks, fresh, config
        self._wire_sinks()
        for sink in old:
            sink.close()

    def uplink_changed(self) -> None:
        """Picks up the uplink's results sink after the uplink was restarted."""
        self._wire_sinks()

    def start_shadow(self, candidate: ActiveModel, every_n: int, cpu_share: float) -> ShadowTee:
        """Tees every `every_n`-th live item to `candidate` under a CPU budget; replaces a running shadow."""
        self.stop_shadow()
        self._shadow = ShadowTee(candidate, every_n=every_n, cpu_share=cpu_share)
        self._wire_sinks()
        return self._shadow

    def stop_shadow(self, timeout_s: float = 0.5) -> None:
        """Ends the shadow run, if any (`lingering_shadow` keeps it if its worker does not end in time)."""
        shadow, self._shadow = self._shadow, None
        if shadow is not None:
            self._wire_sinks()
            shadow.close(timeout_s)
            if shadow.alive():
                self.lingering_shadow = shadow

    @property
    def shadow(self) -> ShadowTee | None:
        """The shadow run in progress, if any."""
        return self._shadow

    def _wire_sinks(self) -> None:
        tee = [self._shadow] if self._shadow is not None else []
        self.loop.set_sinks([*self._sinks, *self._ports.uplink_sinks(), *tee])

    def _on_source_state(self, status: SourceStatus) -> None:
        state = status.state.value
        severity: Severity = "info" if state in ("connected", "connecting", "stopped", "ended") else "warning"
        if state == "failed":
            severity = "error"
        message = f"source {status.name}: {state}"
        if status.last_error and severity != "info":
            message += f" ({status.last_error})"
        self._ports.report("source", severity, message, {"source": status.name, "state": state})

    # ------------------------------------------------------------------ readers (any thread)

    def source_states(self) -> dict[str, str]:
        """Each source's state by name."""
        runner = self.runner
        return {runner.name: runner.status().state.value} if runner is not None else {}

    def source_status(self) -> list[dict[str, Any]]:
        """Each source's full status, JSON-ready."""
        return [self.runner.status().to_dict()] if self.runner is not None else []

    def loop_status(self) -> dict[str, Any]:
        """The worker's state, JSON-ready."""
        loop = self.loop
        return {
            "alive": loop.alive(),
            "errors": loop.errors,
            "last_error": loop.last_error,
            "busy_s": round(loop.busy_s(), 3),
            **({"queue": queue} if (queue := loop.queue_status()) is not None else {}),
        }
