"""Retry delays: one exponential backoff policy with jitter, and the config shape every user of it shares.

The sources (reopening a device), the link session (reconnecting to the broker) and the operator client (`edge-fleet`
reconnecting) all wait through `Backoff`; none has a policy of its own.

Invariants:
- pure: no I/O, no clock, no thread; the caller waits (on its stop event) for the delay it is given;
- the n-th delay since the last `reset` (n = 0, 1, ...) is min(max_s, initial_s * multiplier**n * (1 + u)), u drawn
  uniformly from [-jitter, +jitter] by the policy's own `random.Random` (injectable, so a test can seed it); a delay is
  therefore never above max_s and never below initial_s * (1 - jitter) (the exponent stops growing at 64, long after
  every delay is max_s, so it cannot overflow);
- the jitter is applied before the cap, so once the base passes max_s / (1 - jitter) every delay is exactly max_s.
- a config that validates has max_s >= initial_s; it forbids unknown keys.

The link's old policy shortened each delay by a random factor in [0.5, 1]. In this shape it is `jitter = 0.5`
(its `LinkBackoffConfig` default): the shortest wait is still half the base and the longest still max_s, so a fleet
that lost its broker at once spreads its reconnects over at least as wide a window; a delay below the cap may now also
be up to 1.5 times its base.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_EXPONENT = 64
"""The exponent stops growing here (the base is far past any max_s by then; the float cannot overflow)."""

InitialSeconds = Annotated[float, Field(gt=0, le=3600, description="Wait before the first retry, seconds.")]
MaxSeconds = Annotated[float, Field(gt=0, le=3600, description="Longest wait between retries, seconds.")]
Multiplier = Annotated[
    float, Field(ge=1, le=10, description="Each failed attempt multiplies the wait by this (2: doubles).")
]
Jitter = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="Random fraction added to or taken from each wait (0.2: ±20 %), before the cap.",
    ),
]


class BackoffConfig(BaseModel):
    """Waits between retries: exponential from initial_s up to max_s, each moved by a random ± jitter fraction.

    The defaults (0.5 s, doubling, up to 30 s, ±20 %) are those of the sources' `reconnect`; the link's
    `backoff` keeps its own (`agent.link.config.LinkBackoffConfig`: 1 s, doubling, up to 60 s, ±50 %)."""

    model_config = ConfigDict(extra="forbid")

    initial_s: InitialSeconds = 0.5
    max_s: MaxSeconds = 30.0
    multiplier: Multiplier = 2.0
    jitter: Jitter = 0.2

    @model_validator(mode="after")
    def _check_order(self) -> BackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must not be below initial_s ({self.initial_s})")
        return self


class Backoff:
    """The retry delays of one config: `next_delay` after each failure, `reset` after a success."""

    def __init__(self, config: BackoffConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._failures = 0

    @property
    def failures(self) -> int:
        """Delays handed out since the last reset."""
        return self._failures

    def next_delay(self) -> float:
        """The wait before the next attempt, in seconds; each call moves one step up the exponential."""
        policy = self.config
        base = policy.initial_s * policy.multiplier ** min(self._failures, MAX_EXPONENT)
        self._failures += 1
        return min(policy.max_s, base * (1.0 + self._rng.uniform(-policy.jitter, policy.jitter)))

    def reset(self) -> None:
        """Back to initial_s (after an item, or a connection that held)."""
        self._failures = 0


__all__ = ["Backoff", "BackoffConfig", "InitialSeconds", "Jitter", "MaxSeconds", "Multiplier"]
