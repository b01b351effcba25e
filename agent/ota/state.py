"""The update life cycle of one release on this device: the state enum, the persisted record, the state machine.

Pure: no I/O, no threads; the caller persists each record the machine hands back (`agent.ota.store`) and turns each
change into an event. Invariants:
- one release at a time: offering another release (a newer desired state) supersedes the one in progress at once,
  whatever its state;
- a step out of order raises `InvalidTransition` (the table `ALLOWED` is the whole life cycle);
- a refusal, and a failure that must not be retried (a spent data budget), record their reason, the targets metadata
  version and the agent version they were decided under, and hold the release: it is not tried again until the
  desired state, the metadata or the agent changes (`held`);
- an ordinary failure is retried by the next check, from where the download stands.

The activation states (self-testing, shadow, activating, trial, committed, rejected, rolled-back) share the enum, so
the wire has one vocabulary; their machine is `agent.ota.activation` (its own record, ota/activation.json, written by
the daemon's main thread while this one is written by the updater thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.ota.errors import InvalidTransition
from agent.release.formats import Activation, Name, Sha256

RECORD_SCHEMA = 1


class UpdateState(str, Enum):
    """Where a release stands on this device."""

    OFFERED = "offered"
    """The desired state names it; nothing decided yet."""
    REFUSED = "refused"
    """Not for this device, not newer, not genuine or unsafe: held until the desired state or the metadata changes."""
    DOWNLOADING = "downloading"
    """Blocks are being fetched (or copied from installed archives) into the partial file."""
    VERIFYING = "verifying"
    """The whole archive is being checked by TUF and unpacked."""
    INSTALLED = "installed"
    """A verified bundle under models/{name}/{version}/; the daemon activates it (the activation issue)."""
    FAILED = "failed"
    """A step did not complete; retried by the next check unless the record says otherwise."""
    SELF_TESTING = "self-testing"
    """Activation: the golden gate (golden vectors and latency on this device's runtime) runs on the candidate."""
    SHADOW = "shadow"
    """Activation: the candidate runs beside the active model on a sampled share of live items."""
    ACTIVATING = "activating"
    """Activation: the hot swap and the `active`/`previous` links are being replaced."""
    TRIAL = "trial"
    """Activation: the candidate serves; its trial window decides (an inconclusive verdict holds here)."""
    COMMITTED = "committed"
    """Activation: the release passed its trial and is the device's model."""
    REJECTED = "rejected"
    """Activation: refused before serving (gate, shadow, memory) or aborted; not activated again for this desired
    state."""
    ROLLED_BACK = "rolled-back"
    """Activation: the release served and failed its trial (or crashed twice, or a rollback came); the previous
    model is back."""


IN_PROGRESS = frozenset({UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.VERIFYING})

ALLOWED: dict[str, frozenset[UpdateState]] = {
    "retry": frozenset({UpdateState.REFUSED, UpdateState.FAILED}),
    "refuse": frozenset({*IN_PROGRESS, UpdateState.FAILED}),
    "start_download": frozenset({UpdateState.OFFERED, UpdateState.DOWNLOADING, UpdateState.FAILED}),
    "progress": frozenset({UpdateState.DOWNLOADING}),
    "downloaded": frozenset({UpdateState.DOWNLOADING, UpdateState.VERIFYING}),
    "installed": frozenset({UpdateState.VERIFYING}),
    "fail": frozenset({*IN_PROGRESS, UpdateState.FAILED}),
}
"""Each step and the states it may be taken from; `offer` may be taken from any state (or none)."""


class ReleaseId(BaseModel):
    """A model release: name and integer version."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: Name = Field(description="Model name.")
    version: int = Field(ge=1, description="Model version.")

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class UpdateRecord(BaseModel):
    """The persisted state of the current release (ota/state.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    schema_: Literal[1] = Field(1, alias="schema", description="Record schema version.")
    state: UpdateState
    release: ReleaseId
    changed_at: float = Field(description="Wall-clock time of the last change, seconds since the epoch.")
    agent_version: str = Field(description="The agent that took the last decision.")
    metadata_version: int | None = Field(
        None, description="Version of the trusted targets metadata the last decision was taken under."
    )
    digest: Sha256 | None = Field(None, description="The archive's SHA-256, once the signed target is known.")
    length: int | None = Field(
        None, ge=0, description="The archive's length in bytes, from the signed target."
    )
    code: str | None = Field(None, description="refused/failed: a short reason code.")
    reason: str | None = Field(None, description="refused/failed: the reason in one line.")
    retry: bool = Field(True, description="failed: whether the next check tries again.")
    attempts: int = Field(0, ge=0, description="Downloads started or resumed for this release.")
    bytes_fetched: int = Field(0, ge=0, description="Bytes fetched from the repository for the archive.")
    bytes_reused: int = Field(0, ge=0, description="Archive bytes copied from installed archives instead.")
    activation: Activation | None = Field(
        None, description="The release's signed activation thresholds, once its signed target is known."
    )
    ram_mb: int | None = Field(None, ge=0, description="The release's signed RAM figure, MiB.")


@dataclass(frozen=True)
class Change:
    """One step of the machine: the record before and after; `superseded` when another release was replaced."""

    before: UpdateRecord | None
    after: UpdateRecord

    @property
    def changed(self) -> bool:
        """Whether the step is worth an event: a new state, a new release or a new reason."""
        before = self.before
        return (
            before is None
            or before.state is not self.after.state
            or before.release != self.after.release
            or before.reason != self.after.reason
        )

    @property
    def superseded(self) -> UpdateRecord | None:
        """The record of another release this step replaced, if any."""
        if self.before is not None and self.before.release != self.after.release:
            return self.before
        return None


class UpdateMachine:
    """The life cycle of the current release; each step returns the `Change` to persist and report."""

    def __init__(
        self, record: UpdateRecord | None, agent_version: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._record = record
        self._agent_version = agent_version
        self._clock = clock

    @property
    def record(self) -> UpdateRecord | None:
        """The current record (None before the first offer)."""
        return self._record

    @property
    def state(self) -> UpdateState | None:
        """The current state (None before the first offer)."""
        return None if self._record is None else self._record.state

    def is_for(self, release: ReleaseId) -> bool:
        """Whether the current record is about `release`."""
        return self._record is not None and self._record.release == release

    @property
    def in_progress(self) -> bool:
        """Offered, downloading or verifying."""
        return self._record is not None and self._record.state in IN_PROGRESS

    def held(self, metadata_version: int | None) -> bool:
        """Whether the current release is held: refused (or failed for good) under this metadata and this agent."""
        record = self._record
        if record is None:
            return False
        blocked = record.state is UpdateState.REFUSED or (
            record.state is UpdateState.FAILED and not record.retry
        )
        return (
            blocked
            and record.agent_version == self._agent_version
            and (record.metadata_version is None or record.metadata_version == metadata_version)
        )

    def offer(self, release: ReleaseId, renew: bool = False) -> Change:
        """The desired state names `release`: a new record, unless it is already the current one (or `renew`: the
        current one is over, e.g. its installed bundle has been removed since)."""
        before = self._record
        if before is not None and before.release == release and not renew:
            return Change(before, before)
        return self._set(
            UpdateRecord(
                state=UpdateState.OFFERED,
                release=release,
                changed_at=self._clock(),
                agent_version=self._agent_version,
            )
        )

    def retry(self) -> Change:
        """A held or failed release is offered again (the metadata or the agent changed, or a failure passed)."""
        record = self._step("retry")
        return self._set(
            record.model_copy(
                update={
                    "state": UpdateState.OFFERED,
                    "code": None,
                    "reason": None,
                    "retry": True,
                    "agent_version": self._agent_version,
                }
            )
        )

    def refuse(self, code: str, reason: str, metadata_version: int | None) -> Change:
        """The release is refused for `reason`; held until the desired state, the metadata or the agent changes."""
        record = self._step("refuse")
        return self._set(
            record.model_copy(
                update={
                    "state": UpdateState.REFUSED,
                    "code": code,
                    "reason": reason,
                    "metadata_version": metadata_version,
                    "agent_version": self._agent_version,
                }
            )
        )

    def start_download(
        self,
        digest: str,
        length: int,
        metadata_version: int | None,
        activation: Activation | None = None,
        ram_mb: int | None = None,
    ) -> Change:
        """The signed target is known and the release fits: fetch (or resume fetching) its blocks."""
        record = self._step("start_download")
        if record.state is UpdateState.FAILED and not record.retry:
            raise InvalidTransition(f"{record.release} failed for good ({record.reason}): it is not retried")
        fresh = record.digest not in (None, digest)  # the release was signed again with another archive
        return self._set(
            record.model_copy(
                update={
                    "state": UpdateState.DOWNLOADING,
                    "digest": digest,
                    "length": length,
                    "metadata_version": metadata_version,
                    "activation": activation or record.activation,
                    "ram_mb": ram_mb if ram_mb is not None else record.ram_mb,
                    "code": None,
                    "reason": None,
                    "attempts": record.attempts + 1,
                    "bytes_fetched": 0 if fresh else record.bytes_fetched,
                    "bytes_reused": 0 if fresh else record.bytes_reused,
                }
            )
        )

    def progress(self, bytes_fetched: int, bytes_reused: int) -> Change:
        """Bytes fetched and reused so far (not a new state)."""
        record = self._step("progress")
        return self._set(
            record.model_copy(update={"bytes_fetched": bytes_fetched, "bytes_reused": bytes_reused})
        )

    def downloaded(self) -> Change:
        """Every block is in the partial file: verify and install it."""
        record = self._step("downloaded")
        return self._set(record.model_copy(update={"state": UpdateState.VERIFYING}))

    def installed(self) -> Change:
        """The verified bundle is in place."""
        record = self._step("installed")
        return self._set(record.model_copy(update={"state": UpdateState.INSTALLED}))

    def fail(self, code: str, reason: str, retry: bool = True) -> Change:
        """A step did not complete; the next check retries it unless `retry` is False."""
        record = self._step("fail")
        return self._set(
            record.model_copy(
                update={
                    "state": UpdateState.FAILED,
                    "code": code,
                    "reason": reason,
                    "retry": retry,
                    "agent_version": self._agent_version,
                }
            )
        )

    def _step(self, name: str) -> UpdateRecord:
        record = self._record
        if record is None:
            raise InvalidTransition(f"{name}: no release has been offered")
        if record.state not in ALLOWED[name]:
            raise InvalidTransition(f"{name}: not allowed while {record.release} is {record.state.value}")
        return record

    def _set(self, record: UpdateRecord) -> Change:
        before = self._record
        if before is not None and record.state is not before.state:
            record = record.model_copy(update={"changed_at": self._clock()})
        self._record = record
        return Change(before, record)


__all__ = [
    "ALLOWED",
    "IN_PROGRESS",
    "RECORD_SCHEMA",
    "Change",
    "ReleaseId",
    "UpdateMachine",
    "UpdateRecord",
    "UpdateState",
]
