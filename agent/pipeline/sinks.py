"""Where results go: a small `Sink` protocol, a non-blocking threaded wrapper, and the JSON-lines debug sink.

Invariant: `emit` never blocks the inference loop. A sink that does I/O runs behind `ThreadedSink`, whose bounded
queue drops (and counts) records when the consumer cannot keep up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Generic, Protocol, TypeVar

from agent.pipeline.records import ResultRecord

log = logging.getLogger("agent.pipeline.sinks")

T = TypeVar("T")


class Sink(Protocol):
    """Receives every decoded result; must return quickly."""

    name: str

    def emit(self, record: ResultRecord) -> None:
        """Takes one result."""

    def close(self, timeout_s: float = 0.5) -> None:
        """Flushes and releases resources, within about `timeout_s` (what is still queued then is dropped)."""


class ThreadedSink(Generic[T]):
    """Runs a slow consumer on its own thread behind a bounded queue; overflow is dropped and counted.

    Generic over what it carries: result records for sinks, monitor events for the daemon's event writer.
    """

    def __init__(self, name: str, consume: Callable[[T], None], capacity: int = 32) -> None:
        self.name = name
        self._consume = consume
        self._queue: queue.Queue[T | None] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    def emit(self, record: T) -> None:
        """Queues the record, or drops it when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self._consume(record)
            except Exception as problem:  # a sink must never take the loop down
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.warning("sink %s failed (%d so far): %s", self.name, self.errors, problem)

    def close(self, timeout_s: float = 0.5) -> None:
        """Stops the thread: what is still queued after `timeout_s` is dropped (a stop must stay fast)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        if (
            self._thread.is_alive()
        ):  # the consumer is stuck or far behind: drop the backlog, then tell it to stop
            while True:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    break
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


class JsonLinesSink:
    """Writes one JSON object per result to stdout (`-`) or a file, appending."""

    def __init__(self, path: str, every_n: int = 1) -> None:
        self.name = f"jsonl:{path}"
        self._every_n = max(1, every_n)
        self._count = 0
        self._handle: IO[str]
        if path == "-":
            self._handle, self._owned = sys.stdout, False
        else:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._handle, self._owned = target.open("a", encoding="utf-8", buffering=1), True
        self._worker = ThreadedSink(self.name, self._write)

    @property
    def dropped(self) -> int:
        """Records dropped because the writer fell behind."""
        return self._worker.dropped

    def emit(self, record: ResultRecord) -> None:
        """Queues every n-th record for writing."""
        self._count += 1
        if self._count % self._every_n == 0:
            self._worker.emit(record)

    def _write(self, record: ResultRecord) -> None:
        self._handle.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
        self._handle.flush()

    def close(self, timeout_s: float = 0.5) -> None:
        """Flushes and closes the file."""
        self._worker.close(timeout_s)
        if self._owned:
            self._handle.close()


class CallbackSink:
    """Hands records to a callable on a worker thread (used by the fleet link)."""

    def __init__(self, name: str, callback: Callable[[ResultRecord], None], capacity: int = 32) -> None:
        self.name = name
        self._worker = ThreadedSink(name, callback, capacity)

    @property
    def dropped(self) -> int:
        """Records dropped because the callback fell behind."""
        return self._worker.dropped

    def emit(self, record: ResultRecord) -> None:
        """Queues the record."""
        self._worker.emit(record)

    def close(self, timeout_s: float = 0.5) -> None:
        """Drains and stops."""
        self._worker.close(timeout_s)
