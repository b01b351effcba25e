"""The daemon's side of signed model delivery: follows the retained desired state and runs the updater on its thread.

The link hands over the retained `devices/{device}/desired` and `groups/{group}/desired` messages (the device's own
topic overrides its group's; an empty retained message clears one); the `ModelUpdater` (agent/ota) does the trust
decisions (python-tuf), the block transfer and the install. Installing never touches the model in service: the
installed release waits on disk for activation.

Invariants: one updater thread, named `updater`, and it is the only caller of `ModelUpdater.check`; a newer desired
state interrupts a transfer in progress at once (the next check resumes or supersedes it); a malformed desired-state
payload is one `update` event, never a crash; stop returns within its timeout (the transfer is interrupted, its
partial file kept for the next start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.daemon.ports import Reporter
from agent.ota.state import UpdateRecord
from agent.ota.updater import CheckOutcome, ModelUpdater
from agent.release.formats import Desired

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.link import Link

log = logging.getLogger("agent.daemon.updates")

FAILED_RETRY_S = 15.0
"""After a check that failed (the repository unreachable, a transfer cut), the next one comes this soon."""


class UpdateService:
    """Follows the desired state and keeps the installed release in step with it."""

    def __init__(
        self,
        updater: ModelUpdater,
        report: Reporter,
        serving: Callable[[], tuple[str, int] | None],
        check_interval_s: float,
    ) -> None:
        self._updater = updater
        self._report = report
        self._serving = serving
        self._interval_s = check_interval_s
        self._lock = threading.Lock()
        self._own: Desired | None = None
        self._group: Desired | None = None
        self._wake = threading.Event()
        self._interrupt = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: CheckOutcome | None = None
        self._last_at: float | None = None
        self._checks = 0

    # ------------------------------------------------------------------ desired state (link thread)

    def on_desired(self, scope: str, payload: bytes) -> None:
        """A retained desired-state message for `scope` (`device` or `group`); an empty payload clears it."""
        desired: Desired | None = None
        if payload:
            try:
                desired = Desired.model_validate_json(payload)
            except ValidationError as problem:
                first = problem.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"]) or "payload"
                self._report("update", "warning", f"desired state ({scope}) refused: {where}: {first['msg']}")
                return
        with self._lock:
            before = self._effective()
            if scope == "device":
                self._own = desired
            else:
                self._group = desired
            after = self._effective()
        if after != before:
            log.info("desired state now %s", f"{after.model} v{after.version}" if after else "none")
            self._interrupt.set()  # a transfer for the old desired state stops at once
            self._wake.set()

    def _effective(self) -> Desired | None:
        return self._own if self._own is not None else self._group

    def desired(self) -> Desired | None:
        """The desired state in force: the device's own, else its group's."""
        with self._lock:
            return self._effective()

    # ------------------------------------------------------------------ the updater thread

    def start(self) -> None:
        """Starts the updater thread."""
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Interrupts a transfer and stops the thread within `timeout_s`."""
        self._stop.set()
        self._interrupt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._interrupt.clear()
            desired = self.desired()
            try:
                outcome = self._updater.check(desired, serving=self._serving(), stop=self._interrupt)
            except (
                Exception
            ) as problem:  # the updater reports what it knows; anything else must not end the thread
                log.exception("update check failed")
                self._report("update", "error", f"update check failed: {type(problem).__name__}: {problem}")
                outcome = None
            with self._lock:
                self._last, self._last_at = outcome, time.time()
                self._checks += 1
            if self._stop.is_set():
                return
            if outcome is not None and outcome.status.value == "interrupted" and not self._stop.is_set():
                continue  # a newer desired state: check again at once
            failed = outcome is None or outcome.status.value == "failed"
            self._wake.wait(min(self._interval_s, FAILED_RETRY_S) if failed else self._interval_s)

    # ------------------------------------------------------------------ readers (any thread)

    def record(self) -> UpdateRecord | None:
        """The updater's record (live: the check in progress updates it)."""
        return self._updater.record

    def status(self) -> dict[str, Any]:
        """The desired state, the update record and the last check's outcome, JSON-ready."""
        with self._lock:
            desired, last, at, checks = self._effective(), self._last, self._last_at, self._checks
        record = self._updater.record
        return {
            "desired": {"model": desired.model, "version": desired.version} if desired else None,
            "state": record.state.value if record is not None else None,
            "release": {"name": record.release.name, "version": record.release.version} if record else None,
            "reason": record.reason if record is not None else None,
            "bytes_fetched": record.bytes_fetched if record is not None else 0,
            "bytes_reused": record.bytes_reused if record is not None else 0,
            "last_check": {"status": last.status.value, "at": round(at, 3) if at else None} if last else None,
            "checks": checks,
        }


def start_updates(
    config: AgentConfig,
    state_dir: Path,
    link: Link,
    report: Reporter,
    serving: Callable[[], tuple[str, int] | None],
) -> UpdateService:
    """Builds the updater over the link, subscribes to the device's and its group's desired state, and starts it."""
    from agent.config import source_kind
    from agent.ota.mqtt_port import MqttRepoPort

    updater = ModelUpdater(
        config.ota,
        state_dir,
        MqttRepoPort(link),
        report.emit,
        fleet=config.device.fleet,
        group=config.device.group,
        input_kind="image" if source_kind(config) == "frame" else "window",
    )
    service = UpdateService(updater, report, serving, config.ota.check_interval_s)
    link.subscribe(link.topics.desired, lambda message: service.on_desired("device", message.payload))
    link.subscribe(link.topics.group_desired(), lambda message: service.on_desired("group", message.payload))
    service.start()
    return service


__all__ = ["UpdateService", "start_updates"]
