"""The one retry policy (agent/backoff.py): growth, cap, jitter bounds, reset, and its config's rules and defaults."""

from __future__ import annotations

import random

import pytest
from pydantic import BaseModel, ValidationError

from agent.backoff import Backoff, BackoffConfig
from agent.link.config import LinkBackoffConfig, LinkConfig
from agent.sources import VideoConfig


class FixedRandom(random.Random):
    """A Random whose `uniform(a, b)` always returns the point at `where` (0: a, 1: b) of the interval."""

    def __init__(self, where: float) -> None:
        super().__init__(0)
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


# (initial_s, max_s, multiplier, jitter, where in the jitter interval, the first delays)
GROWTH = [
    pytest.param(0.5, 30.0, 2.0, 0.0, 0.5, [0.5, 1, 2, 4, 8, 16, 30, 30], id="sources-default-no-jitter"),
    pytest.param(1.0, 60.0, 2.0, 0.0, 0.5, [1, 2, 4, 8, 16, 32, 60, 60], id="link-default-no-jitter"),
    pytest.param(0.1, 10.0, 3.0, 0.0, 0.5, [0.1, 0.3, 0.9, 2.7, 8.1, 10, 10], id="triples"),
    pytest.param(2.0, 2.0, 2.0, 0.0, 0.5, [2, 2, 2], id="initial-is-the-cap"),
    pytest.param(1.0, 100.0, 1.0, 0.0, 0.5, [1, 1, 1, 1], id="multiplier-one-is-constant"),
    pytest.param(1.0, 60.0, 2.0, 0.5, 0.0, [0.5, 1, 2, 4, 8, 16, 32, 60], id="lowest-jitter-halves"),
    pytest.param(1.0, 60.0, 2.0, 0.5, 1.0, [1.5, 3, 6, 12, 24, 48, 60, 60], id="highest-jitter-capped"),
    pytest.param(0.5, 30.0, 2.0, 0.2, 0.0, [0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30], id="sources-lowest"),
]


@pytest.mark.parametrize(("initial_s", "max_s", "multiplier", "jitter", "where", "expected"), GROWTH)
def test_delays_grow_by_the_multiplier_up_to_the_cap(
    initial_s: float, max_s: float, multiplier: float, jitter: float, where: float, expected: list[float]
) -> None:
    config = BackoffConfig(initial_s=initial_s, max_s=max_s, multiplier=multiplier, jitter=jitter)
    backoff = Backoff(config, FixedRandom(where))
    delays = [backoff.next_delay() for _ in expected]
    assert delays == pytest.approx(expected)
    assert backoff.failures == len(expected)


@pytest.mark.parametrize(
    ("initial_s", "max_s", "multiplier", "jitter"),
    [
        pytest.param(0.5, 30.0, 2.0, 0.2, id="sources-default"),
        pytest.param(1.0, 60.0, 2.0, 0.5, id="link-default"),
        pytest.param(0.05, 0.4, 2.0, 0.1, id="quick"),
        pytest.param(1.0, 3600.0, 10.0, 1.0, id="widest"),
    ],
)
def test_jitter_stays_within_its_fraction_and_never_passes_the_cap(
    initial_s: float, max_s: float, multiplier: float, jitter: float
) -> None:
    config = BackoffConfig(initial_s=initial_s, max_s=max_s, multiplier=multiplier, jitter=jitter)
    backoff = Backoff(config, random.Random(7))
    for step in range(200):  # far past the point where the exponent stops growing
        base = initial_s * multiplier ** min(step, 64)
        delay = backoff.next_delay()
        low, high = min(max_s, base * (1 - jitter)), min(max_s, base * (1 + jitter))
        assert low - 1e-9 <= delay <= high + 1e-9, step


def test_jitter_spreads_delays_over_its_whole_interval() -> None:
    backoff = Backoff(
        BackoffConfig(initial_s=10.0, max_s=100.0, multiplier=1.0, jitter=0.5), random.Random(1)
    )
    delays = [backoff.next_delay() for _ in range(2000)]
    assert min(delays) < 5.5 and max(delays) > 14.5  # [5, 15]: both ends are reached, not one side only


@pytest.mark.parametrize("failures_before", [1, 3, 10, 100])
def test_reset_starts_again_at_initial_s(failures_before: int) -> None:
    backoff = Backoff(BackoffConfig(initial_s=0.25, max_s=8.0, jitter=0.0))
    for _ in range(failures_before):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert [backoff.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]


def test_a_seeded_random_gives_the_same_delays() -> None:
    config = BackoffConfig()
    first = Backoff(config, random.Random(42))
    second = Backoff(config, random.Random(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_each_user_keeps_its_defaults() -> None:
    sources = VideoConfig().reconnect
    assert (sources.initial_s, sources.max_s, sources.multiplier, sources.jitter) == (0.5, 30.0, 2.0, 0.2)
    link = LinkConfig().backoff
    assert (link.initial_s, link.max_s, link.multiplier, link.jitter) == (1.0, 60.0, 2.0, 0.5)
    # A partial table keeps the link's own defaults for the keys it leaves out.
    partial = LinkConfig.model_validate({"backoff": {"max_s": 5}}).backoff
    assert (partial.initial_s, partial.max_s, partial.jitter) == (1.0, 5.0, 0.5)


@pytest.mark.parametrize("model", [BackoffConfig, LinkBackoffConfig])
def test_the_config_is_described_and_forbids_unknown_keys(model: type[BaseModel]) -> None:
    for name, info in model.model_fields.items():
        assert info.description, f"{model.__name__}.{name} has no description"
        if name.endswith("_s"):
            assert "seconds" in info.description, f"{model.__name__}.{name} does not name its unit"
    assert model.model_config.get("extra") == "forbid"
    with pytest.raises(ValidationError, match="min_s"):
        model.model_validate({"min_s": 1.0})  # the old key of the link is an error, not ignored


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        pytest.param(
            {"initial_s": 10, "max_s": 1}, "max_s .* must not be below initial_s", id="max-below-initial"
        ),
        pytest.param({"initial_s": 0}, "greater than 0", id="zero-initial"),
        pytest.param({"max_s": 4000}, "less than or equal to 3600", id="max-above-an-hour"),
        pytest.param({"multiplier": 0.5}, "greater than or equal to 1", id="shrinking"),
        pytest.param({"jitter": 1.5}, "less than or equal to 1", id="jitter-above-one"),
        pytest.param({"jitter": -0.1}, "greater than or equal to 0", id="negative-jitter"),
        pytest.param({"jitter_fraction": 0.5}, "Extra inputs", id="old-link-key"),
    ],
)
def test_bad_configs_are_refused(values: dict[str, float], problem: str) -> None:
    for model in (BackoffConfig, LinkBackoffConfig):
        with pytest.raises(ValidationError, match=problem):
            model.model_validate(values)
