"""The device's state files are owner-only whatever umask the agent was started with; the control socket stays 0660."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import ROOT, DaemonDir, stop, wait_for, wait_status

pytest.register_assert_rewrite("broker")
from broker import Broker, needs_mosquitto  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_state_files_are_owner_only_even_under_a_permissive_umask(broker: Broker, folder: DaemonDir) -> None:
    folder.write(
        '[device]\nid = "cam-9"\n'
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        '[monitor.anomaly]\nlabels = ["2"]\nmin_score = 0.5\ncooldown_s = 1\n'
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(folder.config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: os.umask(0o022),  # what a shell or a careless unit gives
    )
    try:
        wait_status(folder, lambda s: s["link"].get("state") == "connected", 30, "the link connected")
        snapshots = folder.state / "snapshots"
        wait_for(lambda: snapshots.is_dir() and any(snapshots.glob("*.jpg")), 60, "an anomaly snapshot")
        wait_for(lambda: (folder.state / "link-birth.json").exists(), 10, "the birth number recorded")
    finally:
        code, output, _ = stop(process)
    assert code == 0, output
    assert mode(folder.state) == 0o700
    made = [path for path in folder.state.rglob("*")]
    files = [path for path in made if path.is_file()]
    names = {path.name for path in files}
    assert {"link-birth.json", "outbox.sqlite"} <= names, names
    wrong = {str(path.relative_to(folder.state)): oct(mode(path)) for path in files if mode(path) != 0o600}
    assert not wrong, f"state files readable by others: {wrong}"
    folders = {str(p.relative_to(folder.state)): oct(mode(p)) for p in made if p.is_dir() and mode(p) != 0o700}
    assert not folders, f"state folders open to others: {folders}"


def test_the_control_socket_stays_group_accessible_for_technicians(folder: DaemonDir) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(folder.config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: os.umask(0o022),
    )
    try:
        wait_status(folder, lambda s: True, 30, "the daemon answering")
        assert mode(folder.socket) == 0o660
    finally:
        stop(process)
