"""Mailboxes between a capture thread and the inference worker.

`LatestMailbox` (every model without a state) never holds more than one item: `put` replaces an unread item (the
replaced one is counted as dropped), so a slow consumer always gets the newest item and no queue builds up behind it.
`OrderedMailbox` (a stateful model) keeps every item in order up to a bound and holds the producer back when full.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

log = logging.getLogger("agent.pipeline")


class Mailbox(Protocol[T]):
    """What the loop needs of a mailbox."""

    put_count: int
    dropped: int

    def put(self, item: T) -> None:
        """Hands an item over."""
        ...

    def get(self, timeout_s: float) -> T | None:
        """Takes the next item, or None after `timeout_s`."""
        ...

    def clear(self) -> None:
        """Forgets waiting items."""
        ...

    def close(self) -> None:
        """Wakes every waiter for good."""
        ...


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


class OrderedMailbox(Generic[T]):
    """A bounded first-in first-out queue that drops nothing, for a model that carries a state from item to item
    (dropping an item would corrupt the state). When it is full, `put` waits for room: the producer (the capture
    thread) is held back, and the time it waited and the deepest backlog are counted, so a model that cannot keep
    up shows as falling behind, not as silently skipped items."""

    def __init__(self, capacity: int = 64) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: deque[T] = deque()
        self._closed = False
        self.capacity = capacity
        self.put_count = 0
        self.dropped = 0  # never grows: kept for the callers that read a mailbox's drop count
        self.deepest = 0
        self.held_s = 0.0
        self.full_count = 0

    def put(self, item: T) -> None:
        """Appends `item`, waiting while the queue is full (until room or close)."""
        with self._cond:
            if len(self._items) >= self.capacity and not self._closed:
                self.full_count += 1
                if self.full_count == 1 or self.full_count % 100 == 0:
                    log.warning(
                        "the model falls behind its source: %d items queued, capture held back (%d times so far)",
                        len(self._items),
                        self.full_count,
                    )
                started = time.monotonic()
                while len(self._items) >= self.capacity and not self._closed:
                    self._cond.wait(0.5)
                self.held_s += time.monotonic() - started
            self._items.append(item)
            self.put_count += 1
            self.deepest = max(self.deepest, len(self._items))
            self._cond.notify_all()

    def get(self, timeout_s: float) -> T | None:
        """Takes the oldest item, waiting up to `timeout_s`; None on timeout or when closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    @property
    def backlog(self) -> int:
        """Items waiting now."""
        with self._cond:
            return len(self._items)

    def clear(self) -> None:
        """Forgets the waiting items (after a source restart: the stream they belong to is gone)."""
        with self._cond:
            self._items.clear()
            self._cond.notify_all()

    def close(self) -> None:
        """Wakes waiters; a waiting `put` then appends and returns."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
