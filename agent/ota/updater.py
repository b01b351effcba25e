"""One update check: the desired release -> TUF -> is it for this device -> block transfer -> verify -> install.

The daemon calls `ModelUpdater.check` every `check_interval_s` (and when a desired state arrives) from one thread of
its own; the updater never touches the running model (the daemon activates an installed bundle later) and never
dies of what the repository or the broker sends: every refusal and failure is an `update` event and an outcome.
Invariants:
- nothing is trusted before the clock reads at least `clock_floor` (a device without RTC boots in 1970);
- a fresh ngclient Updater per check; expired metadata blocks new installs only;
- a version not above the installed (or serving) one is refused, without asking the repository;
- a refused release is not tried again until the desired state, the targets metadata or the agent changes;
- a newer desired state supersedes the release in progress at once (its partial download is discarded);
- each change of state is persisted (ota/state.json) before its event is emitted.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from agent import __version__
from agent.events import AgentEvent
from agent.ota import links
from agent.ota.checks import DeviceFacts, Limits, check_release
from agent.ota.config import OtaConfig
from agent.ota.errors import Interrupted, UpdateFailed, UpdateRefused
from agent.ota.install import (
    check_manifest,
    discard_download,
    keep_archive,
    recover,
    unpack_bundle,
    verify_archive,
)
from agent.ota.layout import Layout
from agent.ota.partial import PartialFile
from agent.ota.port import RepoPort
from agent.ota.probe import probe
from agent.ota.report import Throttle, note_event, progress_event, state_event
from agent.ota.reuse import ReuseIndex
from agent.ota.state import ALLOWED, IN_PROGRESS, Change, ReleaseId, UpdateMachine, UpdateRecord, UpdateState
from agent.ota.store import RecordDamaged, load_record, save_record
from agent.ota.transfer import BlockTransfer, TransferProgress, TransferReport, TransferSettings
from agent.ota.trust import TrustSession, fetch_index, open_session, release_custom, target_info
from agent.release.formats import BlockIndex, Desired, archive_target

MIB = 1024 * 1024


class CheckStatus(str, Enum):
    """How a check ended."""

    IDLE = "idle"
    """No desired state."""
    UP_TO_DATE = "up-to-date"
    """The desired version is installed."""
    WAITING_CLOCK = "waiting-clock"
    """The clock is below the floor: nothing trusted yet."""
    HELD = "held"
    """The desired release was refused before and nothing has changed since."""
    REFUSED = "refused"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """Asked to stop mid-transfer; the download resumes at the next check."""
    INSTALLED = "installed"


@dataclass(frozen=True)
class CheckOutcome:
    """What one check did: how it ended, the record it left, the events it emitted, its transfer's figures."""

    status: CheckStatus
    record: UpdateRecord | None
    events: tuple[AgentEvent, ...]
    transfer: TransferReport | None = None

    @property
    def reason(self) -> str | None:
        """The record's reason (refused, failed)."""
        return None if self.record is None else self.record.reason


