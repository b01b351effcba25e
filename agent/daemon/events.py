"""Agent events (anomaly, drift, source, model, update, error): made once, logged, kept for `status`, sent to the fleet.

Each event gets a unique id when it is made, so the fleet can drop duplicates that the outbox re-sends after a
reconnect. The log keeps the newest `capacity` events in memory; forwarding is done by subscribers (the fleet link),
whose failures are counted, never raised.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from agent.events import LOG_LEVELS, AgentEvent

log = logging.getLogger("agent.events")


class EventLog:
    """Records events, keeps the recent ones, and hands each to its subscribers."""

    def __init__(self, capacity: int = 50) -> None:
        self._recent: deque[AgentEvent] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[AgentEvent], None]] = []
        self.counts: dict[str, int] = {}
        self.forward_errors = 0

    def subscribe(self, callback: Callable[[AgentEvent], None]) -> None:
        """Adds a receiver of every later event."""
        with self._lock:
            self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[AgentEvent], None]) -> None:
        """Removes a receiver."""
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def emit(self, event: AgentEvent) -> AgentEvent:
        """Logs, keeps and forwards an event."""
        log.log(LOG_LEVELS[event.severity], "%s event: %s", event.type, event.message)
        with self._lock:
            self._recent.append(event)
            self.counts[event.type] = self.counts.get(event.type, 0) + 1
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception as problem:
                self.forward_errors += 1
                log.warning("could not forward %s event %s: %s", event.type, event.id, problem)
        return event

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The newest events, oldest first."""
        with self._lock:
            items = list(self._recent)
        if limit is not None:
            items = items[-limit:]
        return [event.to_dict() for event in items]
