"""The rollout's pure decisions (agent/fleet/rollout_policy.py): the waves' devices, a device's standing from its
retained status, and each verdict of a wave, table-driven."""

from __future__ import annotations

import pytest

from agent.fleet.rollout_policy import (
    Condition,
    Policy,
    PolicyError,
    figures_of,
    judge,
    parse_conditions,
    parse_share,
    parse_waves,
    plan,
    standing,
)
from agent.link.payloads import ModelRef, Status, UpdateBrief

DEVICES = [f"cam-{n}" for n in range(1, 21)]


def status(
    state: str = "online",
    serving: int | None = 1,
    update: str | None = None,
    version: int = 2,
    verdict: str | None = None,
    figures: dict | None = None,
    name: str = "det",
) -> Status:
    return Status(
        state=state,  # type: ignore[arg-type]
        device="cam-1",
        birth=1,
        time=1.0,
        agent_version="0",
        model=None if serving is None else ModelRef(name=name, version=serving),
        update=None
        if update is None
        else UpdateBrief(state=update, name=name, version=version, verdict=verdict, figures=figures or {}),  # type: ignore[arg-type]
    )


# -- parsing ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shares"),
    [("1%,10%,50%,100%", (0.01, 0.1, 0.5, 1.0)), ("100%", (1.0,)), ("0.25, 1", (0.25, 1.0))],
)
def test_wave_lists_read_as_growing_shares_ending_at_everything(text: str, shares: tuple[float, ...]) -> None:
    assert parse_waves(text) == pytest.approx(shares)


@pytest.mark.parametrize("text", ["", "50%,10%,100%", "10%,50%", "0%,100%", "10%,10%,100%", "x,100%", "150%"])
def test_a_wave_list_that_shrinks_stops_short_or_is_not_a_share_is_refused(text: str) -> None:
    with pytest.raises(PolicyError, match="--waves"):
        parse_waves(text)


@pytest.mark.parametrize("text", ["-1%", "101%", "1.5", "nan", "lots"])
def test_a_share_outside_0_to_100_percent_is_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_share(text, "--success")


def test_abort_conditions_read_comparisons_and_bare_figures() -> None:
    conditions = parse_conditions("agreement<0.9, latency_p95_ms>=40,drift")
    assert conditions == (
        Condition("agreement", "<", 0.9),
        Condition("latency_p95_ms", ">=", 40.0),
        Condition("drift"),
    )
    assert conditions[0].holds({"agreement": 0.85}) and not conditions[0].holds({"agreement": 0.95})
    assert conditions[1].holds({"latency_p95_ms": 40}) and not conditions[1].holds({})
    assert conditions[2].holds({"drift": 1}) and not conditions[2].holds({"drift": 0})


@pytest.mark.parametrize("text", ["agreement<", "speed>3", "agreement~0.9", "latency_p95_ms>4O"])
def test_an_abort_condition_that_cannot_be_read_names_itself(text: str) -> None:
    with pytest.raises(PolicyError, match="--abort-on"):
        parse_conditions(text)


# -- the plan -----------------------------------------------------------------------------------------------------------


def test_waves_round_up_and_add_up_to_the_whole_group() -> None:
    waves = plan("r1", DEVICES[:4], Policy(waves=(0.01, 0.10, 0.5, 1.0)))
    assert [len(wave) for wave in waves] == [1, 1, 2]  # 1% and 10% of 4 are both 1: the second adds none
    assert sorted(device for wave in waves for device in wave) == sorted(DEVICES[:4])


def test_the_plan_is_the_same_whatever_order_the_devices_came_in() -> None:
    policy = Policy(waves=(0.1, 0.5, 1.0))
    assert plan("r1", DEVICES, policy) == plan("r1", list(reversed(DEVICES)), policy)
    assert plan("r1", DEVICES, policy) != plan("r2", DEVICES, policy)  # another rollout, other canaries


def test_min_devices_raises_a_small_first_wave() -> None:
    waves = plan("r1", DEVICES, Policy(waves=(0.01, 1.0), min_devices=3))
    assert [len(wave) for wave in waves] == [3, 17]
    assert [len(wave) for wave in plan("r1", DEVICES[:2], Policy(waves=(0.01, 1.0), min_devices=3))] == [2]


# -- standing -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (None, "pending"),
        (status(), "pending"),
        (status(update="committed", version=1), "pending"),  # an older update
        (status(update="downloading"), "updating"),
        (status(update="shadow"), "updating"),
        (status(update="trial"), "updating"),
        (status(update="trial", verdict="inconclusive"), "inconclusive"),
        (status(serving=2, update="committed"), "committed"),
        (status(serving=2), "committed"),  # it already ran the release
        (status(update="rejected"), "failed"),
        (status(update="rolled-back"), "failed"),
        (status(update="failed"), "failed"),
        (status(update="refused"), "failed"),
        (status(state="offline", serving=2, update="committed"), "offline"),
        (status(update="rejected", name="other"), "pending"),
    ],
)
def test_a_device_stands_where_its_retained_status_says_about_this_release(
    made: Status | None, expected: str
) -> None:
    assert standing(made, "det", 2) == expected


