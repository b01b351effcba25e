"""The activation life cycle of one installed release: the record (ota/activation.json) and its state machine.

```
installed --begin--> self-testing --gate passed--> shadow (when the release asks) --shadow passed--> activating
    self-testing/shadow/activating --reject--> rejected                      activating --activated--> trial
    trial --commit (pass)--> committed      trial --hold (inconclusive)--> trial (reported, not judged)
    trial/committed --roll back (fail, two crashes, a rollback command)--> rolled-back
```
Pure: no I/O, no threads, no clock reads but the injected one; the daemon persists each record the machine hands back
before it acts on it (`agent.daemon.activation`). Invariants:
- one release at a time; `begin` replaces a finished record (committed, rejected, rolled-back) or restarts the same
  release; a step out of order raises `InvalidTransition` (`ALLOWED` is the whole life cycle);
- `restarted` is the only way a new process takes over a record: a crash (same boot, no clean-stop marker) during
  self-testing, shadow, activating or trial is counted, and the `MAX_CRASHES`-th rejects (before serving) or rolls
  back (serving); a restart in activating goes back to self-testing (the links are put back first, so no model that
  has not passed the gate in this process serves); a restart in trial starts the window again, crashes kept;
- a clean stop or another boot is never a crash (nightly reboots must not roll back good models);
- the thresholds in the record are the signed ones tightened by the local config, fixed at `begin`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.ota.errors import InvalidTransition
from agent.ota.state import ReleaseId, UpdateState
from agent.release.formats import Activation

ACTIVATION_SCHEMA = 1
MAX_REJECTED = 16
"""Rejected releases remembered (the oldest are forgotten first)."""
MAX_CRASHES = 2
"""Crashes of the agent (same boot, no clean stop) that end an activation."""

Verdict = Literal["pass", "fail", "inconclusive"]
Origin = Literal["update", "manual", "desired"]
Figures = dict[str, float | int]

PRE_SERVING = frozenset({UpdateState.SELF_TESTING, UpdateState.SHADOW, UpdateState.ACTIVATING})
"""The candidate has not served yet: a failure here rejects it."""
SERVING = frozenset({UpdateState.TRIAL, UpdateState.COMMITTED})
"""The release serves: a failure here rolls back to the previous model."""
FINISHED = frozenset({UpdateState.COMMITTED, UpdateState.REJECTED, UpdateState.ROLLED_BACK})
"""Nothing more happens to the release (committed stays committed until the next release)."""
UNDER_WAY = frozenset({*PRE_SERVING, UpdateState.TRIAL})
"""An activation in progress: what a restart must take over."""

ALLOWED: dict[str, frozenset[UpdateState]] = {
    "gate_passed": frozenset({UpdateState.SELF_TESTING}),
    "shadow_passed": frozenset({UpdateState.SHADOW}),
    "shadow_progress": frozenset({UpdateState.SHADOW}),
    "activated": frozenset({UpdateState.ACTIVATING}),
    "hold": frozenset({UpdateState.TRIAL}),
    "commit": frozenset({UpdateState.TRIAL}),
    "reject": PRE_SERVING,
    "roll_back": SERVING,
}
"""Each step and the states it may be taken from; `begin` and `restarted` may be taken from any state."""


class ActivationRecord(BaseModel):
    """The persisted state of the release being activated (ota/activation.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    schema_: Literal[1] = Field(1, alias="schema", description="Record schema version.")
    state: UpdateState
    release: ReleaseId
    bundle: str = Field(description="The release's installed bundle.")
    previous: ReleaseId | None = Field(
        None, description="What a rollback returns to (the model it replaces)."
    )
    previous_bundle: str | None = Field(None, description="That model's bundle.")
    origin: Origin = Field(
        "update", description="Why it is activated: an update, a person, the desired state."
    )
    desired_version: int | None = Field(
        None,
        description="The desired version when it began: a manual activation holds updates until it changes.",
    )
    thresholds: Activation = Field(description="The signed thresholds, tightened by the local config.")
    ram_mb: int | None = Field(
        None, ge=0, description="The release's RAM figure, MiB (its signed capabilities)."
    )
    started_at: float = Field(description="Wall-clock time the activation began.")
    changed_at: float = Field(description="Wall-clock time of the last change of state.")
    trial_started_at: float | None = Field(None, description="Wall-clock time the trial window (re)started.")
    boot_id: str | None = Field(None, description="The boot the record was last taken over in.")
    crashes: int = Field(0, ge=0, description="Agent crashes counted during this activation.")
    verdict: Verdict | None = Field(None, description="The last verdict (gate, shadow or trial).")
    code: str | None = Field(None, description="rejected/rolled-back/held: a short reason code.")
    reason: str | None = Field(None, description="The last decision in one line.")
    figures: Figures = Field(default_factory=dict, description="The figures behind the last decision.")
    agent_version: str = Field(description="The agent that took the last decision.")
    rejected: tuple[ReleaseId, ...] = Field(
        (), description="Earlier releases rejected or rolled back here: never activated again by an update."
    )

    def refused(self, release: ReleaseId) -> bool:
        """Whether `release` was rejected or rolled back here (this record's or an earlier one)."""
        bad = release in self.rejected
        return bad or (
            release == self.release and self.state in (UpdateState.REJECTED, UpdateState.ROLLED_BACK)
        )


@dataclass(frozen=True)
class Step:
    """One step of the machine: the record before and after."""

    before: ActivationRecord | None
    after: ActivationRecord

    @property
    def changed(self) -> bool:
        """Whether the step is worth an event: a new state, release, verdict, reason or crash count."""
        before = self.before
        return before is None or any(
            getattr(before, key) != getattr(self.after, key)
            for key in ("state", "release", "verdict", "reason", "crashes")
        )


def crashed(record_boot: str | None, boot_id: str | None, clean_stop: bool) -> bool:
    """Whether the process that held the record before this one crashed: same boot and no clean-stop marker."""
    return not clean_stop and record_boot is not None and boot_id is not None and record_boot == boot_id


class ActivationMachine:
    """The activation of the current release; each step returns the `Step` to persist (then report, then act)."""

    def __init__(
        self, record: ActivationRecord | None, agent_version: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._record = record
        self._agent_version = agent_version
        self._clock = clock

    @property
    def record(self) -> ActivationRecord | None:
        """The current record (None before the first activation)."""
        return self._record

    @property
    def state(self) -> UpdateState | None:
        """The current state (None before the first activation)."""
        return None if self._record is None else self._record.state

    @property
    def under_way(self) -> bool:
        """Self-testing, shadow, activating or trial."""
        return self._record is not None and self._record.state in UNDER_WAY

    def begin(
        self,
        release: ReleaseId,
        bundle: str,
        thresholds: Activation,
        *,
        previous: ReleaseId | None,
        previous_bundle: str | None,
        origin: Origin = "update",
        ram_mb: int | None = None,
        boot_id: str | None = None,
        desired_version: int | None = None,
    ) -> Step:
        """A new activation of `release` (from `bundle`): its golden gate comes first."""
        record = self._record
        if record is not None and record.state not in FINISHED and record.release != release:
            raise InvalidTransition(
                f"begin: {record.release} is {record.state.value}; finish it before activating {release}"
            )
        now = self._clock()
        rejected: list[ReleaseId] = []
        if record is not None:
            rejected = [old for old in record.rejected if old != release]
            if record.refused(record.release) and record.release != release:
                rejected.append(record.release)
        return self._set(
            ActivationRecord(
                state=UpdateState.SELF_TESTING,
                release=release,
                bundle=bundle,
                previous=previous,
                previous_bundle=previous_bundle,
                origin=origin,
                desired_version=desired_version,
                thresholds=thresholds,
                ram_mb=ram_mb,
                started_at=now,
                changed_at=now,
                boot_id=boot_id,
                agent_version=self._agent_version,
                rejected=tuple(rejected[-MAX_REJECTED:]),
            )
        )

    def gate_passed(self, figures: Figures) -> Step:
        """The golden gate passed: shadow next when the release asks for it, else activation."""
        record = self._step("gate_passed")
        after = UpdateState.SHADOW if record.thresholds.shadow else UpdateState.ACTIVATING
        return self._judged(record, after, "pass", None, "the golden gate passed", figures)

    def shadow_progress(self, figures: Figures) -> Step:
        """The shadow comparison's figures so far (not a new state; persisted, not reported)."""
        record = self._step("shadow_progress")
        return self._set(record.model_copy(update={"figures": {**record.figures, **figures}}))

    def shadow_passed(self, figures: Figures) -> Step:
        """The shadow comparison met the thresholds: activate."""
        record = self._step("shadow_passed")
        return self._judged(
            record, UpdateState.ACTIVATING, "pass", None, "the shadow comparison passed", figures
        )

    def activated(self, boot_id: str | None, figures: Figures | None = None) -> Step:
        """The swap is done and the links point at the release: its trial window starts now (`figures`: the
        previous model's, to compare the trial with)."""
        record = self._step("activated")
        return self._set(
            record.model_copy(
                update={
                    "state": UpdateState.TRIAL,
                    "trial_started_at": self._clock(),
                    "boot_id": boot_id,
                    "figures": {**record.figures, **(figures or {})},
                    "verdict": None,
                    "code": None,
                    "reason": None,
                }
            )
        )

    def hold(self, reason: str, figures: Figures) -> Step:
        """The trial window is over with too few items: inconclusive; the release keeps serving, uncommitted."""
        record = self._step("hold")
        return self._judged(record, UpdateState.TRIAL, "inconclusive", "inconclusive", reason, figures)

    def commit(self, figures: Figures) -> Step:
        """The trial passed: the release is the device's model."""
        record = self._step("commit")
        return self._judged(record, UpdateState.COMMITTED, "pass", None, "the trial passed", figures)

    def reject(self, code: str, reason: str, figures: Figures, verdict: Verdict | None = "fail") -> Step:
        """The release fails before it serves (gate, shadow, memory, an abort): rejected."""
        record = self._step("reject")
        return self._judged(record, UpdateState.REJECTED, verdict, code, reason, figures)

    def roll_back(
        self,
        code: str,
        reason: str,
        figures: Figures,
        verdict: Verdict | None = "fail",
        *,
        aborted: bool = False,
    ) -> Step:
        """The serving release goes and the previous model returns: rolled-back when the release failed (its trial,
        two crashes), rejected when it was `aborted` (a rollback command, a desired state naming the previous)."""
        record = self._step("roll_back")
        state = UpdateState.REJECTED if aborted else UpdateState.ROLLED_BACK
        return self._judged(record, state, verdict, code, reason, figures)

    def restarted(self, boot_id: str | None, clean_stop: bool) -> Step:
        """A new process takes the record over: counts a crash, and decides where the activation stands."""
        record = self._record
        if record is None:
            raise InvalidTransition("restarted: no activation")
        if record.state not in UNDER_WAY:
            return Step(record, record)
        crashes = record.crashes + (1 if crashed(record.boot_id, boot_id, clean_stop) else 0)
        record = record.model_copy(update={"crashes": crashes, "boot_id": boot_id})
        if crashes >= MAX_CRASHES:
            figures = {**record.figures, "crashes": crashes}
            reason = f"the agent crashed {crashes} times during {record.state.value}"
            after = UpdateState.ROLLED_BACK if record.state is UpdateState.TRIAL else UpdateState.REJECTED
            return self._judged(record, after, "fail", "crashes", reason, figures)
        if record.state is UpdateState.TRIAL:
            update: dict[str, object] = {"trial_started_at": self._clock()}
            return self._set(record.model_copy(update=update))
        return self._set(
            record.model_copy(
                update={"state": UpdateState.SELF_TESTING, "verdict": None, "code": None, "reason": None}
            )
        )

    def _judged(
        self,
        record: ActivationRecord,
        state: UpdateState,
        verdict: Verdict | None,
        code: str | None,
        reason: str,
        figures: Figures,
    ) -> Step:
        return self._set(
            record.model_copy(
                update={
                    "state": state,
                    "verdict": verdict,
                    "code": code,
                    "reason": reason,
                    "figures": {**record.figures, **figures},
                    "agent_version": self._agent_version,
                }
            )
        )

    def _step(self, name: str) -> ActivationRecord:
        record = self._record
        if record is None:
            raise InvalidTransition(f"{name}: no activation")
        if record.state not in ALLOWED[name]:
            raise InvalidTransition(f"{name}: not allowed while {record.release} is {record.state.value}")
        return record

    def _set(self, record: ActivationRecord) -> Step:
        before = self._record
        if before is not None and record.state is not before.state:
            record = record.model_copy(update={"changed_at": self._clock()})
        self._record = record
        return Step(before, record)


__all__ = [
    "ACTIVATION_SCHEMA",
    "ALLOWED",
    "FINISHED",
    "MAX_CRASHES",
    "PRE_SERVING",
    "SERVING",
    "UNDER_WAY",
    "ActivationMachine",
    "ActivationRecord",
    "Figures",
    "Origin",
    "Step",
    "Verdict",
    "crashed",
]
