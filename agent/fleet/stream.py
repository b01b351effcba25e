"""The event stream for `edge-fleet watch`: parse, de-duplicate by event id, filter by type, format (pure: no I/O).

Invariants: an event id is shown at most once while it is among the last `memory` ids seen (the agent's outbox
delivers at least once, and re-sends its unacknowledged rows after a reconnect, so duplicates arrive close together);
a message that is not a valid `Event`, or names another device than its topic, is counted and never shown.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict

from agent.fleet.layout import FleetTopics
from agent.link.wire import Event, EventType, InboundMessage, PayloadError, parse

MEMORY = 100_000
"""Event ids remembered for de-duplication (about 5 MB at most)."""


class EventStream:
    """Turns event messages into new events, each id once."""

    def __init__(
        self, topics: FleetTopics, types: set[EventType] | None = None, memory: int = MEMORY
    ) -> None:
        self.topics = topics
        self.types = types
        self.memory = memory
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0
        self.invalid = 0

    def accept(self, message: InboundMessage) -> Event | None:
        """The event in `message` if it is new and wanted, else None."""
        parsed = self.topics.parse(message.topic)
        if parsed is None or parsed.kind != "events" or parsed.device is None:
            return None
        try:
            event = parse(Event, message.payload)
        except PayloadError:
            self.invalid += 1
            return None
        if event.device is None:
            event = event.model_copy(update={"device": parsed.device})
        elif event.device != parsed.device:
            self.invalid += 1
            return None
        if event.id in self._seen:
            self.duplicates += 1
            self._seen.move_to_end(event.id)
            return None
        self._seen[event.id] = None
        if len(self._seen) > self.memory:
            self._seen.popitem(last=False)
        if self.types is not None and event.type not in self.types:
            return None
        return event


def local_time(when: float) -> str:
    """`YYYY-MM-DD HH:MM:SS` in this machine's time zone."""
    try:
        return dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"{when:.0f}"


def event_line(event: Event) -> str:
    """One line for a person: time, device, type, severity, message."""
    message = " ".join(event.message.split())  # one line, whatever the device sent
    return f"{local_time(event.time)}  {event.device or '?'}  {event.type}  {event.severity}  {message}"


def event_json(event: Event) -> str:
    """The event payload as one compact JSON line."""
    return event.to_bytes().decode("utf-8")


__all__ = ["MEMORY", "EventStream", "event_json", "event_line", "local_time"]
