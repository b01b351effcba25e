"""How `edge-fleet serve` paces what it sends (pure: no I/O, the caller passes the clock).

`Scheduler`: answers waiting by device, devices taken in turn one message each (round robin), each device's requests
in order, bounded per device and over all, and a bound on answers holding a file open. `TokenBucket`: publishes per
second. `KeyedLimiter`: one event per key per interval (log lines, busy replies). Invariants: `Scheduler.pending` is
the sum of the waiting jobs' costs, never negative; a job is asked for its next message only when it is its
device's first and that device's turn has come.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from agent.fleet.answers import Answer, Reply
from agent.release.formats import MAX_BLOCKS_PER_REQUEST

MAX_PENDING = 2 * MAX_BLOCKS_PER_REQUEST
"""Messages that may wait for one device: two full requests."""
MAX_PENDING_TOTAL = 100_000
MAX_OPEN_FILES = 64
BURST_S = 0.05
"""The token bucket's burst, in seconds of its rate (at least one publish)."""


class TokenBucket:
    """Publishes per second: `rate_per_s` on average, bursts of at most `burst` (None: no limit)."""

    def __init__(self, rate_per_s: float | None, now: float, burst: float | None = None) -> None:
        self.rate = rate_per_s
        self.burst = burst if burst is not None else max(1.0, (rate_per_s or 0.0) * BURST_S)
        self._tokens, self._at = self.burst, now

    def ready(self, now: float) -> bool:
        """True when a publish may go now."""
        if self.rate is None:
            return True
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        return self._tokens >= 1.0

    def spend(self) -> None:
        """Counts one publish."""
        if self.rate is not None:
            self._tokens -= 1.0

    def wait_s(self, now: float) -> float:
        """Seconds until the next publish may go."""
        if self.ready(now) or self.rate is None:
            return 0.0
        return (1.0 - self._tokens) / self.rate


class KeyedLimiter:
    """At most one event per key every `interval_s`, counting the ones let pass in between (keys bounded)."""

    def __init__(self, interval_s: float, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._last: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def allow(self, key: str, now: float) -> int | None:
        """None when `key` had its turn within the interval; else how many were held back since its last turn."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self._max_keys:
            self._last.popitem(last=False)
        return 0 if last is None else last[1]


@dataclass(slots=True)
class Job:
    """An answer waiting to be sent to a response topic."""

    topic: str
    correlation: bytes | None
    answer: Answer
    cost: int
    """Messages it is counted for against the pending bounds (its blocks; 1 for a file or a refusal)."""


class Scheduler:
    """Jobs by device: devices in turn, one message each; each device's jobs in order; bounded per device and in all."""

    def __init__(
        self,
        max_pending: int = MAX_PENDING,
        max_pending_total: int = MAX_PENDING_TOTAL,
        max_open_files: int = MAX_OPEN_FILES,
    ) -> None:
        self.max_pending, self.max_pending_total, self.max_open_files = (
            max_pending,
            max_pending_total,
            max_open_files,
        )
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()
        self._pending: Counter[str] = Counter()
        self._total = 0
        self._open = 0

    def offer(self, client: str, job: Job, *, force: bool = False) -> bool:
        """Queues `job` for `client`; False (nothing queued) when that would pass a bound, unless `force`."""
        if not force and (
            self._pending[client] + job.cost > self.max_pending
            or self._total + job.cost > self.max_pending_total
        ):
            return False
        self._queues.setdefault(client, deque()).append(job)
        self._pending[client] += job.cost
        self._total += job.cost
        return True

    def __bool__(self) -> bool:
        return bool(self._queues)

    @property
    def pending(self) -> int:
        """Messages counted as waiting, over every device."""
        return self._total

    def pending_for(self, client: str) -> int:
        """Messages counted as waiting for one device."""
        return self._pending[client]

    def next(self) -> tuple[Job, Reply] | None:
        """The next message to send, taking devices in turn; None when nothing can go now."""
        for _ in range(len(self._queues)):
            client, queue = next(iter(self._queues.items()))
            job = queue[0]
            if job.answer.may_hold_file and not job.answer.holds_file and self._open >= self.max_open_files:
                self._queues.move_to_end(client)  # its turn comes when a file is closed
                continue
            held = job.answer.holds_file
            reply = next(job.answer, None)
            self._open += int(job.answer.holds_file) - int(held)
            if reply is None or job.answer.done:
                queue.popleft()
                spent, job.cost = job.cost, 0
            else:
                spent = min(1, job.cost)
                job.cost -= spent
            self._debit(client, spent)
            if queue:
                self._queues.move_to_end(client)
            else:
                del self._queues[client]
            if reply is not None:
                return job, reply
        return None

    def clear(self) -> None:
        """Forgets every job (closing the files they hold)."""
        for queue in self._queues.values():
            for job in queue:
                job.answer.close()
        self._queues.clear()
        self._pending.clear()
        self._total = self._open = 0

    def _debit(self, client: str, cost: int) -> None:
        cost = min(cost, self._pending[client])
        self._pending[client] -= cost
        self._total -= cost
        if self._pending[client] <= 0:
            del self._pending[client]


__all__ = [
    "MAX_OPEN_FILES",
    "MAX_PENDING",
    "MAX_PENDING_TOTAL",
    "Job",
    "KeyedLimiter",
    "Scheduler",
    "TokenBucket",
]