class ModelUpdater:
    """Checks the desired release against the signed repository and installs it; one check at a time."""

    def __init__(
        self,
        config: OtaConfig,
        state_dir: Path,
        port: RepoPort,
        emit: Callable[[AgentEvent], object],
        *,
        fleet: str,
        group: str | None = None,
        input_kind: str | None = None,
        facts: Callable[[], DeviceFacts] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        agent_version: str = __version__,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.layout = Layout(state_dir)
        self._port, self._emit = port, emit
        self._fleet, self._group = fleet, group
        self._facts = facts or (lambda: probe(state_dir, input_kind))
        self._clock, self._monotonic = clock, monotonic
        self._agent_version = agent_version
        self._rng = rng
        self._events: list[AgentEvent] = []
        self._transfer: TransferReport | None = None
        self._noted: set[tuple[str, str]] = set()
        self._machine = UpdateMachine(None, agent_version, clock)

    @property
    def record(self) -> UpdateRecord | None:
        """The record the last check left."""
        return self._machine.record

    def check(
        self,
        desired: Desired | None,
        *,
        serving: tuple[str, int] | None = None,
        stop: threading.Event | None = None,
    ) -> CheckOutcome:
        """One update check for `desired` (the device's own desired state, else its group's); `serving` is the
        model the daemon runs now; `stop` interrupts a transfer (a newer desired state, the daemon stopping)."""
        self._events = []
        self._transfer = None
        status = self._check(desired, serving, stop)
        return CheckOutcome(status, self._machine.record, tuple(self._events), self._transfer)

    def _check(
        self, desired: Desired | None, serving: tuple[str, int] | None, stop: threading.Event | None
    ) -> CheckStatus:
        self._load()
        record = self._machine.record
        resumable = record is not None and (
            record.state in IN_PROGRESS or (record.state is UpdateState.FAILED and record.retry)
        )
        keep = record.digest if record is not None and resumable else None
        try:
            recover(self.layout, keep)
        except OSError as problem:
            self._note(None, "disk", f"cannot clean up after an earlier step: {problem}")
        if desired is None:
            return CheckStatus.IDLE
        release = ReleaseId(name=desired.model, version=desired.version)
        versions = self.layout.installed_versions(release.name)
        if serving is not None and serving[0] == release.name:
            versions.append(serving[1])
        installed = max(versions) if versions else None
        if serving == (release.name, release.version):
            return CheckStatus.UP_TO_DATE
        if installed is not None and installed >= release.version:
            return self._already(release, installed)
        gone = self._machine.is_for(release) and self._machine.state is UpdateState.INSTALLED
        self._apply(self._machine.offer(release, renew=gone))  # gone: installed here once, removed since
        if self._clock() < self.config.clock_floor_s:
            self._note(
                release,
                "clock",
                f"the clock reads before {self.config.clock_floor.isoformat()}: no metadata is trusted until it "
                "is set (waiting)",
            )
            return CheckStatus.WAITING_CLOCK
        metadata_version: int | None = None
        try:
            session = open_session(
                self.layout,
                self.config.trust_root,
                self._port,
                self.config.request_timeout_s,
                self._monotonic,
            )
            for note in session.notes:
                self._note(release, "trust-root", note)
            metadata_version = session.targets_version
            if self._machine.held(metadata_version):
                return CheckStatus.HELD
            if self._machine.state is UpdateState.REFUSED or (
                self._machine.state is UpdateState.FAILED
                and self._machine.record
                and not self._machine.record.retry
            ):
                self._apply(self._machine.retry())
            return self._install(session, release, desired, metadata_version, stop)
        except UpdateRefused as refusal:
            return self._refused(refusal, metadata_version)
        except UpdateFailed as problem:
            return self._failed(release, problem)
        except Interrupted:
            return CheckStatus.INTERRUPTED

    def _already(self, release: ReleaseId, installed: int) -> CheckStatus:
        machine = self._machine
        if installed > release.version and self._held_here(release):
            return CheckStatus.UP_TO_DATE  # held here before: the activation decides (the previous model)
        if installed == release.version:
            bundle = self.layout.bundle(release.name, release.version)
            if machine.is_for(release) and machine.state is UpdateState.VERIFYING and bundle.is_dir():
                record = machine.record
                assert record is not None and record.digest is not None
                try:
                    keep_archive(self.layout, release, record.digest)
                except UpdateFailed as problem:
                    self._note(release, problem.code, str(problem))
                self._apply(machine.installed(), bundle=str(bundle))
                return CheckStatus.INSTALLED
            return CheckStatus.UP_TO_DATE
        if machine.is_for(release):
            if machine.held(None):
                return CheckStatus.HELD
            if machine.state is UpdateState.INSTALLED:
                return CheckStatus.UP_TO_DATE  # it was installed here; a newer one has been since
        self._apply(machine.offer(release))
        if machine.state not in ALLOWED["refuse"]:
            self._apply(machine.retry())
        self._apply(
            machine.refuse(
                "not-newer", f"v{release.version} is not above v{installed}, which is installed", None
            )
        )
        return CheckStatus.REFUSED

    def _held_here(self, release: ReleaseId) -> bool:
        """An older release this device holds: installed, or the model its `previous` link names."""
        if self.layout.bundle(release.name, release.version).is_dir():
            return True
        previous = links.read_link(self.layout, release.name, links.PREVIOUS)
        return links.version_of(previous) == release.version

    def _install(
        self,
        session: TrustSession,
        release: ReleaseId,
        desired: Desired,
        metadata_version: int | None,
        stop: threading.Event | None,
    ) -> CheckStatus:
        info = target_info(session, archive_target(release.name, release.version))
        if info is None:
            raise UpdateRefused("not-listed", "the signed targets do not list this release")
        custom = release_custom(info)
        digest = info.hashes.get("sha256")
        if digest is None:
            raise UpdateRefused("no-sha256", "the signed target has no SHA-256 hash")
        check_release(
            custom,
            info.length,
            desired=desired,
            fleet=self._fleet,
            group=self._group,
            agent_version=self._agent_version,
            facts=self._facts(),
            limits=Limits(self.config.max_archive_mb * MIB, self.config.reserve_disk_mb * MIB),
        )
        index = fetch_index(session, self.layout, info, custom)
        machine = self._machine
        part = self.layout.part(digest)
        if machine.state is UpdateState.VERIFYING and not part.is_file():
            self._apply(machine.fail("disk", "the downloaded archive is gone; it is downloaded again"))
        if machine.state is not UpdateState.VERIFYING:
            record = machine.record
            if record is not None and record.digest not in (None, digest):
                discard_download(self.layout, record.digest)
            self._apply(
                machine.start_download(
                    digest, info.length, metadata_version, custom.activation, custom.capabilities.ram_mb
                ),
                bytes_total=info.length,
                blocks=len(index.blocks),
            )
            self._download(release, index, digest, info.length, stop)
            self._apply(machine.downloaded())
        try:
            verify_archive(session.updater, info, part)
            check_manifest(part, custom)
            bundle = unpack_bundle(self.layout, release, part, info.length)
        except UpdateRefused:
            discard_download(self.layout, digest)
            raise
        keep_archive(self.layout, release, digest)
        record = machine.record
        assert record is not None
        self._apply(
            machine.installed(),
            bundle=str(bundle),
            bytes_total=info.length,
            bytes_fetched=record.bytes_fetched,
            bytes_reused=record.bytes_reused,
        )
        return CheckStatus.INSTALLED

    def _download(
        self, release: ReleaseId, index: BlockIndex, digest: str, length: int, stop: threading.Event | None
    ) -> TransferReport:
        config = self.config
        settings = TransferSettings(
            budget_bytes=int(config.data_budget_ratio * length),
            window_blocks=config.window_blocks,
            request_blocks=config.request_blocks,
            request_timeout_s=config.request_timeout_s,
            max_tries=config.max_tries,
            retry=config.retry,
        )
        throttle = Throttle(config.progress_interval_s, self._monotonic)

        def progress(now: TransferProgress) -> None:
            if throttle.due(now):
                self._send(progress_event(release, now))

        try:
            partial = PartialFile(
                self.layout.part(digest), self.layout.bitmap(digest), index, config.checkpoint_blocks
            )
        except OSError as problem:
            raise UpdateFailed("disk", f"cannot open the partial archive: {problem}") from None
        try:
            with partial:
                transfer = BlockTransfer(
                    self._port,
                    partial,
                    ReuseIndex.scan(self.layout),
                    settings,
                    progress=progress,
                    stop=stop,
                    monotonic=self._monotonic,
                    rng=self._rng,
                )
                try:
                    return transfer.run()
                finally:
                    self._transfer = transfer.report
                    before = self._machine.record
                    if before is not None and before.state is UpdateState.DOWNLOADING:
                        reused = before.bytes_reused + transfer.report.reused_bytes
                        self._apply(self._machine.progress(partial.fetched_bytes, reused))
        except OSError as problem:
            raise UpdateFailed("disk", f"cannot write the partial archive: {problem}") from None

    def _refused(self, refusal: UpdateRefused, metadata_version: int | None) -> CheckStatus:
        machine = self._machine
        if machine.state in ALLOWED["refuse"]:
            self._apply(machine.refuse(refusal.code, str(refusal), metadata_version))
        return CheckStatus.REFUSED

    def _failed(self, release: ReleaseId, problem: UpdateFailed) -> CheckStatus:
        machine = self._machine
        if machine.state in ALLOWED["fail"]:
            self._apply(machine.fail(problem.code, str(problem), problem.retry))
        else:
            self._note(release, problem.code, str(problem))
        return CheckStatus.FAILED

    def _load(self) -> None:
        loaded = load_record(self.layout.state_file)
        if isinstance(loaded, RecordDamaged):
            self._note(None, "state-file", f"{loaded.reason}; starting from what models/ holds")
            loaded = None
        self._machine = UpdateMachine(loaded, self._agent_version, self._clock)

    def _apply(self, change: Change, **evidence: object) -> None:
        if change.before is change.after:
            return
        old = change.superseded
        if old is not None and old.digest is not None and old.state is not UpdateState.INSTALLED:
            discard_download(self.layout, old.digest)
        save_record(self.layout.state_file, change.after)
        if change.changed:
            self._noted.clear()
            if old is not None and old.state in (
                UpdateState.DOWNLOADING,
                UpdateState.VERIFYING,
                UpdateState.OFFERED,
            ):
                evidence = {**evidence, "superseded": f"{old.release}"}
            self._send(state_event(change.after, **evidence))

    def _note(self, release: ReleaseId | None, code: str, message: str) -> None:
        key = (str(release), message)
        if key in self._noted:
            return
        self._noted.add(key)
        self._send(note_event(release, code, message))

    def _send(self, event: AgentEvent) -> None:
        self._events.append(event)
        with contextlib.suppress(Exception):  # a failing event sink must not stop an install
            self._emit(event)


__all__ = ["CheckOutcome", "CheckStatus", "ModelUpdater"]
