"""What the activation says about itself: the `update` events, the update in the retained status, the status section.

Pure: a record (and the live figures) in, JSON-ready data out.
"""

from __future__ import annotations

from typing import Any

from agent.daemon.ports import UpdateView
from agent.events import AgentEvent, Severity
from agent.ota.activation import FINISHED, ActivationRecord, Figures
from agent.ota.state import UpdateRecord, UpdateState
from agent.ota.verdict import MemoryPlan

SEVERITY: dict[UpdateState, Severity] = {UpdateState.REJECTED: "warning", UpdateState.ROLLED_BACK: "error"}


def update_view(record: ActivationRecord | None, delivery: UpdateRecord | None) -> UpdateView | None:
    """The update for the retained status: this record when it is about the newest release, else delivery's."""
    if record is None or (
        delivery is not None
        and delivery.release.name == record.release.name
        and delivery.release.version > record.release.version
    ):
        if delivery is None:
            return None
        return UpdateView(
            delivery.state.value, delivery.release.name, delivery.release.version, delivery.reason
        )
    figures = record.figures  # the saved ones: live figures would republish the retained status every tick
    previous = (record.previous.name, record.previous.version) if record.previous else None
    return UpdateView(
        record.state.value,
        record.release.name,
        record.release.version,
        record.reason,
        record.verdict,
        previous,
        {key: value for key, value in figures.items() if not key.startswith("previous_")},
    )


def activation_status(
    record: ActivationRecord | None, live: Figures, plan: MemoryPlan | None, enabled: bool
) -> dict[str, Any]:
    """The activation for `edge-agent status` and `models list`."""
    out: dict[str, Any] = {"enabled": enabled}
    if plan is not None:
        out["memory"] = plan.to_dict()
    if record is None:
        return out
    out.update(
        state=record.state.value,
        release={"name": record.release.name, "version": record.release.version},
        previous={"name": record.previous.name, "version": record.previous.version}
        if record.previous
        else None,
        origin=record.origin,
        verdict=record.verdict,
        code=record.code,
        reason=record.reason,
        crashes=record.crashes,
        figures={**record.figures, **(live if record.state not in FINISHED else {})},
        thresholds=record.thresholds.model_dump(),
        rejected=[str(old) for old in record.rejected],
    )
    return out


def activation_event(record: ActivationRecord) -> AgentEvent:
    """The `update` event for a record that just changed state, verdict or reason."""
    release, state = record.release, record.state
    severity: Severity = SEVERITY.get(state, "warning" if record.verdict == "inconclusive" else "info")
    message = f"{release}: {state.value}"
    if record.reason:
        message += f": {record.reason}"
    evidence: dict[str, Any] = {
        "state": state.value,
        "release": str(release),
        "name": release.name,
        "model": release.name,
        "version": release.version,
        "origin": record.origin,
    }
    if record.verdict:
        evidence["verdict"] = record.verdict
    if record.code:
        evidence["code"] = record.code
    if record.reason:
        evidence["reason"] = record.reason
    if record.previous is not None:
        evidence["previous"] = {"name": record.previous.name, "version": record.previous.version}
    if record.figures and (record.verdict or state in FINISHED):
        evidence["figures"] = dict(record.figures)
    return AgentEvent(type="update", severity=severity, message=message, evidence=evidence)


__all__ = ["SEVERITY", "activation_event", "activation_status", "update_view"]
