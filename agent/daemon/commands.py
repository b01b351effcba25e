"""The device's remote commands (get-config, set-config, snapshot, restart-pipeline, set-log-level, set-results-policy;
the hard-example commands sample-list, sample-chunk, sample-confirm are in agent/daemon/sample_commands.py).

Handlers run on the link's command thread. They read through narrow ports and hand every change of the running agent
to the main thread (`MainThread.submit`), never doing it themselves; a change that fails there is reported as an
`error` event. Nothing here knows the daemon.

Invariants: a patch is validated against the running config before anything is persisted; live sections are persisted
only once they have been applied; the sections that take effect at a restart are persisted at once. Every request
gets exactly one reply, and it tells what happened: the handler waits (at most `APPLY_WAIT_S`) for the main thread's
outcome, and a new source must open within `SOURCE_CHECK_S` or the previous config is put back. A change still
running when the wait ends is replied to as `pending`; its outcome follows as an event.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import AgentConfig, apply_patch, save_overrides
from agent.daemon.model_commands import ModelCommands
from agent.daemon.ports import MainThread, Reporter
from agent.daemon.reload import LIVE_SECTIONS
from agent.daemon.sample_commands import SampleCommands
from agent.daemon.slot import Outcome
from agent.errors import AgentError, InputError
from agent.link import (
    CommandError,
    NoArgs,
    ResultsPolicy,
    SetConfigArgs,
    SetLogLevelArgs,
    SnapshotArgs,
)
from agent.link.commands import CommandRouter
from agent.pipeline.samples import SampleStore
from agent.pipeline.snapshots import encode_capped
from agent.sources import Item

log = logging.getLogger("agent.daemon.commands")

SNAPSHOT_DEFAULT_BYTES = 200_000
APPLY_WAIT_S = 8.0
"""How long a command waits for the main thread's outcome (inside the operator tool's default 10 s)."""
SOURCE_CHECK_S = 5.0
"""How long a new source has to open before set-config puts the previous config back."""
SOURCE_FAILED = ("failed", "reconnecting")


class ConfigPort(Protocol):
    """The running config: read it, apply a patch live (main thread), or adopt one without re-applying it."""

    def current(self) -> AgentConfig:
        """The config running now."""

    def apply_live(self, patch: Mapping[str, Any], sections: set[str]) -> list[str]:
        """Main thread: applies `patch`'s `sections` live; raises AgentError when the change cannot be made."""

    def adopt(self, patch: Mapping[str, Any]) -> None:
        """Main thread: records `patch` in the running config (already applied by the part it concerns)."""


@dataclass(frozen=True)
class CommandPorts:
    """What the command handlers may use."""

    config: ConfigPort
    main: MainThread
    report: Reporter
    state_dir: Path
    latest_item: Callable[[], Item | None]
    restart_pipeline: Callable[[], Outcome]
    source_state: Callable[[], tuple[str, str | None] | None]
    """The source's state and last error (None while no pipeline runs)."""
    set_results_policy: Callable[[ResultsPolicy], None]
    samples: SampleStore | None = None
    """The hard examples (sample-list, sample-chunk, sample-confirm); None: those commands are not offered."""
    reset_baseline: Callable[[], dict[str, Any]] | None = None
    """Forgets the site drift baseline (reset-baseline); raises AgentError without a model."""
    models: ModelCommands | None = None
    """models-list, activate, rollback; None: those commands are not offered."""


