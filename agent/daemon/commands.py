"""The device's remote commands (get-config, set-config, snapshot, restart-pipeline, set-log-level, set-results-policy).

Handlers run on the link's command thread. They read through narrow ports and hand every change of the running agent
to the main thread (`MainThread.submit`), never doing it themselves; a change that fails there is reported as an
`error` event. Nothing here knows the daemon.

Invariants: a patch is validated against the running config before anything is persisted; live sections are persisted
only once they have been applied; the sections that take effect at a restart are persisted at once.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import AgentConfig, apply_patch, save_overrides
from agent.daemon.ports import MainThread, Reporter
from agent.daemon.reload import LIVE_SECTIONS
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
from agent.pipeline.snapshots import encode_capped
from agent.sources import Item

log = logging.getLogger("agent.daemon.commands")

SNAPSHOT_DEFAULT_BYTES = 200_000


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
    restart_pipeline: Callable[[], object]
    set_results_policy: Callable[[ResultsPolicy], None]


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
        if live:
            live_patch = {key: args.patch[key] for key in live}

            def apply_then_persist() -> None:
                ports.config.apply_live(live_patch, set(live))
                save_overrides(ports.state_dir, live_patch)
                ports.report(
                    "model" if "model" in live else "source", "info", f"set-config applied: {', '.join(live)}"
                )

            self._report_failure(ports.main.submit(apply_then_persist), "set-config")
        return {"validated": True, "applied_live": live, "applied_on_restart": later}

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
        """Restarts the source and the worker on the main thread (the model is kept)."""
        self._ports.restart_pipeline()
        return {"restarting": True}

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
