"""Signed model delivery end to end, every part real: `edge-fleet keys|trust|bundle|release` sign a release, `edge-fleet
serve` answers over a real Mosquitto, `edge-fleet desire` sets a group's retained desired state, and `edge-agent run`
daemons verify (python-tuf), fetch the blocks over MQTT, and install; a device of another group refuses the release
it is not meant for, and a broker restart in the middle of the downloads does not stop them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import DaemonDir, start_daemon, stop, wait_status

pytest.register_assert_rewrite("broker", "fleet_store")
from broker import Broker, needs_mosquitto  # noqa: E402
from conftest import MODELS, ROOT  # noqa: E402
from fleet_store import run_fleet  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

ROLES = ("root", "targets", "snapshot", "timestamp")
FLEET = "f1"


def fleet_ok(*args: str | Path) -> str:
    result = run_fleet(*args)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A TUF repository with digits-det v2 released for group g1 of fleet f1 (v1 is what the devices run)."""
    keys, store = tmp_path / "keys", tmp_path / "repo"
    for role in ROLES:
        fleet_ok("keys", "new", role, "--out", keys)
    init: list[str | Path] = ["trust", "init", "--repo", store, "--root-threshold", "1"]
    for role in ROLES:
        init += [f"--{role}-key", keys / f"{role}.pub.json", "--sign", f"{role}={keys / f'{role}.key'}"]
    fleet_ok(*init)
    bundle = tmp_path / "digits-det-v2"
    shutil.copytree(MODELS / "digits-det-onnx", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = 2
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    fleet_ok("bundle", "pack", bundle, "-o", tmp_path / "v2.tar")
    signing = [arg for role in ROLES[1:] for arg in ("--sign", f"{role}={keys / f'{role}.key'}")]
    fleet_ok(
        "release",
        "publish",
        tmp_path / "v2.tar",
        "--repo",
        store,
        "--fleet",
        FLEET,
        "--group",
        "g1",
        *signing,
    )
    return store


def connection(broker: Broker, client_id: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port), "--fleet", FLEET, "--client-id", client_id]


@pytest.fixture
def serve(broker: Broker, repo: Path) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.fleet", *connection(broker, "repo-1"), "serve", "--store", str(repo)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def device_config(broker: Broker, device: str, group: str, repo: Path) -> str:
    return (
        f'[device]\nid = "{device}"\nfleet = "{FLEET}"\ngroup = "{group}"\n'
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        "[link.backoff]\ninitial_s = 0.2\nmax_s = 1.0\n"
        f'[ota]\nenabled = true\ntrust_root = "{repo / "metadata" / "1.root.json"}"\ncheck_interval_s = 2\n'
    )


@pytest.fixture
def devices() -> Iterator[list[DaemonDir]]:
    made = [DaemonDir() for _ in range(3)]
    yield made
    for folder in made:
        folder.cleanup()


def update_of(status: dict) -> dict:
    return status.get("update") or {}


def desire(broker: Broker, group: str, model: str, version: int) -> None:
    fleet_ok(*connection(broker, "alice"), "desire", "--group", group, model, str(version))


def test_two_devices_of_the_group_install_the_signed_release_and_one_of_another_group_refuses_it(
    broker: Broker, repo: Path, serve: subprocess.Popen[str], devices: list[DaemonDir]
) -> None:
    plan = [("cam-1", "g1"), ("cam-2", "g1"), ("cam-3", "g2")]
    processes = []
    for folder, (device, group) in zip(devices, plan, strict=True):
        folder.write(device_config(broker, device, group, repo))
        processes.append(start_daemon(folder))
    try:
        for folder in devices:
            wait_status(folder, lambda s: s["link"].get("state") == "connected", 30, "the link connected")
        desire(broker, "g1", "digits-det", 2)
        desire(broker, "g2", "digits-det", 2)  # meant for g1 only: the signed targets say so
        for folder in devices[:2]:
            data = wait_status(folder, lambda s: update_of(s).get("state") == "installed", 90, "the install")
            assert data["update"]["release"] == {"name": "digits-det", "version": 2}
            installed = folder.state / "models" / "digits-det" / "2"
            assert (installed / "manifest.json").is_file()
            assert not installed.stat().st_mode & 0o222, "an installed bundle is read-only"
            assert json.loads((installed / "manifest.json").read_text())["version"] == 2
            assert data["model"]["version"] == 1, "installing never touches the model in service"
        refused = wait_status(devices[2], lambda s: update_of(s).get("state") == "refused", 60, "the refusal")
        assert "group" in (refused["update"]["reason"] or ""), refused["update"]
        assert not (devices[2].state / "models" / "digits-det" / "2").exists()
        events = [e for e in refused["events"] if e["type"] == "update"]
        assert any("group" in e["message"] for e in events), events
    finally:
        for process in processes:
            code, output, _ = stop(process)
            assert code == 0 and "Traceback" not in output, output


