"""The retraining trigger's policy: does drift persist across a share of a group's devices? (pure: no I/O)

`DriftWatch` folds what devices report (a telemetry snapshot's `metrics.drift.drifting`, an offline status) into one
decision per check. Invariants: the share is over the group's members as given (a device that never reports counts
as not drifting, so a silent group cannot trigger); a report older than `stale_s` (by the watcher's clock, never the
device's, which may be unset) no longer counts; an episode fires exactly once, when the share reaches the bound,
and the watch re-arms only when the share falls below it again. A payload without a readable drift flag changes
nothing (the device's monitor may be off, or an older agent may not report it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Episode:
    """Drift across enough of a group: who drifts, out of whom, and the share."""

    group: str
    drifting: tuple[str, ...]
    members: tuple[str, ...]
    share: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "event": "retrain",
            "group": self.group,
            "drifting": list(self.drifting),
            "members": list(self.members),
            "share": round(self.share, 4),
        }


def drifting_of(metrics: Mapping[str, Any]) -> bool | None:
    """A telemetry snapshot's drift flag (`metrics.drift.drifting`), or None when it carries none."""
    drift = metrics.get("drift")
    if isinstance(drift, Mapping):
        flag = drift.get("drifting")
        if isinstance(flag, bool):
            return flag
    return None


class DriftWatch:
    """One group's drift share, and whether an episode is due (see the module docstring)."""

    def __init__(self, group: str, members: Iterable[str], share: float, stale_s: float) -> None:
        self.group = group
        self.members = tuple(sorted(set(members)))
        if not self.members:
            raise ValueError(f"group {group} has no devices")
        if not 0 < share <= 1:
            raise ValueError(f"the share must be above 0 and at most 1, not {share}")
        self.share = share
        self.stale_s = stale_s
        self._seen: dict[str, tuple[bool, float]] = {}
        self.armed = True
        self.fired = 0

    def report(self, device: str, drifting: bool | None, now: float) -> None:
        """A device's drift flag at the watcher's time `now`; None (no flag) changes nothing."""
        if device in self.members and drifting is not None:
            self._seen[device] = (drifting, now)

    def offline(self, device: str) -> None:
        """A device went offline: its last flag no longer counts."""
        self._seen.pop(device, None)

    def drifting(self, now: float) -> tuple[str, ...]:
        """Members whose fresh report says they drift."""
        return tuple(
            device
            for device in self.members
            if (seen := self._seen.get(device)) is not None and seen[0] and now - seen[1] <= self.stale_s
        )

    def current_share(self, now: float) -> float:
        """Share of the members drifting now."""
        return len(self.drifting(now)) / len(self.members)

    def check(self, now: float) -> Episode | None:
        """An episode when the share has just reached the bound (once per episode); re-arms below it."""
        drifting = self.drifting(now)
        share = len(drifting) / len(self.members)
        if share < self.share:
            self.armed = True
            return None
        if not self.armed:
            return None
        self.armed = False
        self.fired += 1
        return Episode(self.group, drifting, self.members, share)


__all__ = ["DriftWatch", "Episode", "drifting_of"]
