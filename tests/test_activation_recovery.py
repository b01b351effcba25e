"""A power cut or a SIGKILL at each step of an activation, replayed from what it leaves on disk: the record and the
`active`/`previous` links. The next start repairs the links before a model loads (so nothing serves that has not
passed its gate in this process) and goes on exactly as the rules say; then a real agent restarted in `activating`
serves the verified model, gates the release again and commits it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import MODELS
from daemon_support import DaemonDir, start_daemon, stop, wait_status

from agent.config import REPO_MODELS
from agent.daemon.activation import ActivationPorts, ActivationService
from agent.daemon.ports import Reporter
from agent.events import AgentEvent
from agent.ota import links
from agent.ota.activation import ActivationRecord
from agent.ota.layout import Layout
from agent.ota.state import ReleaseId, UpdateState
from agent.ota.store import save_record
from agent.release.formats import Activation

PREVIOUS = REPO_MODELS / "digits-det-tflite"


def install(state: Path, version: int) -> Path:
    bundle = state / "models" / "digits-det" / str(version)
    shutil.copytree(MODELS / "digits-det-onnx", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def record_at(state: UpdateState, bundle: Path, boot: str = "boot-1", **extra: Any) -> ActivationRecord:
    now = time.time()
    return ActivationRecord(
        state=state,
        release=ReleaseId(name="digits-det", version=2),
        bundle=str(bundle),
        previous=ReleaseId(name="digits-det", version=1),
        previous_bundle=str(PREVIOUS),
        thresholds=Activation(trial_s=2, trial_min_items=5),
        started_at=now,
        changed_at=now,
        boot_id=boot,
        agent_version="0",
        **extra,
    )


def service(state: Path, boot: str, events: list[AgentEvent]) -> ActivationService:
    from agent.config import AgentConfig

    ports = ActivationPorts(cast(Any, None), Reporter(events.append), lambda: None, lambda: None)
    return ActivationService(AgentConfig(state_dir=state), state, ports, boot=lambda: boot)


def active_link(state: Path) -> Path | None:
    return links.read_link(Layout(state), "digits-det", links.ACTIVE)


@pytest.mark.parametrize(
    ("before", "links_swapped", "clean", "boot", "after", "crashes", "active_is_release"),
    [
        # killed between the swap and the trial's record: back to the gate, the links put back
        (UpdateState.ACTIVATING, True, False, "boot-1", UpdateState.SELF_TESTING, 1, False),
        (UpdateState.ACTIVATING, False, False, "boot-1", UpdateState.SELF_TESTING, 1, False),
        # a power cut (another boot) is not a crash
        (UpdateState.ACTIVATING, True, False, "boot-2", UpdateState.SELF_TESTING, 0, False),
        (UpdateState.SHADOW, False, False, "boot-1", UpdateState.SELF_TESTING, 1, False),
        (UpdateState.SELF_TESTING, False, True, "boot-1", UpdateState.SELF_TESTING, 0, False),
        # in trial the release serves on: the window starts again
        (UpdateState.TRIAL, True, False, "boot-1", UpdateState.TRIAL, 1, True),
        (UpdateState.TRIAL, True, True, "boot-1", UpdateState.TRIAL, 0, True),
        # killed after the rollback's record and before its links: the links are finished on the next start
        (UpdateState.ROLLED_BACK, True, False, "boot-1", UpdateState.ROLLED_BACK, 0, False),
        (UpdateState.REJECTED, True, False, "boot-1", UpdateState.REJECTED, 0, False),
        (UpdateState.COMMITTED, True, False, "boot-1", UpdateState.COMMITTED, 0, True),
    ],
)
def test_a_restart_at_each_step_repairs_the_links_and_goes_on_as_the_rules_say(
    tmp_path: Path,
    before: UpdateState,
    links_swapped: bool,
    clean: bool,
    boot: str,
    after: UpdateState,
    crashes: int,
    active_is_release: bool,
) -> None:
    state = tmp_path / "state"
    bundle = install(state, 2)
    layout = Layout(state)
    if links_swapped:
        links.swap_links(layout, "digits-det", bundle, PREVIOUS)
    (state / "models" / "digits-det" / ".link.active.deadbeef").symlink_to("2")  # a temp link a power cut left
    save_record(state / "ota" / "activation.json", record_at(before, bundle))
    if clean:
        (state / "ota" / "clean-stop").write_text("boot-1")
    events: list[AgentEvent] = []
    recovered = service(state, boot, events)
    recovered.recover()
    record = recovered.record
    assert record is not None and record.state is after, (record, events)
    assert record.crashes == crashes
    link = active_link(state)
    if active_is_release:
        assert link is not None and link.resolve() == bundle.resolve()
    else:
        assert link is None or link.resolve() == PREVIOUS.resolve(), link
    assert not (state / "ota" / "clean-stop").exists(), "the marker is for one start only"
    assert not list((state / "models" / "digits-det").glob(".link.*"))


def test_a_second_crash_before_serving_rejects_and_in_trial_rolls_back_with_the_links_put_back(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    bundle = install(state, 2)
    links.swap_links(Layout(state), "digits-det", bundle, PREVIOUS)
    save_record(state / "ota" / "activation.json", record_at(UpdateState.TRIAL, bundle, crashes=1))
    events: list[AgentEvent] = []
    recovered = service(state, "boot-1", events)
    recovered.recover()
    assert recovered.record is not None and recovered.record.state is UpdateState.ROLLED_BACK
    assert recovered.record.code == "crashes"
    link = active_link(state)
    assert link is not None and link.resolve() == PREVIOUS.resolve()
    assert any(e.evidence.get("state") == "rolled-back" for e in events), events
    assert (bundle / "manifest.json").is_file(), "the release stays on disk"


def test_a_damaged_record_is_reported_and_the_device_starts_from_its_links(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "ota").mkdir(parents=True)
    (state / "ota" / "activation.json").write_text('{"schema": 1, "state": "tri')
    events: list[AgentEvent] = []
    recovered = service(state, "boot-1", events)
    recovered.recover()
    assert recovered.record is None
    assert any("activation" in e.message for e in events), events


def test_a_real_agent_restarted_in_activating_serves_the_verified_model_then_gates_and_commits_the_release(
    tmp_path: Path,
) -> None:
    folder = DaemonDir()
    try:
        bundle = install(folder.state, 2)
        links.swap_links(Layout(folder.state), "digits-det", bundle, PREVIOUS)  # the swap had begun
        save_record(folder.state / "ota" / "activation.json", record_at(UpdateState.ACTIVATING, bundle))
        folder.write("")
        process = start_daemon(folder)
        try:
            data = wait_status(folder, lambda s: (s.get("model") or {}).get("version") is not None, 30, "a model")
            assert data["model"]["version"] == 1, "the release is gated again before it serves"
            data = wait_status(
                folder,
                lambda s: s["update"]["activation"].get("state") in ("committed", "rejected", "rolled-back"),
                60,
                "a verdict",
            )
            assert data["update"]["activation"]["state"] == "committed", data["update"]["activation"]
            assert data["model"]["version"] == 2
        finally:
            code, output, _ = stop(process)
        assert code == 0 and "Traceback" not in output, output
    finally:
        folder.cleanup()