def test_a_broker_restart_in_the_middle_of_a_download_does_not_stop_it(
    broker: Broker, repo: Path, devices: list[DaemonDir]
) -> None:
    slow = subprocess.Popen(  # one block a second: the download takes several seconds
        [
            sys.executable,
            "-m",
            "agent.fleet",
            *connection(broker, "repo-1"),
            "serve",
            "--store",
            str(repo),
            "--rate",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    folder = devices[0]
    folder.write(device_config(broker, "cam-1", "g1", repo) + "request_timeout_s = 3\n")
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: s["link"].get("state") == "connected", 30, "the link connected")
        desire(broker, "g1", "digits-det", 2)
        wait_status(
            folder, lambda s: update_of(s).get("state") == "downloading", 60, "the download under way"
        )
        broker.stop()
        wait_status(
            folder, lambda s: s["link"].get("state") != "connected", 15, "the link seeing the broker gone"
        )
        broker.start()
        data = wait_status(folder, lambda s: update_of(s).get("state") == "installed", 120, "the install")
        assert data["update"]["release"] == {"name": "digits-det", "version": 2}
        assert (folder.state / "models" / "digits-det" / "2" / "manifest.json").is_file()
    finally:
        code, output, _ = stop(process)
        slow.terminate()
        slow.wait(10)
    assert code == 0 and "Traceback" not in output, output


def slow_serve(broker: Broker, repo: Path, rate: str = "1") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            *connection(broker, "repo-1"),
            "serve",
            "--store",
            str(repo),
            "--rate",
            rate,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_sigkilled_agent_resumes_its_download_after_the_restart_and_installs_a_whole_bundle(
    broker: Broker, repo: Path, devices: list[DaemonDir]
) -> None:
    server = slow_serve(broker, repo)
    folder = devices[0]
    folder.write(device_config(broker, "cam-1", "g1", repo) + "request_timeout_s = 3\n")
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: s["link"].get("state") == "connected", 30, "the link connected")
        desire(broker, "g1", "digits-det", 2)
        wait_status(
            folder, lambda s: update_of(s).get("state") == "downloading", 60, "the download under way"
        )
        process.kill()  # SIGKILL in the middle of the download: no clean stop, no flush
        process.wait(10)
        assert not (folder.state / "models" / "digits-det" / "2").exists()
        process = start_daemon(folder)
        data = wait_status(folder, lambda s: update_of(s).get("state") == "installed", 120, "the install")
        assert data["update"]["release"] == {"name": "digits-det", "version": 2}
        versions = sorted(p.name for p in (folder.state / "models" / "digits-det").iterdir())
        assert versions == ["2", "archives"], versions  # nothing half-done beside the whole bundle
    finally:
        code, output, _ = stop(process)
        server.terminate()
        server.wait(10)
    assert code == 0 and "Traceback" not in output, output


def test_a_tampered_archive_in_the_store_is_never_installed_over_mqtt(
    broker: Broker, repo: Path, serve: subprocess.Popen[str], devices: list[DaemonDir]
) -> None:
    (stored,) = (repo / "targets" / "bundles" / "digits-det").glob("*.2.tar")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the signed archive changed on the repository's disk
    stored.write_bytes(bytes(data))
    folder = devices[0]
    folder.write(device_config(broker, "cam-1", "g1", repo) + "request_timeout_s = 2\nmax_tries = 2\n")
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: s["link"].get("state") == "connected", 30, "the link connected")
        desire(broker, "g1", "digits-det", 2)
        data_ = wait_status(
            folder,
            lambda s: update_of(s).get("state") in ("failed", "refused"),
            90,
            "the tampered release stopped",
        )
        assert not (folder.state / "models" / "digits-det" / "2").exists()
        assert data_["model"]["version"] == 1, "the model in service is untouched"
        assert any(e["type"] == "update" and e["severity"] in ("warning", "error") for e in data_["events"])
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output
