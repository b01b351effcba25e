"""What a config change takes, as data: `plan_reload(old, new)` says which steps apply it live. Pure, no I/O.

The daemon's executor runs the steps in the order of `Step` (log level first, the uplink last), so a model that fails
to load refuses the whole change before anything else moved. Sections not named here (control, state_dir) take
effect at the next start.

| section changed            | steps                                                        |
|----------------------------|--------------------------------------------------------------|
| log_level                  | SET_LOG_LEVEL                                                |
| model                      | LOAD_MODEL (the new bundle, bound to the new source), RESTART_PIPELINE |
| source, same item kind     | RESTART_PIPELINE (the model rebound to the new channels)     |
| source, frames <-> windows | LOAD_MODEL, RESTART_PIPELINE                                 |
| pipeline, monitor, snapshots | RESTART_PIPELINE                                           |
| sinks only                 | REPLACE_SINKS (between two items, no restart)                |
| link, outbox, device, ota  | RESTART_UPLINK (with the updater)                            |
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from agent.config import AgentConfig, source_kind

PIPELINE_SECTIONS = frozenset({"source", "pipeline", "monitor", "snapshots"})
UPLINK_SECTIONS = frozenset({"link", "outbox", "device", "ota"})
LIVE_SECTIONS = frozenset({"log_level", "model", "sinks"}) | PIPELINE_SECTIONS
"""Sections that `set-config` applies at once; the others are persisted and take effect at the next start."""


class Step(enum.IntEnum):
    """One step of applying a config live, in execution order."""

    SET_LOG_LEVEL = 1
    LOAD_MODEL = 2
    RESTART_PIPELINE = 3
    REPLACE_SINKS = 4
    RESTART_UPLINK = 5


@dataclass(frozen=True)
class ReloadPlan:
    """The sections that changed and the steps that apply them, in order."""

    changed: tuple[str, ...]
    steps: tuple[Step, ...]

    def __contains__(self, step: object) -> bool:
        return step in self.steps


def changed_sections(old: AgentConfig, new: AgentConfig) -> list[str]:
    """The top-level sections whose values differ, in the config's field order."""
    before, after = old.model_dump(), new.model_dump()
    return [key for key in after if before.get(key) != after.get(key)]


def plan_reload(old: AgentConfig, new: AgentConfig, only: Iterable[str] | None = None) -> ReloadPlan:
    """The steps that take the running `old` config to `new` (restricted to the `only` sections when given)."""
    changed = changed_sections(old, new)
    if only is not None:
        allowed = set(only)
        changed = [section for section in changed if section in allowed]
    names = set(changed)
    steps: set[Step] = set()
    if "log_level" in names:
        steps.add(Step.SET_LOG_LEVEL)
    if "model" in names or ("source" in names and source_kind(old) != source_kind(new)):
        steps |= {Step.LOAD_MODEL, Step.RESTART_PIPELINE}
    if names & PIPELINE_SECTIONS:
        steps.add(Step.RESTART_PIPELINE)
    if "sinks" in names and Step.RESTART_PIPELINE not in steps:
        steps.add(Step.REPLACE_SINKS)  # a restarted pipeline opens the new sinks anyway
    if names & UPLINK_SECTIONS:
        steps.add(Step.RESTART_UPLINK)
    return ReloadPlan(tuple(changed), tuple(sorted(steps)))


def adopt(running: AgentConfig, new: AgentConfig, plan: ReloadPlan) -> AgentConfig:
    """The running config with just the planned sections taken from `new`."""
    return running.model_copy(update={section: getattr(new, section) for section in plan.changed})


__all__ = ["LIVE_SECTIONS", "ReloadPlan", "Step", "adopt", "changed_sections", "plan_reload"]
