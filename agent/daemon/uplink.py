"""The uplink: the device's side of the fleet link. Events, results, telemetry and the retained status out; commands in.

The link knows nothing of models and the pipeline knows nothing of MQTT: this adapter is where they meet, and where
an in-process `AgentEvent` becomes the wire payload (`event_payload`, the one conversion). Results go through a
threaded sink (the loop never waits on SQLite or the network), events are forwarded from the event log, telemetry is
taken by the link on its own clock from `UplinkPorts.telemetry`, and the retained status follows the status brief on
the main thread's tick. It gets narrow ports, never the daemon.

Invariant: a link that cannot start (bad TLS files, a password source that cannot be read) is reported and leaves the daemon
serving stand-alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.daemon.commands import DeviceCommands
from agent.daemon.events import EventLog
from agent.daemon.ports import Reporter, StatusBrief
from agent.errors import AgentError
from agent.events import AgentEvent
from agent.link import DeviceIdentity, Event, Link, LinkError, ModelRef, UpdateBrief
from agent.pipeline import CallbackSink, ResultRecord, Sink

log = logging.getLogger("agent.daemon.uplink")


def event_payload(event: AgentEvent) -> Event:
    """The wire payload of an in-process event (the device id is filled in by the link)."""
    return Event(
        id=event.id,
        type=event.type,
        severity=event.severity,
        time=event.time,
        message=event.message,
        evidence=event.evidence,
        snapshot=event.snapshot,
    )


def publish_result(link: Link, record: ResultRecord) -> bool:
    """Offers one result to the link's results policy (with its change key and top score)."""
    return link.publish_result(
        record.to_dict(),
        seq=record.item.seq,
        captured_at=record.item.captured_at,
        model=ModelRef(name=record.model_name, version=record.model_version),
        key=record.change_key(),
        score=record.result.top_score(),
    )


@dataclass(frozen=True)
class UplinkPorts:
    """What the uplink reads from the agent."""

    events: EventLog
    report: Reporter
    brief: Callable[[], StatusBrief]
    telemetry: Callable[[], dict[str, Any]]
    commands: DeviceCommands


class Uplink:
    """Owns the `Link` while the daemon runs; built only when `link.enabled` is set."""

    def __init__(self, config: AgentConfig, device_id: str, state_dir: Path, ports: UplinkPorts) -> None:
        self._config, self._device_id, self._state_dir = config, device_id, state_dir
        self._ports = ports
        self.link: Link | None = None
        self._sink: CallbackSink | None = None
        self._seen: StatusBrief | None = None

    def start(self) -> None:
        """Creates and starts the link; a failure is reported and leaves the agent stand-alone."""
        config = self._config
        identity = DeviceIdentity(
            device=self._device_id, fleet=config.device.fleet, group=config.device.group
        )
        try:
            link = Link(
                config.link,
                identity,
                self._state_dir,
                outbox=config.outbox,
                telemetry_source=self._ports.telemetry,
            )
            self._ports.commands.register(link.router)
            link.start()
        except (LinkError, AgentError, OSError) as problem:
            self._ports.report("error", "error", f"fleet link not started: {problem}")
            return
        self.link = link
        self._sink = CallbackSink("fleet-results", self._publish_result)
        self._ports.events.subscribe(self._forward_event)
        self._seen = None
        self.tick(time.monotonic())

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publishes offline and disconnects, within `timeout_s` (a broker that never answers cannot hold it up)."""
        deadline = time.monotonic() + timeout_s
        self._ports.events.unsubscribe(self._forward_event)
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.link is not None:
            self.link.stop(timeout_s=max(0.2, deadline - time.monotonic()))
            self.link = None

    def sinks(self) -> list[Sink]:
        """The results sink for the loop (none when the link did not start)."""
        return [self._sink] if self._sink is not None else []

    def tick(self, _now: float) -> None:
        """Main thread: keeps the retained status in step with the model in service and the sources."""
        link = self.link
        if link is None:
            return
        brief = self._ports.brief()
        if brief != self._seen:
            self._seen = brief
            model = ModelRef(name=brief.model[0], version=brief.model[1]) if brief.model else None
            update = None
            view = brief.update
            if view is not None:
                update = UpdateBrief(
                    state=view.state,
                    name=view.name,
                    version=view.version,
                    reason=(view.reason or None) and view.reason[:500],
                    verdict=view.verdict,  # type: ignore[arg-type]  # the activation's Verdict values
                    previous=ModelRef(name=view.previous[0], version=view.previous[1])
                    if view.previous
                    else None,
                    figures=dict(view.figures),
                )
            link.set_status(model=model, sources=brief.sources, update=update)

    def status(self) -> dict[str, Any]:
        """Link state, outbox and command counters for `edge-agent status`."""
        if self.link is None:
            return {"enabled": True, "state": "off"}
        stats = self.link.stats()
        outbox = stats.get("outbox") or {}
        return {
            "enabled": True,
            "state": stats["link"].get("state"),
            "reason": stats["link"].get("reason"),
            "outbox_depth": outbox.get("total_rows"),
            **stats,
        }

    def _forward_event(self, event: AgentEvent) -> None:
        link = self.link
        if link is not None:
            link.publish_event(event_payload(event))

    def _publish_result(self, record: ResultRecord) -> None:
        link = self.link
        if link is not None:
            publish_result(link, record)
