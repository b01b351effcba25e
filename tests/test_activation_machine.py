"""The activation state machine, table by table: every (state, step) pair, a restart in every state, the record on
disk in every state, what a step reports, and the memory of rejected releases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.ota.activation import (
    ALLOWED,
    FINISHED,
    MAX_CRASHES,
    MAX_REJECTED,
    PRE_SERVING,
    UNDER_WAY,
    ActivationMachine,
    ActivationRecord,
    Step,
    crashed,
)
from agent.ota.errors import InvalidTransition
from agent.ota.state import ReleaseId, UpdateState
from agent.ota.store import RecordDamaged, load_as, save_record
from agent.release.formats import Activation

S = UpdateState
V1 = ReleaseId(name="digits-cls", version=1)
V2 = ReleaseId(name="digits-cls", version=2)
V3 = ReleaseId(name="digits-cls", version=3)
AGENT = "0.1.0"
BOOT = "boot-a"
OTHER_BOOT = "boot-b"
SHADOWED = Activation(shadow=True, shadow_items=50, trial_s=60)
DIRECT = Activation()


class Clock:
    """A clock that moves one second each time it is read."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def machine(record: ActivationRecord | None = None, clock: Clock | None = None) -> ActivationMachine:
    return ActivationMachine(record, AGENT, clock or Clock())


def begin(m: ActivationMachine, release: ReleaseId = V2, thresholds: Activation = DIRECT, **kw: Any) -> Step:
    options: dict[str, Any] = {"previous": V1, "previous_bundle": "/models/digits-cls/1", "boot_id": BOOT}
    options.update(kw)
    return m.begin(release, f"/models/{release.name}/{release.version}", thresholds, **options)


# The steps of the life cycle that `ALLOWED` governs, each called with plausible arguments.
STEPS: dict[str, Callable[[ActivationMachine], Step]] = {
    "gate_passed": lambda m: m.gate_passed({"golden_cases": 8}),
    "shadow_passed": lambda m: m.shadow_passed({"agreement": 0.97}),
    "shadow_progress": lambda m: m.shadow_progress({"shadow_items": 10}),
    "activated": lambda m: m.activated(BOOT, {"previous_low_confidence_share": 0.1}),
    "hold": lambda m: m.hold("trial window over with 3 of 100 items", {"trial_items": 3}),
    "commit": lambda m: m.commit({"trial_items": 120}),
    "reject": lambda m: m.reject("golden", "2 of 8 golden cases fail", {"golden_failed": 2}),
    "roll_back": lambda m: m.roll_back("errors", "9 of 100 trial items failed", {"error_rate": 0.09}),
}

# (step, state before, shadow asked) -> state after: the documented life cycle, written out by hand.
LIFE_CYCLE: dict[tuple[str, UpdateState], UpdateState] = {
    ("shadow_passed", S.SHADOW): S.ACTIVATING,
    ("shadow_progress", S.SHADOW): S.SHADOW,
    ("activated", S.ACTIVATING): S.TRIAL,
    ("hold", S.TRIAL): S.TRIAL,
    ("commit", S.TRIAL): S.COMMITTED,
    ("reject", S.SELF_TESTING): S.REJECTED,
    ("reject", S.SHADOW): S.REJECTED,
    ("reject", S.ACTIVATING): S.REJECTED,
    ("roll_back", S.TRIAL): S.ROLLED_BACK,
    ("roll_back", S.COMMITTED): S.ROLLED_BACK,
}
GATE_PASSED = {False: S.ACTIVATING, True: S.SHADOW}


