"""The daemon's side of the fleet link: events, results and telemetry out; commands in.

The link knows nothing of models and the pipeline knows nothing of MQTT: this adapter is where they meet. Results go
through a threaded sink (the loop never waits on SQLite or the network), events are forwarded from the event log,
telemetry is published from the main thread's tick, and command handlers that change the pipeline hand their work to
the main thread (`Daemon.schedule`) instead of doing it on the link's command thread.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

from agent.config import apply_patch, save_overrides
from agent.errors import AgentError, InputError
from agent.events import AgentEvent
from agent.link import (
    CommandError,
    DeviceIdentity,
    Event,
    Link,
    LinkError,
    ModelRef,
    NoArgs,
    ResultsPolicy,
    SetConfigArgs,
    SetLogLevelArgs,
    SnapshotArgs,
)
from agent.pipeline import CallbackSink, ResultRecord, Sink
from agent.pipeline.snapshots import encode_capped

if TYPE_CHECKING:
    from agent.daemon.app import Daemon

log = logging.getLogger("agent.daemon.fleet")

SNAPSHOT_DEFAULT_BYTES = 200_000
LIVE_SECTIONS = {"log_level", "model", "source", "pipeline", "sinks", "snapshots", "monitor"}


class FleetLink:
    """Owns the `Link` while the daemon runs; a disabled or broken link leaves the daemon running stand-alone."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.link: Link | None = None
        self._sink: CallbackSink | None = None
        self._next_telemetry = 0.0
        self._sources_seen: dict[str, str] = {}
        self._model_seen: tuple[str, int] | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Creates and starts the link if the config enables it."""
        daemon, config = self._daemon, self._daemon.config
        if not config.link.enabled:
            return
        identity = DeviceIdentity(
            device=daemon.device_id, fleet=config.device.fleet, group=config.device.group
        )
        try:
            link = Link(config.link, identity, daemon.state_dir, outbox=config.outbox)
            self._register(link)
            link.start()
        except (LinkError, AgentError, OSError) as problem:
            daemon.report("error", "error", f"fleet link not started: {problem}")
            self.link = None
            return
        self.link = link
        self._sink = CallbackSink("fleet-results", self._publish_result)
        daemon.events.subscribe(self._forward_event)
        self._next_telemetry = time.monotonic() + min(5.0, config.link.telemetry.interval_s)
        self._sources_seen, self._model_seen = {}, None
        self.tick(time.monotonic())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publishes offline and disconnects, within `timeout_s` (a broker that never answers cannot hold it up)."""
        deadline = time.monotonic() + timeout_s
        self._daemon.events.unsubscribe(self._forward_event)
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.link is not None:
            self.link.stop(timeout_s=max(0.2, deadline - time.monotonic()))
            self.link = None

    def restart(self) -> None:
        """Stops and starts with the daemon's current config."""
        self.stop()
        self.start()

    def sinks(self) -> list[Sink]:
        """The results sink for the loop (none when the link is off)."""
        return [self._sink] if self._sink is not None else []

    # ------------------------------------------------------------------ outgoing

    def _forward_event(self, event: AgentEvent) -> None:
        if self.link is None:
            return
        self.link.publish_event(
            Event(
                id=event.id,
                type=event.type,
                severity=event.severity,
                time=event.time,
                message=event.message,
                evidence=event.evidence,
                snapshot=event.snapshot,
            )
        )

    def _publish_result(self, record: ResultRecord) -> None:
        link = self.link
        if link is None:
            return
        result = record.result
        score: float | None = None
        if result.task == "anomaly":
            score = result.score
        elif result.task == "classification" and result.labels:
            score = result.labels[0].score
        elif result.task == "detection" and result.detections:
            score = max(d.score for d in result.detections)
        link.publish_result(
            record.to_dict(),
            seq=record.item.seq,
            captured_at=record.item.captured_at,
            model=ModelRef(name=record.model_name, version=record.model_version),
            key=record.change_key(),
            score=score,
        )

    def tick(self, now: float) -> None:
        """Main thread: keeps the retained status current and publishes telemetry on its interval."""
        link, daemon = self.link, self._daemon
        if link is None:
            return
        status = daemon.status_brief()
        sources, model = status["sources"], status["model"]
        if sources != self._sources_seen or model != self._model_seen:
            self._sources_seen, self._model_seen = sources, model
            link.set_status(
                model=ModelRef(name=model[0], version=model[1]) if model else None, sources=sources
            )
        if now >= self._next_telemetry:
            self._next_telemetry = now + daemon.config.link.telemetry.interval_s
            link.publish_telemetry(daemon.telemetry())

    def status(self) -> dict[str, Any]:
        """Link state, outbox and command counters for `edge-agent status`."""
        if self.link is None:
            return {"enabled": self._daemon.config.link.enabled, "state": "off"}
        stats = self.link.stats()
        outbox = stats.get("outbox") or {}
        return {
            "enabled": True,
            "state": stats["link"].get("state"),
            "reason": stats["link"].get("reason"),
            "outbox_depth": outbox.get("total_rows"),
            **stats,
        }

    # ------------------------------------------------------------------ commands (link command thread)

    def _register(self, link: Link) -> None:
        router = link.router
        router.register("get-config", self._get_config, NoArgs)
        router.register("set-config", self._set_config, SetConfigArgs)
        router.register("snapshot", self._snapshot, SnapshotArgs)
        router.register("restart-pipeline", self._restart_pipeline, NoArgs)
        router.register("set-log-level", self._set_log_level, SetLogLevelArgs)
        router.register("set-results-policy", self._set_results_policy, ResultsPolicy)

    def _get_config(self, _: NoArgs) -> dict[str, Any]:
        return {"config": self._daemon.config.public_dict()}

    def _set_config(self, args: SetConfigArgs) -> dict[str, Any]:
        """Validates the patch now; live sections are applied on the main thread and persisted only once they work.

        A change that cannot be applied (a model that does not load, a sink path that cannot be written) is reported
        as an `error` event and never persisted, so it cannot keep the device from starting after a reboot. Sections
        that only take effect at a restart (link, device, outbox, state_dir, control) are persisted at once.
        """
        daemon = self._daemon
        try:
            apply_patch(daemon.config, args.patch)
        except AgentError as problem:
            raise CommandError(f"invalid patch: {problem}") from None
        sections = [key for key in args.patch if key in type(daemon.config).model_fields]
        live = sorted(set(sections) & LIVE_SECTIONS)
        later = sorted(set(sections) - LIVE_SECTIONS)
        if later:
            try:
                save_overrides(daemon.state_dir, {key: args.patch[key] for key in later})
            except (OSError, AgentError) as problem:
                raise CommandError(f"cannot persist the patch: {problem}") from None
        if live:
            live_patch = {key: args.patch[key] for key in live}

            def apply_then_persist() -> None:
                fresh = apply_patch(daemon.config, live_patch)  # on the config running now, not a stale copy
                daemon.apply_config(fresh, only=set(live))
                save_overrides(daemon.state_dir, live_patch)
                daemon.report(
                    "model" if "model" in live else "source", "info", f"set-config applied: {', '.join(live)}"
                )

            daemon.schedule(apply_then_persist)
        return {"validated": True, "applied_live": live, "applied_on_restart": later}

    def _snapshot(self, args: SnapshotArgs) -> dict[str, Any]:
        item = self._daemon.latest_item()
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

    def _restart_pipeline(self, _: NoArgs) -> dict[str, Any]:
        self._daemon.request_restart()
        return {"restarting": True}

    def _set_log_level(self, args: SetLogLevelArgs) -> dict[str, Any]:
        logger = logging.getLogger(args.logger) if args.logger else logging.getLogger()
        logger.setLevel(args.level)
        return {"logger": args.logger or "root", "level": args.level}

    def _set_results_policy(self, policy: ResultsPolicy) -> dict[str, Any]:
        link = self.link
        if link is None:
            raise CommandError("the link is not running")
        link.set_results_policy(policy)
        patch = {"link": {"results": policy.model_dump(mode="json")}}
        daemon = self._daemon

        def remember() -> None:
            daemon.config = apply_patch(daemon.config, patch)

        daemon.schedule(remember)
        try:
            save_overrides(daemon.state_dir, patch)
        except (OSError, AgentError) as problem:
            raise CommandError(f"policy applied but not persisted: {problem}") from None
        return {"policy": policy.model_dump(mode="json"), "persisted": True}