def test_figures_are_read_only_from_an_update_about_this_release() -> None:
    assert figures_of(status(update="shadow", figures={"agreement": 0.5}), "det", 2) == {"agreement": 0.5}
    assert figures_of(status(update="shadow", version=3, figures={"agreement": 0.5}), "det", 2) == {}


# -- verdicts -----------------------------------------------------------------------------------------------------------

POLICY = Policy(waves=(0.25, 1.0), soak_s=60, wave_timeout_s=600, offline_grace_s=10)


def verdict(
    wave: list[str],
    standings: dict[str, str],
    *,
    policy: Policy = POLICY,
    touched: list[str] | None = None,
    figures: dict | None = None,
    offline_s: dict | None = None,
    age_s: float = 5.0,
    soaked_s: float | None = None,
) -> str:
    return judge(
        policy,
        wave,
        touched or wave,
        standings,  # type: ignore[arg-type]
        figures or {},
        offline_s or {},
        wave_age_s=age_s,
        soaked_s=soaked_s,
    ).verdict


WAVE = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("standings", "extra", "expected"),
    [
        ({"a": "committed", "b": "updating"}, {}, "wait"),
        (dict.fromkeys(WAVE, "committed"), {}, "soak"),
        (dict.fromkeys(WAVE, "committed"), {"soaked_s": 59.0}, "soak"),
        (dict.fromkeys(WAVE, "committed"), {"soaked_s": 60.0}, "advance"),
        ({"a": "failed", "b": "committed", "c": "committed", "d": "committed"}, {}, "abort"),
        ({"a": "inconclusive", "b": "committed", "c": "committed", "d": "committed"}, {}, "hold"),
        ({"a": "updating"}, {"age_s": 600.0}, "hold"),
        (
            {"a": "offline", "b": "committed", "c": "committed", "d": "committed"},
            {"offline_s": {"a": 3.0}},
            "wait",
        ),
        (
            {"a": "offline", "b": "committed", "c": "committed", "d": "committed"},
            {"offline_s": {"a": 11.0}},
            "abort",
        ),
        (
            dict.fromkeys(WAVE, "committed"),
            {
                "figures": {"c": {"agreement": 0.5}},
                "policy": Policy(waves=(1.0,), abort_on=parse_conditions("agreement<0.9")),
            },
            "abort",
        ),
        (
            dict.fromkeys(WAVE, "committed"),
            {
                "figures": {"c": {"agreement": 0.95}},
                "policy": Policy(waves=(1.0,), abort_on=parse_conditions("agreement<0.9"), soak_s=0),
            },
            "advance",
        ),
    ],
)
def test_a_wave_waits_soaks_advances_holds_or_aborts_on_what_its_devices_report(
    standings: dict[str, str], extra: dict, expected: str
) -> None:
    assert verdict(WAVE, standings, **extra) == expected


def test_failures_within_the_tolerance_do_not_abort_and_the_success_share_still_advances() -> None:
    wave = [f"d{n}" for n in range(20)]
    standings = dict.fromkeys(wave, "committed") | {"d0": "failed"}
    policy = Policy(waves=(1.0,), success=0.95, abort_failures=0.05, soak_s=0)
    assert verdict(wave, standings, policy=policy) == "advance"
    assert verdict(wave, standings | {"d1": "failed"}, policy=policy) == "abort"


def test_a_failure_in_an_earlier_wave_counts_against_the_whole_rollout() -> None:
    earlier, wave = ["x"], ["a", "b"]
    standings = {"x": "failed", "a": "committed", "b": "committed"}
    assert (
        verdict(wave, standings, touched=earlier + wave, policy=Policy(waves=(1.0,), abort_failures=0.5))
        == "soak"
    )
    assert (
        verdict(wave, standings, touched=earlier + wave, policy=Policy(waves=(1.0,), abort_failures=0.3))
        == "abort"
    )


def test_an_offline_device_is_never_counted_as_failed() -> None:
    judgement = judge(
        Policy(waves=(1.0,), abort_offline=1.0, offline_grace_s=0),
        ["a"],
        ["a"],
        {"a": "offline"},
        {},
        {"a": 100.0},
        wave_age_s=5,
        soaked_s=None,
    )
    assert (
        judgement.verdict == "hold" and judgement.counts["failed"] == 0 and judgement.counts["offline"] == 1
    )