def drive_to(
    state: UpdateState, thresholds: Activation = SHADOWED, clock: Clock | None = None
) -> ActivationMachine:
    """A machine brought to `state` by the real steps (states outside the activation life cycle: a record that
    holds one, as a damaged or foreign file could)."""
    m = machine(clock=clock)
    begin(m, thresholds=thresholds)
    path: dict[UpdateState, list[str]] = {
        S.SELF_TESTING: [],
        S.SHADOW: ["gate_passed"],
        S.ACTIVATING: ["gate_passed", "shadow_passed"],
        S.TRIAL: ["gate_passed", "shadow_passed", "activated"],
        S.COMMITTED: ["gate_passed", "shadow_passed", "activated", "commit"],
        S.REJECTED: ["reject"],
        S.ROLLED_BACK: ["gate_passed", "shadow_passed", "activated", "roll_back"],
    }
    if state not in path:
        assert m.record is not None
        return machine(m.record.model_copy(update={"state": state}), clock)
    for name in path[state]:
        if name == "shadow_passed" and not thresholds.shadow:
            continue
        STEPS[name](m)
    assert m.state is state
    return m


ALL_PAIRS = [(name, state) for name in STEPS for state in S]


def test_allowed_is_exactly_the_documented_life_cycle() -> None:
    documented = {(name, state) for name, state in LIFE_CYCLE} | {("gate_passed", S.SELF_TESTING)}
    assert {(name, state) for name, states in ALLOWED.items() for state in states} == documented
    assert set(ALLOWED) == set(STEPS)
    assert (
        ALLOWED["reject"] == PRE_SERVING == {state for state, after in ENDED.items() if after is S.REJECTED}
    )


@pytest.mark.parametrize(("name", "state"), ALL_PAIRS, ids=[f"{n}-from-{s.value}" for n, s in ALL_PAIRS])
def test_every_step_from_every_state_goes_where_documented_or_raises(name: str, state: UpdateState) -> None:
    m = drive_to(state)
    before = m.record
    if name == "gate_passed" and state is S.SELF_TESTING:
        assert STEPS[name](m).after.state is S.SHADOW
    elif (name, state) in LIFE_CYCLE:
        step = STEPS[name](m)
        assert step.before == before
        assert step.after.state is LIFE_CYCLE[name, state]
        assert m.record == step.after
    else:
        with pytest.raises(InvalidTransition, match=name):
            STEPS[name](m)
        assert m.record == before, "a refused step changes nothing"


@pytest.mark.parametrize("shadow", [False, True], ids=["no-shadow", "shadow-asked"])
def test_gate_passed_goes_to_shadow_only_when_the_release_asks(shadow: bool) -> None:
    m = drive_to(S.SELF_TESTING, Activation(shadow=shadow))
    step = m.gate_passed({"golden_cases": 8})
    assert step.after.state is GATE_PASSED[shadow]
    assert (step.after.verdict, step.after.code) == ("pass", None)
    assert step.after.figures["golden_cases"] == 8


@pytest.mark.parametrize("name", sorted(STEPS))
def test_every_step_without_an_activation_raises(name: str) -> None:
    with pytest.raises(InvalidTransition, match="no activation"):
        STEPS[name](machine())


def test_restart_without_an_activation_raises() -> None:
    with pytest.raises(InvalidTransition, match="no activation"):
        machine().restarted(BOOT, clean_stop=False)


@pytest.mark.parametrize(("state", "aborted", "after"), [
    (S.TRIAL, False, S.ROLLED_BACK),
    (S.TRIAL, True, S.REJECTED),
    (S.COMMITTED, False, S.ROLLED_BACK),
    (S.COMMITTED, True, S.REJECTED),
])  # fmt: skip
def test_an_aborted_rollback_rejects_and_a_failed_one_rolls_back(
    state: UpdateState, aborted: bool, after: UpdateState
) -> None:
    m = drive_to(state)
    step = m.roll_back("command", "a rollback came", {"n": 1}, aborted=aborted)
    assert step.after.state is after
    assert (step.after.code, step.after.reason, step.after.verdict) == ("command", "a rollback came", "fail")
    assert step.after.refused(V2)


def test_a_rejection_keeps_the_verdict_it_is_given() -> None:
    step = drive_to(S.SELF_TESTING).reject("memory", "does not fit", {"ram_mb": 900}, verdict=None)
    assert (step.after.state, step.after.verdict, step.after.code) == (S.REJECTED, None, "memory")


