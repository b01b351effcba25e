"""A single-slot mailbox between a capture thread and the inference worker.

Invariant: it never holds more than one item. `put` replaces an unread item (the replaced one is counted as dropped),
so a slow consumer always gets the newest item and no queue ever builds up behind it.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestMailbox(Generic[T]):
    """Holds the newest item; older unread items are dropped and counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._item: T | None = None
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        """Stores `item`, replacing (and counting as dropped) an item nobody took yet. Never blocks for long."""
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._cond.notify()

    def get(self, timeout_s: float) -> T | None:
        """Takes the newest item, waiting up to `timeout_s`; None on timeout or when closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        """Forgets an unread item without counting it as dropped (after a source restart)."""
        with self._cond:
            self._item = None

    def close(self) -> None:
        """Wakes a waiting `get`; later gets return at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
