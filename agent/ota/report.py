"""The updater's events: one `update` AgentEvent per change of state, and throttled `downloading` progress. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.events import AgentEvent, Phase, Severity
from agent.ota.state import ReleaseId, UpdateRecord, UpdateState
from agent.ota.transfer import TransferProgress

SEVERITY: dict[UpdateState, Severity] = {
    UpdateState.OFFERED: "info",
    UpdateState.DOWNLOADING: "info",
    UpdateState.VERIFYING: "info",
    UpdateState.INSTALLED: "info",
    UpdateState.REFUSED: "warning",
    UpdateState.FAILED: "warning",
}
TRUST_CODES = frozenset(
    {"untrusted-metadata", "rollback", "metadata-mismatch", "bad-metadata", "archive-mismatch"}
)
"""Reasons that mean someone may be attacking the device: reported as errors."""


def state_event(record: UpdateRecord, **evidence: Any) -> AgentEvent:
    """The event for a record that just changed state (or reason)."""
    release, state = record.release, record.state
    severity = SEVERITY.get(state, "info")
    if record.code in TRUST_CODES:
        severity = "error"
    message = f"{release}: {state.value}"
    if record.reason:
        message += f": {record.reason}"
    details: dict[str, Any] = {"state": state.value, "model": release.name, "version": release.version}
    if record.code:
        details["code"] = record.code
    if record.reason:
        details["reason"] = record.reason
    if state is UpdateState.FAILED:
        details["retry"] = record.retry
    return AgentEvent(type="update", severity=severity, message=message, evidence={**details, **evidence})


def note_event(
    release: ReleaseId | None, code: str, message: str, severity: Severity = "warning", phase: Phase = "start"
) -> AgentEvent:
    """An event that is not a change of state: the clock not yet sane, metadata expired, a damaged file."""
    evidence: dict[str, Any] = {"code": code}
    if release is not None:
        evidence.update(model=release.name, version=release.version)
    prefix = f"{release}: " if release is not None else "updater: "
    return AgentEvent(
        type="update", severity=severity, message=prefix + message, evidence=evidence, phase=phase
    )


def progress_event(release: ReleaseId, progress: TransferProgress) -> AgentEvent:
    """A `downloading` progress event: percent and bytes."""
    percent = round(progress.percent, 1)
    message = (
        f"{release}: downloading {percent:g} % ({progress.done_bytes} of {progress.total_bytes} bytes; "
        f"{progress.fetched_bytes} fetched, {progress.reused_bytes} reused)"
    )
    return AgentEvent(
        type="update",
        severity="info",
        message=message,
        phase="ongoing",
        evidence={
            "state": UpdateState.DOWNLOADING.value,
            "model": release.name,
            "version": release.version,
            "percent": percent,
            "bytes_done": progress.done_bytes,
            "bytes_total": progress.total_bytes,
            "bytes_fetched": progress.fetched_bytes,
            "bytes_reused": progress.reused_bytes,
        },
    )


class Throttle:
    """Lets a progress event through at most every `interval_s` seconds, and always the one that reaches 100 %."""

    def __init__(self, interval_s: float, monotonic: Callable[[], float]) -> None:
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._last: float | None = None

    def due(self, progress: TransferProgress) -> bool:
        """Whether this progress is worth an event."""
        now = self._monotonic()
        if (
            progress.done_bytes >= progress.total_bytes
            or self._last is None
            or now - self._last >= self._interval_s
        ):
            self._last = now
            return True
        return False


__all__ = ["SEVERITY", "TRUST_CODES", "Throttle", "note_event", "progress_event", "state_event"]