def test_activation_starts_the_trial_window_and_clears_the_last_verdict() -> None:
    clock = Clock()
    m = drive_to(S.ACTIVATING, clock=clock)
    step = m.activated(OTHER_BOOT, {"previous_episode_rate_per_h": 1.5})
    after = step.after
    assert (after.verdict, after.code, after.reason) == (None, None, None)
    assert after.boot_id == OTHER_BOOT
    assert after.trial_started_at is not None and after.trial_started_at <= clock.now
    assert after.figures["previous_episode_rate_per_h"] == 1.5
    assert after.figures["agreement"] == 0.97, "the shadow's figures stay beside the previous model's"


def test_a_hold_keeps_the_release_serving_uncommitted_and_says_inconclusive() -> None:
    step = drive_to(S.TRIAL).hold("too few items", {"trial_items": 3})
    assert (step.after.state, step.after.verdict, step.after.code) == (
        S.TRIAL,
        "inconclusive",
        "inconclusive",
    )
    assert step.after.reason == "too few items"


def test_the_state_change_time_moves_only_when_the_state_changes() -> None:
    clock = Clock()
    m = drive_to(S.SHADOW, clock=clock)
    assert m.record is not None
    changed = m.record.changed_at
    assert m.shadow_progress({"shadow_items": 3}).after.changed_at == changed
    after = m.shadow_passed({}).after
    assert after.changed_at > changed
    assert after.started_at < changed


def test_judged_steps_merge_figures_and_name_the_agent_that_decided() -> None:
    m = ActivationMachine(drive_to(S.SHADOW).record, "9.9.9", Clock())
    step = m.shadow_passed({"agreement": 0.97, "shadow_items": 50})
    assert step.after.figures == {"golden_cases": 8, "shadow_items": 50, "agreement": 0.97}
    assert step.after.agent_version == "9.9.9"


def test_shadow_progress_records_the_figures_so_far_without_a_verdict() -> None:
    m = drive_to(S.SHADOW)
    step = m.shadow_progress({"shadow_items": 10, "agreement": 0.5})
    assert step.after.figures["shadow_items"] == 10 and step.after.figures["agreement"] == 0.5
    assert (step.after.state, step.after.verdict, step.after.reason) == (
        S.SHADOW,
        "pass",
        "the golden gate passed",
    )
    assert m.shadow_passed({"agreement": 0.97}).after.figures["agreement"] == 0.97


def test_under_way_is_self_testing_to_trial() -> None:
    assert {state for state in S if drive_to(state).under_way} == UNDER_WAY
    assert not machine().under_way and machine().state is None and machine().record is None


# ------------------------------------------------------------------ restarts

# How the previous process ended, seen from the new one: (record's boot, new boot, clean-stop marker, a crash?).
ENDINGS: dict[str, tuple[str | None, str | None, bool, bool]] = {
    "crash-same-boot": (BOOT, BOOT, False, True),
    "clean-stop": (BOOT, BOOT, True, False),
    "other-boot": (BOOT, OTHER_BOOT, False, False),
    "no-boot-id-now": (BOOT, None, False, False),
    "no-boot-id-recorded": (None, BOOT, False, False),
}
# A restart with no crash to end the activation: where each state under way goes.
RESTARTED: dict[UpdateState, UpdateState] = {
    S.SELF_TESTING: S.SELF_TESTING,
    S.SHADOW: S.SELF_TESTING,
    S.ACTIVATING: S.SELF_TESTING,
    S.TRIAL: S.TRIAL,
}
# The crash that ends it: rejected before serving, rolled back when serving.
ENDED: dict[UpdateState, UpdateState] = {
    S.SELF_TESTING: S.REJECTED,
    S.SHADOW: S.REJECTED,
    S.ACTIVATING: S.REJECTED,
    S.TRIAL: S.ROLLED_BACK,
}
RESTART_CASES = [
    (state, ending, earlier) for state in S for ending in ENDINGS for earlier in range(MAX_CRASHES)
]


