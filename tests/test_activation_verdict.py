"""The activation's judgements, criterion by criterion: the thresholds in force, the golden gate, the shadow
comparison, the trial and the memory plan, each at its limit (passes) and just over it (fails)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from agent.ota.config import ActivationConfig
from agent.ota.verdict import (
    EARLY_FACTOR,
    EARLY_ITEMS,
    TrialFigures,
    gate,
    latency_limit_ms,
    memory_plan,
    shadow,
    tightened,
    trial,
)
from agent.release.formats import Activation

SIGNED = Activation(
    shadow=False,
    shadow_items=200,
    min_agreement_permille=900,
    trial_s=300,
    trial_min_items=100,
    max_error_ppm=10_000,
    max_latency_percent=150,
    max_low_confidence_increase_permille=100,
    max_extra_episodes=1,
)
BUDGET_MS = 100.0
LIMIT_MS = 150.0
"""150 % of the 100 ms budget."""

# ------------------------------------------------------------------ tightened

# key: (signed, looser local, stricter local); "at least" keys tighten upwards, "at most" ones downwards.
KEYS: dict[str, tuple[int, int, int]] = {
    "shadow_items": (200, 50, 500),
    "min_agreement_permille": (900, 500, 990),
    "trial_s": (300, 10, 3600),
    "trial_min_items": (100, 5, 1000),
    "max_error_ppm": (10_000, 500_000, 100),
    "max_latency_percent": (150, 1000, 110),
    "max_low_confidence_increase_permille": (100, 900, 20),
    "max_extra_episodes": (1, 50, 0),
}
TIGHTEN_CASES = [(key, way) for key in KEYS for way in ("looser", "stricter", "equal", "unset")]


@pytest.mark.parametrize(("key", "way"), TIGHTEN_CASES, ids=[f"{k}-{w}" for k, w in TIGHTEN_CASES])
def test_the_local_config_only_tightens_the_signed_thresholds(key: str, way: str) -> None:
    signed, looser, stricter = KEYS[key]
    local: dict[str, int | None] = {
        "looser": {key: looser},
        "stricter": {key: stricter},
        "equal": {key: signed},
        "unset": {},
    }[way]
    expected = stricter if way == "stricter" else signed
    result = tightened(SIGNED, ActivationConfig(**local))
    assert getattr(result, key) == expected
    untouched = {name: getattr(SIGNED, name) for name in KEYS if name != key}
    assert {name: getattr(result, name) for name in untouched} == untouched


@pytest.mark.parametrize(
    ("signed", "local", "expected"),
    [(False, False, False), (False, True, True), (True, False, True), (True, True, True)],
    ids=["neither", "local-asks", "release-asks-local-cannot-turn-it-off", "both"],
)
def test_the_shadow_runs_when_either_the_release_or_the_local_config_asks(
    signed: bool, local: bool, expected: bool
) -> None:
    assert (
        tightened(SIGNED.model_copy(update={"shadow": signed}), ActivationConfig(shadow=local)).shadow
        is expected
    )


def test_a_local_config_looser_everywhere_leaves_the_signed_thresholds_whole() -> None:
    loosest = ActivationConfig(**{key: looser for key, (_, looser, _) in KEYS.items()})
    assert tightened(SIGNED, loosest) == SIGNED


def test_a_local_config_stricter_everywhere_applies_every_value() -> None:
    strictest = ActivationConfig(shadow=True, **{key: stricter for key, (_, _, stricter) in KEYS.items()})
    result = tightened(SIGNED, strictest)
    assert result.model_dump() == {
        "shadow": True,
        **{key: stricter for key, (_, _, stricter) in KEYS.items()},
    }
    assert Activation.model_validate(result.model_dump()) == result, "still valid signed thresholds"


# ------------------------------------------------------------------ latency limit


@pytest.mark.parametrize(
    ("budget", "percent", "limit"),
    [(None, 150, None), (100.0, 150, 150.0), (40.0, 100, 40.0), (200.0, 1, 2.0)],
    ids=["no-budget", "150-percent", "100-percent", "1-percent"],
)
def test_the_latency_limit_is_a_percentage_of_the_budget(
    budget: float | None, percent: int, limit: float | None
) -> None:
    assert latency_limit_ms(SIGNED.model_copy(update={"max_latency_percent": percent}), budget) == limit


# ------------------------------------------------------------------ golden gate


def run_gate(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "golden_cases": 8,
        "golden_failed": 0,
        "golden_worst": 1e-6,
        "tolerance": 1e-3,
        "golden_error": None,
        "latency_p95_ms": 20.0,
        "budget_ms": BUDGET_MS,
        "thresholds": SIGNED,
    }
    args.update(kw)
    return gate(**args)


GATE_CASES: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "all-golden-within-tolerance": ({}, "pass", None),
    "latency-at-the-limit": ({"latency_p95_ms": LIMIT_MS}, "pass", None),
    "latency-just-over-the-limit": ({"latency_p95_ms": LIMIT_MS + 0.01}, "fail", "latency"),
    "latency-over-without-a-budget": ({"latency_p95_ms": 1e6, "budget_ms": None}, "pass", None),
    "latency-not-measured": ({"latency_p95_ms": None}, "pass", None),
    "one-golden-case-off": ({"golden_failed": 1, "golden_worst": 0.5}, "fail", "golden"),
    "golden-fails-before-latency": (
        {"golden_failed": 2, "golden_worst": 0.5, "latency_p95_ms": 1e6},
        "fail",
        "golden",
    ),
    "golden-case-that-cannot-run": (
        {"golden_failed": 1, "golden_worst": math.inf, "golden_error": "shape mismatch"},
        "fail",
        "golden",
    ),
    "no-golden-cases": ({"golden_cases": 0, "golden_worst": -math.inf}, "pass", None),
}


@pytest.mark.parametrize("case", list(GATE_CASES))
def test_the_golden_gate(case: str) -> None:
    kw, verdict, code = GATE_CASES[case]
    judgement = run_gate(**kw)
    assert (judgement.verdict, judgement.code) == (verdict, code)
    assert judgement.figures["golden_cases"] == kw.get("golden_cases", 8)


def test_a_failed_golden_gate_says_why_in_one_line() -> None:
    assert (
        "shape mismatch"
        in run_gate(golden_failed=1, golden_worst=math.inf, golden_error="shape mismatch").reason
    )
    off = run_gate(golden_failed=1, golden_worst=0.5)
    assert "1 of 8" in off.reason and "0.5 > tolerance 0.001" in off.reason
    slow = run_gate(latency_p95_ms=151.0)
    assert "151.0 ms is over 150.0 ms" in slow.reason and "150 %" in slow.reason


def test_the_gate_figures_leave_out_what_was_not_measured() -> None:
    bare = run_gate(golden_worst=math.nan, latency_p95_ms=None, budget_ms=None).figures
    assert bare == {"golden_cases": 8, "golden_failed": 0}
    full = run_gate(golden_worst=0.0001234567, latency_p95_ms=12.34567).figures
    assert full == {
        "golden_cases": 8,
        "golden_failed": 0,
        "golden_deviation": 0.000123,
        "gate_latency_p95_ms": 12.346,
        "budget_ms": BUDGET_MS,
    }


# ------------------------------------------------------------------ shadow

SHADOW_CASES: dict[str, tuple[dict[str, Any], str | None, str | None]] = {
    "agreement-at-the-floor": ({"agreement": 0.9}, "pass", None),
    "agreement-just-below-the-floor": ({"agreement": 0.899}, "fail", "agreement"),
    "agreement-counted-at-the-floor": ({"agreement": 180 / 200}, "pass", None),
    "agreement-counted-one-below": ({"agreement": 179 / 200}, "fail", "agreement"),
    "one-item-short": ({"items": 199, "agreement": 1.0}, None, None),
    "bad-agreement-one-item-short-waits": ({"items": 199, "agreement": 0.1}, None, None),
    "no-agreement-yet": ({"agreement": None}, None, None),
    "latency-at-the-limit": ({"latency_p95_ms": LIMIT_MS}, "pass", None),
    "latency-over-after-early-items": (
        {"items": EARLY_ITEMS, "latency_p95_ms": LIMIT_MS + 0.01},
        "fail",
        "latency",
    ),
    "latency-over-before-early-items-waits": (
        {"items": EARLY_ITEMS - 1, "latency_p95_ms": 1e6, "agreement": None},
        None,
        None,
    ),
    "latency-over-without-a-budget": ({"latency_p95_ms": 1e6, "budget_ms": None}, "pass", None),
    "latency-fails-before-agreement": ({"latency_p95_ms": 1e6, "agreement": 0.1}, "fail", "latency"),
}


def run_shadow(thresholds: Activation = SIGNED, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "items": 200,
        "agreement": 0.95,
        "latency_p95_ms": 20.0,
        "budget_ms": BUDGET_MS,
        "thresholds": thresholds,
    }
    args.update(kw)
    return shadow(**args)


@pytest.mark.parametrize("case", list(SHADOW_CASES))
def test_the_shadow_comparison(case: str) -> None:
    kw, verdict, code = SHADOW_CASES[case]
    judgement = run_shadow(**kw)
    assert (judgement.verdict, judgement.code) == (verdict, code)


def test_a_short_shadow_fails_on_latency_once_all_its_items_are_in() -> None:
    few = SIGNED.model_copy(update={"shadow_items": 5})
    assert run_shadow(few, items=4, latency_p95_ms=1e6, agreement=None).verdict is None
    assert run_shadow(few, items=5, latency_p95_ms=1e6).code == "latency"


def test_the_shadow_figures_carry_what_was_measured_and_the_extra() -> None:
    figures = run_shadow(agreement=0.912345, latency_p95_ms=12.34567, extra={"shadow_offered": 400}).figures
    assert figures == {
        "shadow_items": 200,
        "shadow_offered": 400,
        "agreement": 0.9123,
        "latency_p95_ms": 12.346,
        "budget_ms": BUDGET_MS,
    }
    assert run_shadow(agreement=None, latency_p95_ms=None, budget_ms=None).figures == {"shadow_items": 200}


# ------------------------------------------------------------------ trial

GOOD = TrialFigures(
    elapsed_s=300.0,
    items=200,
    errors=0,
    latency_p95_ms=20.0,
    low_confidence_share=0.1,
    episodes=0,
    budget_ms=BUDGET_MS,
    previous_low_confidence_share=0.1,
    previous_episode_rate_per_s=None,
)
EARLY = replace(GOOD, elapsed_s=10.0)
"""Inside the window: only a limit broken by far decides."""
LOOSE_ERRORS = SIGNED.model_copy(update={"max_error_ppm": 100_000})
"""10 % allowed: the early error limit is twice that (20 %), more than 10 % + 5 points."""

# name: (figures, thresholds, verdict, code)
TRIAL_CASES: dict[str, tuple[TrialFigures, Activation, str | None, str | None]] = {
    # early: far over a limit after EARLY_ITEMS, before the window ends
    "early-errors-far-over": (replace(EARLY, items=16, errors=4), SIGNED, "fail", "errors"),
    "early-errors-far-over-one-item-short": (replace(EARLY, items=15, errors=4), SIGNED, None, None),
    "early-errors-at-twice-the-limit": (replace(EARLY, items=16, errors=4), LOOSE_ERRORS, None, None),
    "early-errors-just-over-twice-the-limit": (
        replace(EARLY, items=15, errors=5),
        LOOSE_ERRORS,
        "fail",
        "errors",
    ),
    "early-errors-at-limit-plus-5-points": (replace(EARLY, items=188, errors=12), SIGNED, None, None),
    "early-errors-just-over-limit-plus-5-points": (
        replace(EARLY, items=187, errors=13),
        SIGNED,
        "fail",
        "errors",
    ),
    "early-latency-at-twice-the-limit": (
        replace(EARLY, latency_p95_ms=LIMIT_MS * EARLY_FACTOR),
        SIGNED,
        None,
        None,
    ),
    "early-latency-just-over-twice-the-limit": (
        replace(EARLY, latency_p95_ms=LIMIT_MS * EARLY_FACTOR + 0.01),
        SIGNED,
        "fail",
        "latency",
    ),
    "early-latency-far-over-one-item-short": (
        replace(EARLY, items=EARLY_ITEMS - 1, latency_p95_ms=1e6),
        SIGNED,
        None,
        None,
    ),
    "early-latency-far-over-without-a-budget": (
        replace(EARLY, latency_p95_ms=1e6, budget_ms=None),
        SIGNED,
        None,
        None,
    ),
    "early-latency-far-over-errors-count-as-items": (
        replace(EARLY, items=10, errors=10, latency_p95_ms=1e6),
        LOOSE_ERRORS.model_copy(update={"max_error_ppm": 1_000_000}),
        "fail",
        "latency",
    ),
    # the window
    "window-not-over": (replace(GOOD, elapsed_s=299.9, items=0), SIGNED, None, None),
    "window-not-over-errors-over-but-not-far": (replace(GOOD, elapsed_s=299.9, errors=4), SIGNED, None, None),
    "window-over-at-trial-s": (replace(GOOD, elapsed_s=300.0), SIGNED, "pass", None),
    # too few items
    "window-over-one-item-short": (replace(GOOD, items=99), SIGNED, "inconclusive", "too-few-items"),
    "window-over-no-items": (
        replace(GOOD, items=0, latency_p95_ms=None),
        SIGNED,
        "inconclusive",
        "too-few-items",
    ),
    "window-over-exactly-enough-items": (replace(GOOD, items=100), SIGNED, "pass", None),
    # errors at the end of the window
    "errors-at-the-limit": (replace(GOOD, items=198, errors=2), SIGNED, "pass", None),
    "errors-just-over-the-limit": (replace(GOOD, items=197, errors=3), SIGNED, "fail", "errors"),
    "no-errors-allowed-one-error": (
        replace(GOOD, items=999, errors=1),
        SIGNED.model_copy(update={"max_error_ppm": 0}),
        "fail",
        "errors",
    ),
    # latency at the end of the window
    "latency-at-the-limit": (replace(GOOD, latency_p95_ms=LIMIT_MS), SIGNED, "pass", None),
    "latency-just-over-the-limit": (replace(GOOD, latency_p95_ms=LIMIT_MS + 0.01), SIGNED, "fail", "latency"),
    "latency-over-without-a-budget": (
        replace(GOOD, latency_p95_ms=1e6, budget_ms=None),
        SIGNED,
        "pass",
        None,
    ),
    "latency-not-measured": (replace(GOOD, latency_p95_ms=None), SIGNED, "pass", None),
    # low confidence against the previous model
    "low-confidence-at-the-limit": (replace(GOOD, low_confidence_share=0.2), SIGNED, "pass", None),
    "low-confidence-counted-at-the-limit": (
        replace(GOOD, low_confidence_share=80 / 200, previous_low_confidence_share=0.3),
        SIGNED,
        "pass",
        None,
    ),
    "low-confidence-counted-one-over-the-limit": (
        replace(GOOD, low_confidence_share=81 / 200, previous_low_confidence_share=0.3),
        SIGNED,
        "fail",
        "low-confidence",
    ),
    "low-confidence-just-over-the-limit": (
        replace(GOOD, low_confidence_share=0.201),
        SIGNED,
        "fail",
        "low-confidence",
    ),
    "low-confidence-lower-than-before": (replace(GOOD, low_confidence_share=0.0), SIGNED, "pass", None),
    "low-confidence-no-previous-figure": (
        replace(GOOD, low_confidence_share=0.9, previous_low_confidence_share=None),
        SIGNED,
        "pass",
        None,
    ),
    "low-confidence-not-measured": (replace(GOOD, low_confidence_share=None), SIGNED, "pass", None),
    # drift and anomaly episodes against the previous model's rate
    "episodes-no-previous-rate-at-the-allowance": (replace(GOOD, episodes=1, drift=1), SIGNED, "pass", None),
    "episodes-no-previous-rate-one-over": (replace(GOOD, episodes=2, drift=2), SIGNED, "fail", "drift"),
    "episodes-at-the-previous-rate-plus-allowance": (
        replace(GOOD, episodes=4, anomalies=4, previous_episode_rate_per_s=0.01),
        SIGNED,
        "pass",
        None,
    ),
    "episodes-one-over-the-previous-rate-plus-allowance": (
        replace(GOOD, episodes=5, drift=1, anomalies=4, previous_episode_rate_per_s=0.01),
        SIGNED,
        "fail",
        "anomalies",
    ),
    "episodes-hourly-rate-at-the-allowance": (
        replace(GOOD, elapsed_s=3600.0, episodes=116, drift=116, previous_episode_rate_per_s=115 / 3600),
        SIGNED,
        "pass",
        None,
    ),
    "episodes-hourly-rate-one-over-the-allowance": (
        replace(GOOD, elapsed_s=3600.0, episodes=117, drift=117, previous_episode_rate_per_s=115 / 3600),
        SIGNED,
        "fail",
        "drift",
    ),
    "episodes-none-allowed-one-seen": (
        replace(GOOD, episodes=1, anomalies=1),
        SIGNED.model_copy(update={"max_extra_episodes": 0}),
        "fail",
        "anomalies",
    ),
    "episodes-as-many-drift-as-anomalies-named-drift": (
        replace(GOOD, episodes=4, drift=2, anomalies=2),
        SIGNED,
        "fail",
        "drift",
    ),
    # the order of the criteria at the end of the window
    "errors-judged-before-latency": (
        replace(GOOD, items=197, errors=3, latency_p95_ms=200.0),
        SIGNED,
        "fail",
        "errors",
    ),
    "latency-judged-before-low-confidence": (
        replace(GOOD, latency_p95_ms=200.0, low_confidence_share=0.9),
        SIGNED,
        "fail",
        "latency",
    ),
    "low-confidence-judged-before-episodes": (
        replace(GOOD, low_confidence_share=0.9, episodes=9, drift=9),
        SIGNED,
        "fail",
        "low-confidence",
    ),
    "too-few-items-judged-before-errors": (
        replace(GOOD, items=90, errors=3),
        SIGNED,
        "inconclusive",
        "too-few-items",
    ),
    "failed-items-count-toward-the-minimum": (
        replace(GOOD, items=97, errors=3),
        SIGNED,
        "fail",
        "errors",
    ),
}


@pytest.mark.parametrize("case", list(TRIAL_CASES))
def test_the_trial(case: str) -> None:
    figures, thresholds, verdict, code = TRIAL_CASES[case]
    judgement = trial(figures, thresholds)
    assert (judgement.verdict, judgement.code) == (verdict, code), judgement.reason
    assert judgement.figures == figures.as_figures()


def test_a_trial_with_fewer_items_than_early_items_judges_early_at_its_own_minimum() -> None:
    short = SIGNED.model_copy(update={"trial_min_items": 5})
    assert trial(replace(EARLY, items=1, errors=3), short).verdict is None
    assert trial(replace(EARLY, items=2, errors=3), short).code == "errors"


def test_the_trial_says_why_in_one_line() -> None:
    assert trial(replace(GOOD, items=99), SIGNED).reason == (
        "trial window over with 99 of 100 items: holding, not judged"
    )
    assert "3 of 200 trial items failed" in trial(replace(GOOD, items=197, errors=3), SIGNED).reason
    assert (
        "1 drift and 4 anomaly episodes"
        in trial(TRIAL_CASES["episodes-one-over-the-previous-rate-plus-allowance"][0], SIGNED).reason
    )
    assert trial(GOOD, SIGNED).reason == "trial passed over 200 items in 300 s"


def test_the_trial_figures_leave_out_what_was_not_measured() -> None:
    bare = TrialFigures(
        elapsed_s=12.345, items=0, errors=0, latency_p95_ms=None, low_confidence_share=None, episodes=0
    )
    assert bare.as_figures() == {"trial_items": 0, "trial_s": 12.3, "drift": 0, "anomalies": 0, "crashes": 0}
    full = replace(
        GOOD, errors=3, crashes=1, low_confidence_share=0.123456, previous_low_confidence_share=0.0999
    )
    assert full.as_figures() == {
        "trial_items": 200,
        "trial_s": 300.0,
        "drift": 0,
        "anomalies": 0,
        "crashes": 1,
        "error_rate": round(3 / 203, 6),
        "latency_p95_ms": 20.0,
        "budget_ms": BUDGET_MS,
        "low_confidence_share": 0.1235,
        "previous_low_confidence_share": 0.0999,
    }


# ------------------------------------------------------------------ memory plan

MEMORY_CASES: dict[str, tuple[float | None, float | None, float | None, bool]] = {
    "no-limit-on-the-unit": (None, 900.0, 5000.0, True),
    "no-ram-figure-in-the-release": (512.0, 500.0, None, True),
    "memory-use-unknown": (512.0, None, 5000.0, True),
    "fits-exactly": (512.0, 312.0, 200.0, True),
    "fits-with-room": (512.0, 100.0, 200.0, True),
    "just-too-big": (512.0, 312.0, 200.5, False),
    "already-over-the-limit": (512.0, 600.0, 1.0, False),
}


@pytest.mark.parametrize("case", list(MEMORY_CASES))
def test_the_memory_plan(case: str) -> None:
    limit, used, candidate, fits = MEMORY_CASES[case]
    plan = memory_plan(limit, used, candidate)
    assert plan.fits is fits
    assert (plan.limit_mb, plan.used_mb, plan.candidate_mb) == (limit, used, candidate)
    shown = plan.to_dict()
    assert (shown["fits"], shown["shadow"], shown["keep_previous"]) == (fits, fits, fits)
    assert shown["reason"] == plan.reason and plan.reason


def test_a_candidate_that_does_not_fit_says_how_much_room_is_left() -> None:
    assert memory_plan(512.0, 312.0, 300.0).reason == (
        "300 MiB does not fit in the 200 MiB left under 512 MiB beside the active model"
    )
