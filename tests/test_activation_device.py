"""Safe activation on one real agent process, every part real: a signed release over a real Mosquitto, installed, then
gated (golden vectors and latency on this device's runtime), shadowed on live items when the release asks, hot-swapped
with the `active`/`previous` links replaced, tried for its trial window, committed or rolled back; SIGKILL during
shadow and trial, clean stops, and the manual controls (`edge-agent models`, the `rollback` command)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import DaemonDir, start_daemon, status, stop, wait_for, wait_status

pytest.register_assert_rewrite("broker", "fleet_store", "activation_support")
from activation_support import (  # noqa: E402
    BROKEN_BUDGET_MS,
    FAST_TRIAL,
    Repo,
    activation_of,
    connection,
    desire,
    device_toml,
    fleet_ok,
    release_bundle,
    serve_repo,
    serving,
)
from broker import Broker, needs_mosquitto  # noqa: E402
from conftest import ROOT  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def serve(broker: Broker, repo: Repo) -> Iterator[subprocess.Popen[str]]:
    yield from serve_repo(broker, repo)


@pytest.fixture
def device(broker: Broker, repo: Repo) -> Iterator[DaemonDir]:
    folder = DaemonDir()
    folder.write(device_toml(broker, "cam-1", "g1", repo))
    yield folder
    folder.cleanup()


def links_of(folder: DaemonDir) -> dict[str, str | None]:
    model_dir = folder.state / "models" / "digits-det"
    return {
        which: str((model_dir / which).readlink()) if (model_dir / which).is_symlink() else None
        for which in ("active", "previous")
    }


def state_is(*states: str):  # type: ignore[no-untyped-def]
    return lambda data: activation_of(data).get("state") in states


def run_cli(folder: DaemonDir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--socket", str(folder.socket)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_good_release_passes_its_gate_and_trial_and_is_committed_with_the_links_replaced(
    broker: Broker, repo: Repo, serve: subprocess.Popen[str], device: DaemonDir, tmp_path: Path
) -> None:
    repo.publish(release_bundle(tmp_path, 2), activation=FAST_TRIAL)
    process = start_daemon(device)
    try:
        wait_status(device, lambda s: serving(s) == 1, 30, "the bundled model in service")
        desire(broker, "digits-det", 2, group="g1")
        states: list[str] = []  # the status shows the 10 latest events: gather the update states at every poll

        def decided(s: dict) -> bool:
            states.extend(
                e["evidence"]["state"] for e in s["events"] if e["type"] == "update" and "state" in e["evidence"]
            )
            return bool(state_is("committed", "rolled-back", "rejected")(s))

        data = wait_status(device, decided, 120, "a verdict")
        activation = activation_of(data)
        assert activation["state"] == "committed", activation
        assert activation["verdict"] == "pass"
        assert activation["figures"]["trial_items"] >= FAST_TRIAL["trial_min_items"]
        assert activation["figures"]["golden_cases"] == 4 and activation["figures"]["golden_failed"] == 0
        assert activation["previous"] == {"name": "digits-det", "version": 1}
        assert serving(data) == 2
        links = links_of(device)
        assert links["active"] == "2", links
        assert links["previous"] is not None and links["previous"].endswith("digits-det-tflite"), links
        for expected in ("installed", "self-testing", "activating", "trial", "committed"):
            assert expected in states, states
        listing = run_cli(device, "models", "list", "--json")
        assert listing.returncode == 0, listing.stderr
        models = json.loads(listing.stdout)["models"]
        assert models == [{"name": "digits-det", "installed": [2], "active": 2, "previous": 1}], models
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output
    # the next start serves the committed release (the active link), not the configured default
    process = start_daemon(device)
    try:
        data = wait_status(device, lambda s: serving(s) is not None, 30, "a model in service")
        assert serving(data) == 2
        assert activation_of(data)["state"] == "committed"
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("breakage", "code"),
    [("golden", "golden"), ("latency", "latency"), ("disagrees", "agreement")],
)
def test_a_release_that_breaks_on_the_device_is_rejected_before_it_serves(
    broker: Broker,
    repo: Repo,
    serve: subprocess.Popen[str],
    device: DaemonDir,
    tmp_path: Path,
    breakage: str,
    code: str,
) -> None:
    if breakage == "golden":
        repo.publish(release_bundle(tmp_path, 2, break_golden=True), activation=FAST_TRIAL, checked=False)
    elif breakage == "latency":
        repo.publish(release_bundle(tmp_path, 2, budget_ms=BROKEN_BUDGET_MS), activation=FAST_TRIAL)
    else:  # another model under the same name: its outputs disagree with the active model's on every item
        bundle = release_bundle(tmp_path, 2, source="digits-cls-onnx")
        repo.publish(bundle, activation={**FAST_TRIAL, "shadow": True, "shadow_items": 15})
    process = start_daemon(device)
    try:
        wait_status(device, lambda s: serving(s) == 1, 30, "the bundled model in service")
        desire(broker, "digits-det", 2, group="g1")
        data = wait_status(
            device, state_is("rejected", "committed", "rolled-back", "trial"), 120, "a verdict"
        )
        activation = activation_of(data)
        assert activation["state"] == "rejected", activation
        assert activation["code"] == code, activation
        assert activation["verdict"] == "fail"
        assert serving(data) == 1, "a rejected release never serves"
        assert links_of(device)["active"] is None
        if breakage == "disagrees":
            assert activation["figures"]["shadow_items"] >= 15
            assert activation["figures"]["agreement"] < 0.9
        rejected = [
            e for e in data["events"] if e["type"] == "update" and e["evidence"].get("state") == "rejected"
        ]
        assert rejected and rejected[-1]["evidence"]["figures"], rejected
    finally:
        code_, output, _ = stop(process)
    assert code_ == 0 and "Traceback" not in output, output


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def test_a_crash_during_trial_counts_a_clean_stop_does_not_and_a_second_crash_rolls_back(
    broker: Broker, repo: Repo, serve: subprocess.Popen[str], device: DaemonDir, tmp_path: Path
) -> None:
    repo.publish(release_bundle(tmp_path, 2), activation={"trial_s": 3600, "trial_min_items": 10})
    process = start_daemon(device)
    try:
        desire(broker, "digits-det", 2, group="g1")
        wait_status(device, state_is("trial"), 120, "the trial")
        code, output, _ = stop(process)  # a clean stop (a planned reboot) is not a crash
        assert code == 0, output
        process = start_daemon(device)
        data = wait_status(
            device, lambda s: serving(s) is not None and state_is("trial")(s), 30, "the trial again"
        )
        assert activation_of(data)["crashes"] == 0 and serving(data) == 2
        kill(process)  # SIGKILL: a crash of the agent, same boot
        process = start_daemon(device)
        data = wait_status(device, lambda s: serving(s) is not None, 30, "a model in service")
        assert activation_of(data)["state"] == "trial" and activation_of(data)["crashes"] == 1
        assert serving(data) == 2, "one crash: the trial goes on"
        kill(process)
        process = start_daemon(device)
        data = wait_status(device, lambda s: serving(s) is not None, 30, "a model in service")
        activation = activation_of(data)
        assert activation["state"] == "rolled-back" and activation["code"] == "crashes", activation
        assert serving(data) == 1, "the second crash rolls back before the release serves again"
        assert links_of(device)["active"].endswith("digits-det-tflite")
        assert (device.state / "models" / "digits-det" / "2" / "manifest.json").is_file()
        # rolled back here: the desired state naming it again does not bring it back
        wait_for(lambda: (status(device) or {}).get("update", {}).get("checks", 0) >= 2, 30, "update checks")
        assert serving(status(device) or {}) == 1
    finally:
        stop(process)


def test_a_crash_during_shadow_goes_back_to_the_gate_and_never_serves_the_candidate(
    broker: Broker, repo: Repo, serve: subprocess.Popen[str], device: DaemonDir, tmp_path: Path
) -> None:
    repo.publish(release_bundle(tmp_path, 2), activation={"shadow": True, "shadow_items": 100000})
    process = start_daemon(device)
    try:
        desire(broker, "digits-det", 2, group="g1")
        wait_status(device, state_is("shadow"), 120, "the shadow run")
        wait_status(
            device,
            lambda s: activation_of(s).get("figures", {}).get("shadow_items", 0) > 0,
            30,
            "compared items",
        )
        kill(process)
        process = start_daemon(device)
        data = wait_status(device, lambda s: serving(s) is not None, 30, "a model in service")
        assert serving(data) == 1, "the candidate never serves before it passes"
        assert links_of(device)["active"] is None
        data = wait_status(device, state_is("shadow"), 60, "the shadow run again, after the gate")
        assert activation_of(data)["crashes"] == 1
    finally:
        stop(process)


def test_rollback_and_activate_by_hand_and_the_remote_rollback_command(
    broker: Broker, repo: Repo, serve: subprocess.Popen[str], device: DaemonDir, tmp_path: Path
) -> None:
    repo.publish(release_bundle(tmp_path, 2), activation=FAST_TRIAL)
    process = start_daemon(device)
    try:
        desire(broker, "digits-det", 2, group="g1")
        wait_status(device, state_is("committed"), 120, "the commit")
        wrong = run_cli(device, "models", "rollback", "7")
        assert wrong.returncode == 1 and "nothing done" in wrong.stderr, wrong.stderr
        done = run_cli(device, "models", "rollback", "--reason", "field test")
        assert done.returncode == 0, done.stderr
        data = wait_status(device, lambda s: serving(s) == 1, 30, "the previous model back")
        assert activation_of(data)["state"] == "rejected" and "field test" in activation_of(data)["reason"]
        again = run_cli(device, "models", "activate", "2")
        assert again.returncode == 0, again.stderr
        wait_status(device, lambda s: serving(s) == 2 and state_is("committed")(s), 120, "v2 committed again")
        reply = fleet_ok(
            *connection(broker, "alice"),
            "cmd",
            "cam-1",
            "rollback",
            json.dumps({"version": 2, "reason": "abort"}),
        )
        assert "rolled back" in reply, reply
        wait_status(device, lambda s: serving(s) == 1, 30, "the previous model back")
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_a_desired_version_equal_to_the_previous_model_puts_it_back_and_rejects_the_newer(
    broker: Broker, repo: Repo, serve: subprocess.Popen[str], device: DaemonDir, tmp_path: Path
) -> None:
    repo.publish(release_bundle(tmp_path, 2), activation={"trial_s": 3600, "trial_min_items": 10})
    process = start_daemon(device)
    try:
        desire(broker, "digits-det", 2, device="cam-1")
        wait_status(device, state_is("trial"), 120, "the trial")
        desire(broker, "digits-det", 1, device="cam-1")  # a rollout's abort: back to what it ran
        data = wait_status(device, lambda s: serving(s) == 1 and state_is("rejected")(s), 60, "v1 back")
        assert activation_of(data)["code"] == "desired"
        assert data["update"]["state"] != "refused", data["update"]
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output
