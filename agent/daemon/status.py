"""What the agent says about itself: the systemd status line, the telemetry snapshot and `edge-agent status`.

Pure readers over the model service, the event log and the latest system sample; safe on any thread (the control
socket's, the link's telemetry clock, the main thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.daemon.events import EventLog
from agent.daemon.model_service import LOAD_LIMIT_S, ModelService
from agent.daemon.slot import evidence_of

WITHOUT_MODEL_TICK_LIMIT_S = 30.0
"""Running without a model, the watchdog is fed while the main loop has ticked this recently."""


def healthy(models: ModelService, last_tick: float, now: float) -> bool:
    """What the watchdog feeds on: False only when an invoke hangs (an idle loop behind a stalled source is fine)."""
    pipeline = models.pipeline
    if pipeline is None:
        if models.problem is None:
            return False
        # running without a model: healthy while the main thread keeps supervising, or loads a model
        loading_s = models.loading_for(now)
        if loading_s is not None and loading_s < LOAD_LIMIT_S:
            return True
        return now - last_tick < WITHOUT_MODEL_TICK_LIMIT_S
    loop = pipeline.loop
    return loop.alive() and loop.busy_s(now) < models.config.pipeline.hang_timeout_s


def source_state(models: ModelService) -> tuple[str, str | None] | None:
    """The source's state and last error (None while no pipeline runs)."""
    pipeline = models.pipeline
    runner = pipeline.runner if pipeline is not None else None
    if runner is None:
        return None
    status = runner.status()
    return status.state.value, status.last_error


@dataclass(frozen=True)
class Identity:
    """Who this agent is and since when."""

    device: str
    state_dir: Path
    started_at: float


def status_line(models: ModelService) -> str:
    """One line for systemd's STATUS=: the model in service and its rate, or why none serves."""
    pipeline = models.pipeline
    if pipeline is None:
        if models.problem is not None:
            return f"no model in service: {models.problem}"[:200]
        return "starting"
    model = pipeline.active.model
    source = next(iter(pipeline.source_states().values()), "none")
    return f"{model.name} v{model.version}: {pipeline.monitors.rate():.1f} inferences/s, source {source}"


def telemetry_of(models: ModelService, events: EventLog, system: dict[str, Any]) -> dict[str, Any]:
    """The metrics snapshot published to the fleet: loop metrics (with the interval), system, sources, events."""
    pipeline = models.pipeline
    data: dict[str, Any] = pipeline.monitors.snapshot(interval=True) if pipeline is not None else {}
    data["system"] = system
    data["sources"] = pipeline.source_status() if pipeline is not None else []
    data["events"] = dict(events.counts)
    model = pipeline.active.model if pipeline is not None else None
    data["model"] = {"name": model.name, "version": model.version} if model is not None else None
    return data


def status_of(
    identity: Identity,
    models: ModelService,
    events: EventLog,
    system: dict[str, Any],
    link: dict[str, Any],
) -> dict[str, Any]:
    """Everything `edge-agent status` shows, JSON-ready."""
    pipeline, previous, serving = models.pipeline, models.previous, models.active
    model: dict[str, Any] | None = None
    if serving is not None:
        model = {**evidence_of(serving.model), "task": serving.model.manifest.task}
    candidate = models.candidate
    return {
        "agent": {
            "version": __version__,
            "device": identity.device,
            "uptime_s": round(time.time() - identity.started_at, 1),
            "state_dir": str(identity.state_dir),
            "state": "no-model" if serving is None and models.problem is not None else "running",
            "problem": models.problem if serving is None else None,
            "model_slot": models.state.value,
        },
        "model": model,
        "previous_model": evidence_of(previous.model) if previous is not None else None,
        "candidate_model": evidence_of(candidate.model) if candidate is not None else None,
        "model_health": models.health(),
        "shadow": models.shadow_stats(),
        "sources": pipeline.source_status() if pipeline is not None else [],
        "loop": pipeline.loop_status()
        if pipeline is not None
        else {"alive": False, "errors": 0, "last_error": None, "busy_s": 0.0},
        "metrics": pipeline.monitors.snapshot() if pipeline is not None else {},
        "system": system,
        "link": link,
        "events": events.recent(10),
        "event_counts": dict(events.counts),
    }
