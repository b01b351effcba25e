"""The contract between sources and the loop: what a source delivers and the states it reports.

Invariants: every item carries the capture time (wall clock and monotonic) and a sequence number that increases by one
per item a source delivers within one run of the daemon (it does not restart at a reconnect), so dropped items can be
counted downstream. A source never blocks longer than the timeout it is given.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.types import Array

ItemKind = Literal["frame", "window"]


@dataclass(frozen=True, slots=True)
class Item:
    """One frame (BGR uint8, H x W x 3) or one window (float32, [time, channel]) with its capture time."""

    data: Array
    seq: int
    captured_at: float
    """Wall-clock capture time, seconds since the epoch (`time.time()`), for reports."""
    captured_mono: float
    """Monotonic capture time (`time.monotonic()`), for frame age and latency."""
    kind: ItemKind
    source: str = ""


class SourceState(str, enum.Enum):
    """What a source reports about itself."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"
    STOPPED = "stopped"


class EndOfStream(Exception):
    """Raised by `Source.read` when a finite source (a file, a replay) has nothing more to give."""


class Source(Protocol):
    """A camera, stream, file or sensor. `open` and `read` raise `SourceError` on failure."""

    name: str
    kind: ItemKind

    def open(self) -> None:
        """Connects to the device or opens the file; raises SourceError when it cannot."""

    def read(self, timeout_s: float) -> Array | None:
        """The next frame or window, or None when nothing came within `timeout_s`; EndOfStream at the end."""

    def close(self) -> None:
        """Releases the device; safe to call twice or after a failed open."""
