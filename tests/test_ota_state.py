"""The update state machine, table by table, and its record on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.ota import (
    InvalidTransition,
    RecordDamaged,
    ReleaseId,
    UpdateMachine,
    UpdateRecord,
    UpdateState,
    load_record,
    save_record,
)
from agent.ota.state import ALLOWED

S = UpdateState
V2 = ReleaseId(name="digits-cls", version=2)
V3 = ReleaseId(name="digits-cls", version=3)
DIGEST = "ab" * 32
OTHER_DIGEST = "cd" * 32
AGENT = "0.1.0"

STEPS: dict[str, Any] = {
    "retry": lambda m: m.retry(),
    "refuse": lambda m: m.refuse("other-fleet", "for fleet b", 7),
    "start_download": lambda m: m.start_download(DIGEST, 1000, 7),
    "progress": lambda m: m.progress(100, 50),
    "downloaded": lambda m: m.downloaded(),
    "installed": lambda m: m.installed(),
    "fail": lambda m: m.fail("link", "the broker went away"),
}

# Every step the life cycle allows, and where it leads; every pair not listed must raise.
EXPECTED: dict[tuple[UpdateState, str], UpdateState] = {
    (S.OFFERED, "refuse"): S.REFUSED,
    (S.OFFERED, "start_download"): S.DOWNLOADING,
    (S.OFFERED, "fail"): S.FAILED,
    (S.DOWNLOADING, "refuse"): S.REFUSED,
    (S.DOWNLOADING, "start_download"): S.DOWNLOADING,  # a resume after a restart
    (S.DOWNLOADING, "progress"): S.DOWNLOADING,
    (S.DOWNLOADING, "downloaded"): S.VERIFYING,
    (S.DOWNLOADING, "fail"): S.FAILED,
    (S.VERIFYING, "refuse"): S.REFUSED,
    (S.VERIFYING, "downloaded"): S.VERIFYING,  # verifying again after a restart
    (S.VERIFYING, "installed"): S.INSTALLED,
    (S.VERIFYING, "fail"): S.FAILED,
    (S.REFUSED, "retry"): S.OFFERED,
    (S.FAILED, "retry"): S.OFFERED,
    (S.FAILED, "refuse"): S.REFUSED,
    (S.FAILED, "start_download"): S.DOWNLOADING,
    (S.FAILED, "fail"): S.FAILED,
}


def record(state: UpdateState, release: ReleaseId = V2, **fields: Any) -> UpdateRecord:
    values: dict[str, Any] = {"state": state, "release": release, "changed_at": 1.0, "agent_version": AGENT}
    if state in (S.DOWNLOADING, S.VERIFYING, S.INSTALLED):
        values.update(digest=DIGEST, length=1000)
    values.update(fields)
    return UpdateRecord(**values)


def machine(state: UpdateState | None, **fields: Any) -> UpdateMachine:
    return UpdateMachine(None if state is None else record(state, **fields), AGENT, clock=lambda: 5.0)


PAIRS = [(state, step) for state in [None, *S] for step in STEPS]


@pytest.mark.parametrize(("state", "step"), PAIRS, ids=[f"{s.value if s else 'none'}-{n}" for s, n in PAIRS])
def test_every_step_from_every_state_goes_where_the_table_says_or_raises(state, step):
    m = machine(state)
    expected = EXPECTED.get((state, step)) if state is not None else None
    if expected is None:
        with pytest.raises(InvalidTransition):
            STEPS[step](m)
        assert m.record == (None if state is None else record(state))  # an out-of-order step changes nothing
    else:
        change = STEPS[step](m)
        assert change.after.state is expected and m.state is expected
        assert change.after.release == V2


def test_the_table_in_the_module_is_the_table_of_this_test():
    allowed = {(state, step) for step, states in ALLOWED.items() for state in states}
    assert allowed == set(EXPECTED)


@pytest.mark.parametrize("state", [None, *S], ids=lambda s: s.value if s else "none")
def test_a_newer_desired_release_supersedes_any_state_at_once(state):
    m = machine(state)
    change = m.offer(V3)
    assert change.after.state is S.OFFERED and change.after.release == V3
    assert change.after.digest is None and change.after.reason is None and change.changed
    assert change.superseded == (None if state is None else record(state))


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_offering_the_current_release_again_changes_nothing(state):
    m = machine(state)
    change = m.offer(V2)
    assert change.before is change.after and not change.changed and change.superseded is None


# held: (state, retry flag, metadata version recorded, metadata version now, same agent) -> held
HELD = [
    (S.REFUSED, True, 7, 7, True, True),
    (S.REFUSED, True, 7, 8, True, False),  # the metadata changed
    (S.REFUSED, True, 7, 7, False, False),  # the agent changed
    (S.REFUSED, True, None, 8, True, True),  # decided without metadata (not newer): metadata cannot change it
    (S.REFUSED, True, 7, None, True, False),  # not yet refreshed: cannot tell, so refresh first
    (S.FAILED, True, 7, 7, True, False),  # an ordinary failure is retried
    (S.FAILED, False, 7, 7, True, True),  # a spent budget is not
    (S.FAILED, False, 7, 8, True, False),
    (S.OFFERED, True, 7, 7, True, False),
    (S.DOWNLOADING, True, 7, 7, True, False),
    (S.VERIFYING, True, 7, 7, True, False),
    (S.INSTALLED, True, 7, 7, True, False),
]


@pytest.mark.parametrize(("state", "retry", "recorded", "now", "same_agent", "held"), HELD)
def test_a_refusal_holds_until_the_desired_state_the_metadata_or_the_agent_changes(
    state, retry, recorded, now, same_agent, held
):
    m = UpdateMachine(
        record(state, retry=retry, metadata_version=recorded, agent_version=AGENT if same_agent else "0.0.9"),
        AGENT,
    )
    assert m.held(now) is held


def test_a_refusal_records_its_reason_and_the_metadata_it_was_decided_under():
    m = machine(S.OFFERED)
    after = m.refuse("other-group", "for group-2 only", 12).after
    assert (after.code, after.reason, after.metadata_version, after.agent_version) == (
        "other-group",
        "for group-2 only",
        12,
        AGENT,
    )
    assert m.held(12) and not m.held(13)
    retried = m.retry().after
    assert retried.state is S.OFFERED and retried.reason is None and retried.code is None


def test_a_failure_for_good_cannot_be_downloaded_again_without_a_retry():
    m = machine(S.DOWNLOADING)
    m.fail("budget", "the data budget is spent", retry=False)
    with pytest.raises(InvalidTransition, match="not retried"):
        m.start_download(DIGEST, 1000, 7)
    m.retry()
    assert m.start_download(DIGEST, 1000, 7).after.state is S.DOWNLOADING


def test_a_resumed_download_counts_its_attempts_and_keeps_its_bytes_unless_the_archive_changed():
    m = machine(S.OFFERED)
    m.start_download(DIGEST, 1000, 7)
    m.progress(400, 100)
    m.fail("link", "dropped")
    after = m.start_download(DIGEST, 1000, 7).after
    assert (after.attempts, after.bytes_fetched, after.bytes_reused) == (2, 400, 100)
    m.fail("link", "dropped")
    after = m.start_download(OTHER_DIGEST, 2000, 8).after
    assert (after.digest, after.length, after.bytes_fetched, after.attempts) == (OTHER_DIGEST, 2000, 0, 3)


def test_a_change_is_reported_when_the_state_or_the_reason_changes_not_for_progress():
    m = machine(S.DOWNLOADING)
    assert not m.progress(10, 0).changed
    assert m.fail("link", "a").changed
    assert not m.fail("link", "a").changed  # the same failure again: no second event
    assert m.fail("link", "b").changed


def test_the_time_of_a_change_is_the_machine_clock():
    m = UpdateMachine(None, AGENT, clock=lambda: 42.0)
    assert m.offer(V2).after.changed_at == 42.0


# --- the record on disk ------------------------------------------------------------------------------------------


def test_a_saved_record_loads_back_equal_and_owner_only(tmp_path: Path):
    path = tmp_path / "ota" / "state.json"
    saved = record(S.DOWNLOADING, bytes_fetched=5, metadata_version=3)
    save_record(path, saved)
    assert load_record(path) == saved
    assert json.loads(path.read_text())["schema"] == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_no_record_file_is_no_record(tmp_path: Path):
    assert load_record(tmp_path / "state.json") is None


DAMAGE = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty": lambda good: b"",
    "not json": lambda good: b"\x00\xff garbage",
    "a newer schema": lambda good: good.replace(b'"schema":1', b'"schema":2'),
    "an unknown state": lambda good: good.replace(b'"downloading"', b'"exploded"'),
    "an unknown key": lambda good: good.replace(b"{", b'{"extra":1,', 1),
    "far too big": lambda good: b" " * (70 * 1024) + good,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_record_is_reported_not_fatal(tmp_path: Path, damage):
    path = tmp_path / "state.json"
    save_record(path, record(S.DOWNLOADING))
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    loaded = load_record(path)
    assert isinstance(loaded, RecordDamaged) and str(path) in loaded.reason
