"""Which results leave the device, and how fast (pure: the caller passes the clock).

Modes:
- `every`: every result.
- `on_change`: a result whose change key differs from the last one sent (the first one always goes). The key is
  whatever the caller passes as "the same answer" (top label, set of detected labels, anomaly flag).
- `above_threshold`: a result whose score is at or above `threshold` (a result without a score never goes).
- `max_rate`: every result, but at most `max_per_s` per second.
`max_per_s`, when set, also caps the other modes (a token bucket holding up to max(1, max_per_s) tokens). A result held
back by the cap does not become "the last one sent", so a change that was capped goes out with the next result.

Invariants: `ResultGate.admit` does no I/O and never raises for any key or score; counters only grow.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ResultsMode = Literal["every", "on_change", "above_threshold", "max_rate"]


class ResultsPolicy(BaseModel):
    """Which decoded results are published to `devices/{device}/results`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: ResultsMode = Field(
        "on_change",
        description="every | on_change (top label, detection set or anomaly flag changed) | above_threshold | max_rate",
    )
    threshold: float | None = Field(
        None, description="Score at or above which a result is sent; required by mode above_threshold."
    )
    max_per_s: float | None = Field(
        2.0,
        gt=0,
        description="Most results sent per second, in every mode (required by max_rate); null for no cap.",
    )

    @model_validator(mode="after")
    def _mode_needs_its_parameter(self) -> ResultsPolicy:
        if self.mode == "above_threshold" and self.threshold is None:
            raise ValueError("mode above_threshold needs `threshold`")
        if self.mode == "max_rate" and self.max_per_s is None:
            raise ValueError("mode max_rate needs `max_per_s`")
        return self


class TokenBucket:
    """A rate limit: `rate_per_s` tokens per second, holding at most `capacity`."""

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = capacity
        self._at = now

    def take(self, now: float) -> bool:
        """Takes one token if there is one."""
        elapsed = max(0.0, now - self._at)
        self._at = max(self._at, now)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


_UNSET = object()


@dataclass
class GateCounters:
    """Results seen and why the ones not sent were held back."""

    seen: int = 0
    admitted: int = 0
    held: dict[str, int] = field(default_factory=dict)


class ResultGate:
    """Applies a `ResultsPolicy` to a stream of results."""

    def __init__(self, policy: ResultsPolicy, now: float) -> None:
        self.counters = GateCounters()
        self._last_key: object = _UNSET
        self.set_policy(policy, now)

    @property
    def policy(self) -> ResultsPolicy:
        """The policy in force."""
        return self._policy

    def set_policy(self, policy: ResultsPolicy, now: float) -> None:
        """Replaces the policy; the next result after a change of policy is judged afresh."""
        self._policy = policy
        self._last_key = _UNSET
        rate = policy.max_per_s
        self._bucket = TokenBucket(rate, max(1.0, rate), now) if rate is not None else None

    def admit(self, now: float, key: Hashable = None, score: float | None = None) -> bool:
        """True if this result should be sent."""
        self.counters.seen += 1
        reason = self._hold_reason(key, score)
        if reason is None and self._bucket is not None and not self._bucket.take(now):
            reason = "rate"
        if reason is not None:
            self.counters.held[reason] = self.counters.held.get(reason, 0) + 1
            return False
        self._last_key = key
        self.counters.admitted += 1
        return True

    def _hold_reason(self, key: Hashable, score: float | None) -> str | None:
        mode = self._policy.mode
        if mode == "on_change":
            try:
                same = self._last_key is not _UNSET and bool(key == self._last_key)
            except Exception:  # a key with a broken __eq__ counts as a change
                same = False
            return "unchanged" if same else None
        if mode == "above_threshold":
            threshold = self._policy.threshold
            if score is None or threshold is None or not score >= threshold:
                return "below_threshold"
        return None


__all__ = ["GateCounters", "ResultGate", "ResultsMode", "ResultsPolicy", "TokenBucket"]