@pytest.mark.parametrize(
    ("state", "ending", "earlier"),
    RESTART_CASES,
    ids=[f"{s.value}-{e}-after-{n}-crashes" for s, e, n in RESTART_CASES],
)
def test_a_restart_in_every_state_counts_crashes_and_lands_where_documented(
    state: UpdateState, ending: str, earlier: int
) -> None:
    record_boot, boot, clean, is_crash = ENDINGS[ending]
    clock = Clock()
    start = drive_to(state, clock=clock).record
    assert start is not None
    start = start.model_copy(update={"boot_id": record_boot, "crashes": earlier})
    m = machine(start, clock)
    step = m.restarted(boot, clean_stop=clean)
    after = step.after
    assert m.record == after
    if state not in UNDER_WAY:
        assert after is start, "a finished (or foreign) record is left as it is"
        assert not step.changed
        return
    crashes = earlier + (1 if is_crash else 0)
    assert after.crashes == crashes
    assert after.boot_id == boot, "the record is taken over in this boot"
    if crashes >= MAX_CRASHES:
        assert after.state is ENDED[state]
        assert (after.verdict, after.code) == ("fail", "crashes")
        assert after.figures["crashes"] == crashes
        assert state.value in (after.reason or "")
        assert after.refused(V2)
        return
    assert after.state is RESTARTED[state]
    if state is S.TRIAL:
        assert start.trial_started_at is not None and after.trial_started_at is not None
        assert after.trial_started_at > start.trial_started_at, "the trial window starts again"
    else:
        assert (after.verdict, after.code, after.reason) == (None, None, None), "the gate runs again"


def test_two_crashes_in_a_row_reject_a_release_before_it_serves() -> None:
    m = drive_to(S.ACTIVATING)
    assert m.restarted(BOOT, clean_stop=False).after.state is S.SELF_TESTING
    m.gate_passed({})
    assert m.restarted(BOOT, clean_stop=False).after.state is S.REJECTED
    assert m.record is not None and m.record.crashes == MAX_CRASHES


def test_two_crashes_in_the_trial_roll_back_and_nightly_reboots_never_do() -> None:
    m = drive_to(S.TRIAL)
    for night in range(5):
        assert m.restarted(f"night-{night}", clean_stop=False).after.state is S.TRIAL
        assert m.restarted(f"night-{night}", clean_stop=True).after.state is S.TRIAL
    assert m.record is not None and m.record.crashes == 0
    m.restarted("night-4", clean_stop=False)
    assert m.restarted("night-4", clean_stop=False).after.state is S.ROLLED_BACK


@pytest.mark.parametrize(
    ("record_boot", "boot", "clean", "is_crash"), list(ENDINGS.values()), ids=list(ENDINGS)
)
def test_crashed_is_same_boot_without_a_clean_stop(
    record_boot: str | None, boot: str | None, clean: bool, is_crash: bool
) -> None:
    assert crashed(record_boot, boot, clean) is is_crash


def test_no_boot_id_on_either_side_is_no_crash() -> None:
    assert not crashed(None, None, clean_stop=False)


# ------------------------------------------------------------------ the record on disk

ACTIVATION_STATES = sorted({*UNDER_WAY, *FINISHED}, key=lambda s: s.value)


@pytest.mark.parametrize("state", ACTIVATION_STATES, ids=[s.value for s in ACTIVATION_STATES])
def test_the_record_survives_a_save_and_load_in_every_state(tmp_path: Path, state: UpdateState) -> None:
    m = drive_to(state)
    m.restarted(OTHER_BOOT, clean_stop=True)
    record = m.record
    assert record is not None
    path = tmp_path / "ota" / "activation.json"
    save_record(path, record)
    loaded = load_as(path, ActivationRecord)
    assert loaded == record
    assert json.loads(path.read_text())["schema"] == 1


def test_a_record_with_rejected_memory_and_a_manual_origin_survives_a_save_and_load(tmp_path: Path) -> None:
    m = drive_to(S.REJECTED)
    begin(m, V3, origin="manual", desired_version=7, ram_mb=64)
    path = tmp_path / "activation.json"
    save_record(path, m.record)  # type: ignore[arg-type]
    loaded = load_as(path, ActivationRecord)
    assert loaded == m.record
    assert isinstance(loaded, ActivationRecord)
    assert (loaded.rejected, loaded.origin, loaded.desired_version, loaded.ram_mb) == ((V2,), "manual", 7, 64)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _other_schema(data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "schema": 2}).encode()