class DeviceCommands:
    """Registers and answers the device's commands."""

    def __init__(self, ports: CommandPorts) -> None:
        self._ports = ports

    def register(self, router: CommandRouter) -> None:
        """Adds every command to the link's router."""
        router.register("get-config", self.get_config, NoArgs)
        router.register("set-config", self.set_config, SetConfigArgs)
        router.register("snapshot", self.snapshot, SnapshotArgs)
        router.register("restart-pipeline", self.restart_pipeline, NoArgs)
        router.register("set-log-level", self.set_log_level, SetLogLevelArgs)
        router.register("set-results-policy", self.set_results_policy, ResultsPolicy)
        if self._ports.reset_baseline is not None:
            router.register("reset-baseline", self.reset_baseline, NoArgs)
        if self._ports.samples is not None:
            SampleCommands(self._ports.samples).register(router)
        if self._ports.models is not None:
            self._ports.models.register(router)

    def get_config(self, _: NoArgs) -> dict[str, Any]:
        """The running config, secrets left out."""
        return {"config": self._ports.config.current().public_dict()}

    def set_config(self, args: SetConfigArgs) -> dict[str, Any]:
        """Validates the patch now; live sections are applied on the main thread and persisted only once they work.

        A change that cannot be applied (a model that does not load, a sink path that cannot be written) is reported
        as an `error` event and never persisted, so it cannot keep the device from starting after a reboot. Sections
        that only take effect at a restart (link, device, outbox, state_dir, control) are persisted at once.
        """
        ports = self._ports
        running = ports.config.current()
        try:
            apply_patch(running, args.patch)
        except AgentError as problem:
            raise CommandError(f"invalid patch: {problem}") from None
        sections = [key for key in args.patch if key in type(running).model_fields]
        live = sorted(set(sections) & LIVE_SECTIONS)
        later = sorted(set(sections) - LIVE_SECTIONS)
        if later:
            self._persist({key: args.patch[key] for key in later})
        reply: dict[str, Any] = {"validated": True, "applied_live": live, "applied_on_restart": later}
        if not live:
            return reply
        live_patch = {key: args.patch[key] for key in live}
        before = {key: getattr(running, key) for key in live}
        future = ports.main.submit(lambda: ports.config.apply_live(live_patch, set(live)))
        try:
            future.result(APPLY_WAIT_S)
        except FutureTimeout:
            self._finish_later(future, live_patch, live)
            return {**reply, "pending": True}
        except AgentError as problem:
            raise CommandError(f"not applied, the running config is kept: {problem}") from None
        except Exception as problem:
            raise CommandError(
                f"not applied, the running config is kept: {type(problem).__name__}: {problem}"
            ) from None
        if "source" in live:
            problem_text = self._source_fails()
            if problem_text is not None:
                self._put_back(before, live)
                raise CommandError(
                    f"the new source cannot open ({problem_text}); the previous config is back in service"
                )
        self._persist(live_patch)
        ports.report(
            "model" if "model" in live else "source", "info", f"set-config applied: {', '.join(live)}"
        )
        state = ports.source_state()
        return {**reply, "source": state[0] if state else None}

    def snapshot(self, args: SnapshotArgs) -> dict[str, Any]:
        """The newest input: a JPEG (base64) under `max_bytes`, or a sensor window's values."""
        item = self._ports.latest_item()
        if item is None:
            raise CommandError("no input yet: the source has delivered nothing")
        if item.kind != "frame":
            values = item.data.tolist()
            return {"kind": "window", "seq": item.seq, "captured_at": item.captured_at, "window": values}
        try:
            jpeg = encode_capped(item.data, args.max_bytes or SNAPSHOT_DEFAULT_BYTES)
        except InputError as problem:
            raise CommandError(str(problem)) from None
        return {
            "kind": "frame",
            "seq": item.seq,
            "captured_at": item.captured_at,
            "format": "jpeg",
            "width": jpeg.width,
            "height": jpeg.height,
            "quality": jpeg.quality,
            "bytes": len(jpeg.data),
            "jpeg_base64": base64.b64encode(jpeg.data).decode(),
        }

    def restart_pipeline(self, _: NoArgs) -> dict[str, Any]:
        """Restarts the source and the worker on the main thread (the model is kept); replies with the outcome."""
        try:
            outcome = self._ports.main.call(self._ports.restart_pipeline, APPLY_WAIT_S)
        except AgentError as problem:
            raise CommandError(str(problem)) from None
        if not outcome.ok:
            raise CommandError(outcome.message)
        return {"restarted": True, **outcome.to_dict()}

    def reset_baseline(self, _: NoArgs) -> dict[str, Any]:
        """Forgets the site drift baseline (the camera was moved, the machine re-fitted): a new one is learnt."""
        reset = self._ports.reset_baseline
        if reset is None:
            raise CommandError("reset-baseline is not offered here")
        try:
            return reset()
        except AgentError as problem:
            raise CommandError(str(problem)) from None

    def set_log_level(self, args: SetLogLevelArgs) -> dict[str, Any]:
        """Changes a logger's level at run time (not persisted)."""
        logger = logging.getLogger(args.logger) if args.logger else logging.getLogger()
        logger.setLevel(args.level)
        return {"logger": args.logger or "root", "level": args.level}

    def set_results_policy(self, policy: ResultsPolicy) -> dict[str, Any]:
        """Applies the results policy to the link at once, records it in the running config and persists it."""
        ports = self._ports
        ports.set_results_policy(policy)
        patch = {"link": {"results": policy.model_dump(mode="json")}}
        self._report_failure(ports.main.submit(lambda: ports.config.adopt(patch)), "set-results-policy")
        try:
            save_overrides(ports.state_dir, patch)
        except (OSError, AgentError) as problem:
            raise CommandError(f"policy applied but not persisted: {problem}") from None
        return {"policy": policy.model_dump(mode="json"), "persisted": True}

    def _persist(self, patch: Mapping[str, Any]) -> None:
        try:
            save_overrides(self._ports.state_dir, patch)
        except (OSError, AgentError) as problem:
            raise CommandError(f"cannot persist the patch: {problem}") from None

    def _source_fails(self) -> str | None:
        """Waits for the new source to open; its error if it fails or retries within SOURCE_CHECK_S."""
        deadline = time.monotonic() + SOURCE_CHECK_S
        while True:
            state = self._ports.source_state()
            if state is None:
                return None  # no pipeline (no model in service): nothing to judge
            if state[0] in SOURCE_FAILED and state[1]:
                return state[1]
            if state[0] != "connecting" or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _put_back(self, before: Mapping[str, Any], sections: list[str]) -> None:
        """Restores the sections a refused change replaced (a full replacement of each)."""
        patch = {
            key: value.model_dump(mode="json") if hasattr(value, "model_dump") else value
            for key, value in before.items()
        }
        try:
            self._ports.main.call(lambda: self._ports.config.apply_live(patch, set(sections)), APPLY_WAIT_S)
        except Exception as problem:
            self._ports.report(
                "error", "error", f"set-config: the previous config could not be put back: {problem}"
            )

    def _finish_later(self, future: Future[Any], patch: Mapping[str, Any], live: list[str]) -> None:
        """A change still running when the reply went: persist it once it worked, report the outcome as an event."""
        ports = self._ports

        def done(finished: Future[Any]) -> None:
            problem = finished.exception()
            if problem is not None:
                ports.report("error", "error", f"set-config failed: {problem}")
                return
            try:
                save_overrides(ports.state_dir, patch)
            except (OSError, AgentError) as error:
                ports.report("error", "error", f"set-config applied but not persisted: {error}")
                return
            ports.report(
                "model" if "model" in live else "source", "info", f"set-config applied: {', '.join(live)}"
            )

        future.add_done_callback(done)

    def _report_failure(self, future: Future[Any], command: str) -> None:
        report = self._ports.report

        def done(finished: Future[Any]) -> None:
            problem = finished.exception()
            if problem is not None:
                text = (
                    str(problem)
                    if isinstance(problem, AgentError)
                    else f"{type(problem).__name__}: {problem}"
                )
                report("error", "error", f"{command} failed: {text}")

        future.add_done_callback(done)
