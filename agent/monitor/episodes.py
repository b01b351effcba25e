"""One episode of a condition (an anomaly, a latency overrun, a stalled source), debounced with hysteresis. Pure.

A condition is observed as a sequence of breached / normal observations (results, or monitoring windows) at the
caller's monotonic times. `Episode.step` turns them into the phases of episodes:
- an episode starts after `rise_after` breached observations in a row ("start", reported at once);
- while it lasts, a breached observation gives an "ongoing" update at most once per `cooldown_s` (counted from the
  previous event of the episode); normal observations never do;
- it ends ("end") only after `clear_after` normal observations in a row *and* `clear_s` seconds since the last
  breached one. A breach inside that quiet time continues the same episode: a condition that recurs every few seconds
  (a fault replayed in a loop, a source that reconnects and stalls again) is one episode with updates, not a storm.
So the events of one episode are one start, one end and at most one update per `cooldown_s` in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.events import Phase


@dataclass(frozen=True)
class Hysteresis:
    """When an episode starts, how often it is updated, and when it ends."""

    rise_after: int = 1
    clear_after: int = 3
    clear_s: float = 10.0
    cooldown_s: float = 10.0


class Episode:
    """The episode state of one condition (see the module docstring); times are the caller's monotonic seconds."""

    def __init__(self, hysteresis: Hysteresis | None = None) -> None:
        self.hysteresis = hysteresis or Hysteresis()
        self.active = False
        self.count = 0
        """Episodes started so far."""
        self.started = 0.0
        self.last_breach = 0.0
        self.breaches = 0
        """Breached observations in the current (or last) episode."""
        self.updates = 0
        """Ongoing updates sent in the current (or last) episode."""
        self._run = 0  # breached observations in a row before a start, normal ones in a row during an episode
        self._last_event = 0.0

    def step(self, breached: bool, now: float) -> Phase | None:
        """Feeds one observation; returns the phase of the event it calls for, if any."""
        rules = self.hysteresis
        if not self.active:
            if not breached:
                self._run = 0
                return None
            self._run += 1
            if self._run < rules.rise_after:
                return None
            self.active, self._run, self.count = True, 0, self.count + 1
            self.started = self._last_event = self.last_breach = now
            self.breaches, self.updates = 1, 0
            return "start"
        if not breached:
            self._run += 1
            if self._run < rules.clear_after or now - self.last_breach < rules.clear_s:
                return None
            self.active, self._run = False, 0
            return "end"
        self._run = 0
        self.breaches += 1
        self.last_breach = now
        if now - self._last_event < rules.cooldown_s:
            return None
        self._last_event = now
        self.updates += 1
        return "ongoing"

    def reset(self) -> None:
        """Forgets the current episode without an end (after a model swap)."""
        self.active = False
        self._run = 0

    def duration_s(self, now: float) -> float:
        """Seconds since the current (or last) episode started."""
        return max(0.0, now - self.started)

    def status(self, now: float) -> dict[str, Any]:
        """The active episode, JSON-ready: its number, how long it lasts, breaches and updates so far."""
        return {
            "episode": self.count,
            "duration_s": round(self.duration_s(now), 3),
            "breaches": self.breaches,
            "updates": self.updates,
            "quiet_s": round(max(0.0, now - self.last_breach), 3),
        }


__all__ = ["Episode", "Hysteresis"]