def _unknown_key(data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "surprise": True}).encode()


def _unknown_state(data: bytes) -> bytes:
    return json.dumps({**json.loads(data), "state": "half-done"}).encode()


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated": _truncated,
    "other-schema": _other_schema,
    "not-json": lambda data: b"\x00\xff not json at all",
    "empty": lambda data: b"",
    "json-list": lambda data: b"[1, 2, 3]",
    "unknown-key": _unknown_key,
    "unknown-state": _unknown_state,
    "over-the-size-limit": lambda data: data + b" " * 70_000,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_record_reads_as_damaged(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "activation.json"
    record = drive_to(S.TRIAL).record
    assert record is not None
    save_record(path, record)
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    loaded = load_as(path, ActivationRecord)
    assert isinstance(loaded, RecordDamaged)
    assert loaded.path == path and str(path) in loaded.reason


def test_a_missing_record_is_no_activation(tmp_path: Path) -> None:
    assert load_as(tmp_path / "activation.json", ActivationRecord) is None


# ------------------------------------------------------------------ what a step reports


def _changed(m: ActivationMachine) -> bool:
    return m.shadow_progress({"shadow_items": 1}).changed


def _hold_twice(m: ActivationMachine) -> bool:
    m.hold("too few items", {"trial_items": 1})
    return m.hold("too few items", {"trial_items": 2}).changed


def _hold_new_reason(m: ActivationMachine) -> bool:
    m.hold("too few items", {"trial_items": 1})
    return m.hold("still too few items", {"trial_items": 2}).changed


CHANGED: dict[str, tuple[UpdateState, Callable[[ActivationMachine], bool], bool]] = {
    "first-begin": (S.SELF_TESTING, lambda m: begin(machine()).changed, True),
    "begin-again-same-release": (S.SELF_TESTING, lambda m: begin(m).changed, False),
    "begin-after-commit": (S.COMMITTED, lambda m: begin(m).changed, True),
    "begin-another-release": (S.REJECTED, lambda m: begin(m, V3).changed, True),
    "shadow-progress-figures-only": (S.SHADOW, _changed, False),
    "gate-passed-new-state": (S.SELF_TESTING, lambda m: m.gate_passed({}).changed, True),
    "first-hold-new-verdict": (S.TRIAL, lambda m: m.hold("too few items", {}).changed, True),
    "hold-again-same-reason": (S.TRIAL, _hold_twice, False),
    "hold-again-new-reason": (S.TRIAL, _hold_new_reason, True),
    "restart-in-trial-one-crash": (S.TRIAL, lambda m: m.restarted(BOOT, clean_stop=False).changed, True),
    "restart-in-trial-clean": (S.TRIAL, lambda m: m.restarted(BOOT, clean_stop=True).changed, False),
    "restart-in-shadow-back-to-gate": (S.SHADOW, lambda m: m.restarted(BOOT, clean_stop=True).changed, True),
    "restart-when-finished": (S.COMMITTED, lambda m: m.restarted(BOOT, clean_stop=False).changed, False),
}


@pytest.mark.parametrize("case", list(CHANGED))
def test_a_step_is_worth_an_event_only_for_a_new_state_release_verdict_reason_or_crash(case: str) -> None:
    state, act, expected = CHANGED[case]
    assert act(drive_to(state)) is expected


def test_a_step_with_only_new_figures_is_not_worth_an_event() -> None:
    record = drive_to(S.TRIAL).record
    assert record is not None
    after = record.model_copy(update={"figures": {"x": 1}, "boot_id": "other", "changed_at": 5.0})
    assert not Step(record, after).changed
    changes = {"state": S.COMMITTED, "release": V3, "verdict": "pass", "reason": "why", "crashes": 1}
    for key, value in changes.items():
        assert Step(record, record.model_copy(update={key: value})).changed, key


# ------------------------------------------------------------------ rejected memory


@pytest.mark.parametrize("ending", [S.REJECTED, S.ROLLED_BACK])
def test_the_next_activation_remembers_a_refused_release(ending: UpdateState) -> None:
    m = drive_to(ending)
    step = begin(m, V3)
    assert step.after.rejected == (V2,)
    assert step.after.refused(V2) and not step.after.refused(V3)


def test_a_committed_release_is_not_remembered_as_refused() -> None:
    m = drive_to(S.COMMITTED)
    assert not m.record.refused(V2)  # type: ignore[union-attr]
    assert begin(m, V3).after.rejected == ()


def test_a_record_refuses_its_own_release_once_it_is_rejected_or_rolled_back() -> None:
    refused = {state for state in S if drive_to(state).record.refused(V2)}  # type: ignore[union-attr]
    assert refused == {S.REJECTED, S.ROLLED_BACK}
    assert not any(drive_to(state).record.refused(V3) for state in S)  # type: ignore[union-attr]


def test_a_manual_activation_of_a_remembered_release_forgets_it() -> None:
    m = drive_to(S.REJECTED)
    begin(m, V3)
    m.reject("golden", "fails", {})
    assert m.record is not None and m.record.rejected == (V2,)
    step = begin(m, V2, origin="manual", desired_version=4)
    assert step.after.rejected == (V3,)
    assert not step.after.refused(V2) and step.after.refused(V3)
    assert (step.after.origin, step.after.desired_version) == ("manual", 4)


def test_beginning_a_rejected_release_again_forgets_it() -> None:
    m = drive_to(S.REJECTED)
    step = begin(m, V2, origin="manual")
    assert step.after.rejected == () and not step.after.refused(V2)
    assert step.after.state is S.SELF_TESTING


def test_at_most_max_rejected_releases_are_remembered_the_oldest_forgotten_first() -> None:
    m = machine()
    releases = [ReleaseId(name="digits-cls", version=n) for n in range(1, MAX_REJECTED + 6)]
    for release in releases:
        begin(m, release)
        m.reject("golden", "fails", {})
    step = begin(m, ReleaseId(name="digits-cls", version=100))
    assert step.after.rejected == tuple(releases[-MAX_REJECTED:])
    assert not step.after.refused(releases[0]) and step.after.refused(releases[-1])


@pytest.mark.parametrize("state", sorted(UNDER_WAY, key=lambda s: s.value))
def test_another_release_cannot_begin_while_one_is_under_way(state: UpdateState) -> None:
    m = drive_to(state)
    before = m.record
    with pytest.raises(InvalidTransition, match="finish it"):
        begin(m, V3)
    assert m.record == before


@pytest.mark.parametrize("state", sorted(UNDER_WAY, key=lambda s: s.value))
def test_beginning_the_same_release_again_restarts_it_at_the_gate(state: UpdateState) -> None:
    m = drive_to(state)
    m.restarted(BOOT, clean_stop=False)
    step = begin(m, V2)
    assert step.after.state is S.SELF_TESTING
    assert (step.after.crashes, step.after.verdict, step.after.figures) == (0, None, {})


@pytest.mark.parametrize("state", sorted(FINISHED, key=lambda s: s.value))
def test_a_finished_activation_is_replaced_by_the_next(state: UpdateState) -> None:
    m = drive_to(state)
    assert m.record is not None
    old = m.record
    step = begin(m, V3, thresholds=DIRECT, previous=V2, previous_bundle="/models/digits-cls/2")
    after = step.after
    assert (after.state, after.release, after.previous, after.crashes) == (S.SELF_TESTING, V3, V2, 0)
    assert (after.verdict, after.code, after.reason, after.figures) == (None, None, None, {})
    assert after.thresholds == DIRECT
    assert after.started_at > old.changed_at and after.changed_at >= after.started_at


def test_begin_fixes_the_thresholds_origin_and_desired_version_it_is_given() -> None:
    thresholds = Activation(shadow=True, trial_s=900, max_error_ppm=5)
    after = begin(machine(), thresholds=thresholds, origin="desired", desired_version=12, ram_mb=300).after
    assert after.thresholds == thresholds
    assert (after.origin, after.desired_version, after.ram_mb, after.boot_id) == ("desired", 12, 300, BOOT)
    assert after.agent_version == AGENT
