"""Staged rollouts end to end: four `edge-agent run` processes of one group on a real Mosquitto, `edge-fleet serve`
answering from a signed repository, and `edge-fleet rollout` driving the waves. A good release goes through every
wave; a release broken on the device (its golden gate), one that breaks its latency budget by far, and one whose
outputs disagree with the active model in shadow are each stopped in the first wave and rolled back there, the rest
of the fleet untouched; a wave whose device goes offline is judged by `--abort-offline`, not as a model failure."""

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
    device_toml,
    release_bundle,
    serve_repo,
    serving,
)
from broker import Broker, needs_mosquitto  # noqa: E402
from conftest import ROOT  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

DEVICES = ("cam-1", "cam-2", "cam-3", "cam-4")
WAVES = "25%,50%,100%"


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def serve(broker: Broker, repo: Repo) -> Iterator[subprocess.Popen[str]]:
    yield from serve_repo(broker, repo)


class Fleet:
    """Four agents of group g1, each a real process."""

    def __init__(self, broker: Broker, repo: Repo) -> None:
        self.broker, self.repo = broker, repo
        self.folders = {device: DaemonDir() for device in DEVICES}
        self.processes: dict[str, subprocess.Popen[str]] = {}
        for device, folder in self.folders.items():
            folder.write(device_toml(broker, device, "g1", repo))

    def start(self, device: str) -> None:
        self.processes[device] = start_daemon(self.folders[device])

    def status(self, device: str) -> dict:
        return status(self.folders[device]) or {}

    def close(self) -> list[str]:
        problems = []
        for device, process in self.processes.items():
            if process.poll() is None:
                code, output, _ = stop(process)
                if code != 0 or "Traceback" in output:
                    problems.append(f"{device}: exit {code}\n{output[-3000:]}")
        for folder in self.folders.values():
            folder.cleanup()
        return problems


@pytest.fixture
def fleet(broker: Broker, repo: Repo, serve: subprocess.Popen[str]) -> Iterator[Fleet]:
    made = Fleet(broker, repo)
    for device in DEVICES:
        made.start(device)
    for device in DEVICES:
        wait_status(
            made.folders[device], lambda s: s["link"].get("state") == "connected", 60, f"{device} online"
        )
    yield made
    problems = made.close()
    assert not problems, problems


def rollout(
    broker: Broker, state: Path, *args: str, timeout_s: float = 240, client_id: str = "alice"
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "agent.fleet", *connection(broker, client_id), "rollout", *args]
    return subprocess.run(
        [*command, "--state-dir", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def rollout_status(broker: Broker, state: Path, rollout_id: str) -> dict:
    result = rollout(broker, state, "status", rollout_id, "--json", timeout_s=30, client_id="alice-status")
    assert result.returncode == 0, result.stderr
    data: dict = json.loads(result.stdout)
    return data


def first_wave(broker: Broker, state: Path, rollout_id: str) -> list[str] | None:
    """The first wave's devices once the driver has planned them (None before its record exists)."""
    result = rollout(broker, state, "status", rollout_id, "--json", timeout_s=30, client_id="alice-status")
    if result.returncode != 0:
        return None
    waves = json.loads(result.stdout).get("waves") or []
    return waves[0]["devices"] if waves and waves[0].get("devices") else None


def versions(fleet: Fleet) -> dict[str, int | None]:
    return {device: serving(fleet.status(device)) for device in DEVICES}


def test_a_good_release_goes_through_every_wave_and_broken_ones_stop_in_the_first(
    broker: Broker, repo: Repo, fleet: Fleet, tmp_path: Path
) -> None:
    state = tmp_path / "operator"
    repo.publish(release_bundle(tmp_path, 2), activation=FAST_TRIAL)
    done = rollout(broker, state, "start", "digits-det:2", "--group", "g1", "--waves", WAVES, "--soak", "0s")
    assert done.returncode == 0, (done.stdout, done.stderr)
    record = rollout_status(broker, state, "digits-det-v2-g1")
    assert record["state"] == "completed", record
    assert versions(fleet) == dict.fromkeys(DEVICES, 2)
    for device in DEVICES:
        assert activation_of(fleet.status(device))["state"] == "committed"

    breakages = [
        (
            3,
            "golden",
            {"bundle": release_bundle(tmp_path, 3, break_golden=True), "checked": False},
            FAST_TRIAL,
        ),
        (4, "latency", {"bundle": release_bundle(tmp_path, 4, budget_ms=BROKEN_BUDGET_MS)}, FAST_TRIAL),
        (
            5,
            "agreement",
            {"bundle": release_bundle(tmp_path, 5, source="digits-cls-onnx")},
            {**FAST_TRIAL, "shadow": True, "shadow_items": 15},
        ),
    ]
    for version, code, made, activation in breakages:
        repo.publish(made["bundle"], activation=activation, checked=made.get("checked", True))
        before = versions(fleet)
        result = rollout(
            broker, state, "start", f"digits-det:{version}", "--group", "g1", "--waves", WAVES, "--soak", "0s"
        )
        assert result.returncode == 3, (code, result.stdout, result.stderr)
        record = rollout_status(broker, state, f"digits-det-v{version}-g1")
        assert record["state"] == "aborted", record
        first = record["waves"][0]["devices"]
        assert len(first) == 1, record
        (victim,) = first
        data = wait_status(
            fleet.folders[victim],
            lambda s: activation_of(s).get("state") == "rejected",
            60,
            f"{victim} rejected",
        )
        assert activation_of(data)["release"]["version"] == version
        assert activation_of(data)["code"] == code, activation_of(data)
        assert versions(fleet) == before == dict.fromkeys(DEVICES, 2), "the rest of the fleet untouched"
        for device in DEVICES:
            if device != victim:
                assert activation_of(fleet.status(device))["release"]["version"] < version


def test_a_device_going_offline_in_a_wave_is_judged_by_abort_offline_not_as_a_model_failure(
    broker: Broker, repo: Repo, fleet: Fleet, tmp_path: Path
) -> None:
    state = tmp_path / "operator"
    repo.publish(release_bundle(tmp_path, 2), activation=FAST_TRIAL)
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            *connection(broker, "alice"),
            "rollout",
            "start",
            "digits-det:2",
            "--group",
            "g1",
            "--waves",
            WAVES,
            "--soak",
            "60s",
            "--abort-offline",
            "10%",
            "--state-dir",
            str(state),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        (victim,) = wait_for(
            lambda: first_wave(broker, state, "digits-det-v2-g1"), 60, "the first wave chosen"
        )
        wait_status(
            fleet.folders[victim], lambda s: activation_of(s).get("state") == "committed", 120, "the commit"
        )
        fleet.processes[victim].send_signal(signal.SIGKILL)  # its last will says offline, during the soak
        fleet.processes[victim].wait(10)
        output, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 3, output
    record = rollout_status(broker, state, "digits-det-v2-g1")
    assert record["state"] == "aborted" and "offline" in json.dumps(record).lower(), record
    others = [device for device in DEVICES if device != victim]
    assert all(serving(fleet.status(device)) == 1 for device in others), "the rest of the fleet untouched"
    fleet.start(
        victim
    )  # back online: the abort's desired state puts v1 back, no rollback counted as a failure
    data = wait_status(fleet.folders[victim], lambda s: serving(s) == 1, 60, "v1 back on the device")
    assert activation_of(data)["state"] == "rejected" and activation_of(data)["code"] in (
        "desired",
        "rollback",
    )
