"""The daemon in this process on a camera recording that darkens part way: a site baseline learnt, saved, reused
after a restart and reset by command; one drift alarm, only after the change, seen in status, telemetry and the fleet
view."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import cv2
import pytest
from conftest import MODELS, ROOT
from daemon_support import DaemonDir, processed, wait_for
from rich.console import Console

from agent.cli.daemon_cmd import render_status
from agent.config import load_config
from agent.daemon.app import Daemon
from agent.daemon.control import request
from agent.events import AgentEvent
from agent.fleet import FleetTopics, FleetView
from agent.fleet.render import row_cells
from agent.link import Telemetry

sys.path.insert(0, str(ROOT / "scripts"))
import drift_streams

pytest.register_assert_rewrite("mounts")
from mounts import Mounts, fill  # noqa: E402

pytest_plugins = ["mounts"]

NORMAL, DARK, FPS = 480, 400, 120


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


def _recording(path: Path) -> Path:
    """An MJPG .avi of the fixed-camera stream: NORMAL frames, then NORMAL..NORMAL+DARK at 70 % of the light."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (320, 240))
    assert writer.isOpened()
    stream = drift_streams.camera(seed=5, shift=drift_streams.SHIFTS["lighting"][1], shift_at=NORMAL)
    for frame in islice(stream, NORMAL + DARK):
        writer.write(frame)
    writer.release()
    return path


def _config(video: Path, loop: bool = False) -> str:
    return f"""
[model]
bundle = "{MODELS / "digits-det-tflite"}"
[source]
type = "video"
path = "{video}"
rate = {FPS}
loop = {"true" if loop else "false"}
[monitor.drift]
every_n = 24
input_every = 4
baseline_items = 240
ert_items = 200000
"""


def _run(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    thread.start()
    return thread


def test_a_darkening_scene_raises_one_drift_alarm_against_the_learnt_baseline_and_a_restart_reuses_it(
    folder: DaemonDir,
) -> None:
    video = _recording(folder.root / "scene.avi")
    folder.write(_config(video))
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    seen: list[AgentEvent] = []
    daemon.events.subscribe(lambda event: seen.append(event) if event.type == "drift" else None)
    thread = _run(daemon)
    try:
        wait_for(lambda: daemon.models.pipeline is not None, 30, "a model in service")
        wait_for(
            lambda: daemon.status()["metrics"]["drift"]["state"] == "watching", 30, "a calibrated baseline"
        )
        watching_at = processed(daemon.status())
        wait_for(
            lambda: any(e.phase == "start" and e.severity == "warning" for e in seen), 30, "a drift alarm"
        )
        alarm = next(e for e in seen if e.phase == "start" and e.severity == "warning")
        # the count of detections may cross its threshold a window before the brightness does (the input statistics
        # are sampled every 4th item): the darkening must show in the brightness by the alarm or in a window after it
        brightness: list[object] = []

        def _brightness_seen() -> bool:
            last = daemon.status()["metrics"]["drift"]["last"] or {}
            if "input.brightness" in last.get("exceeding", ()):
                brightness.append(last)
            return "input.brightness" in alarm.evidence["exceeding"] or bool(brightness)

        wait_for(_brightness_seen, 30, "the brightness among the exceeding statistics")
        status = daemon.status()
        telemetry = daemon.telemetry()
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
    assert watching_at < NORMAL
    learnt = [e for e in seen if e.message.startswith("site baseline learnt")]
    assert len(learnt) == 1 and learnt[0].evidence["ert_items"] == 200000
    assert alarm.evidence["against"] == "baseline"
    assert alarm.evidence["every_n"] == 24 and alarm.evidence["ert_items"] == 200000
    assert alarm.evidence["delta"] is not None or alarm.evidence["statistic"] != "input.brightness"
    assert len([e for e in seen if e.phase == "start" and e.severity == "warning"]) == 1
    drift = status["metrics"]["drift"]
    assert drift["drifting"] and drift["state"] == "watching" and drift["calibration"]["ert_items"] == 200000
    assert telemetry["drift"]["drifting"]
    text = Console(width=200, record=True)
    text.print(render_status(status))
    assert "DRIFT" in text.export_text()
    view = FleetView(FleetTopics("acme"))
    assert view.apply_telemetry(
        "cam-01", Telemetry(device="cam-01", time=1.0, seq=1, uptime_s=1.0, metrics=telemetry)
    )
    assert view.devices["cam-01"].drift is not None and view.devices["cam-01"].drift.startswith("DRIFT")
    stored = sorted(p.name for p in (folder.state / "drift").iterdir())
    assert stored == ["digits-det-v1.json", "digits-det-v1.npz"]

    # a restart on the same state directory watches at once, with the stored thresholds, and a reset relearns
    folder.write(_config(video, loop=True))
    again = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = _run(again)
    try:
        wait_for(lambda: again.models.pipeline is not None and processed(again.status()) >= 1, 30, "serving")
        first = again.status()["metrics"]["drift"]
        reply = request(folder.socket, "reset-baseline")
        wait_for(lambda: again.status()["metrics"]["drift"]["state"] == "learning", 10, "learning again")
    finally:
        again.request_stop()
        thread.join(10)
    assert first["state"] == "watching" and first["baseline"]["items"] == learnt[0].evidence["baseline_items"]
    assert reply == {"model": "digits-det", "version": 1, "removed_stored": True, "learning": True}
    assert not (folder.state / "drift" / "digits-det-v1.npz").exists()


def test_the_fleet_view_shows_the_drift_state_of_a_device() -> None:
    view = FleetView(FleetTopics("acme"))
    for number, (state, expected) in enumerate(
        (
            (
                {"state": "learning", "drifting": False, "baseline": {"items": 600, "of": 3000}},
                "learning 20%",
            ),
            (
                {"state": "watching", "drifting": True, "last": {"worst": "input.sharpness"}},
                "DRIFT input.sharpness",
            ),
            ({"state": "watching", "drifting": False}, "ok"),
        )
    ):
        telemetry = Telemetry(
            device="cam-01", time=1.0 + number, seq=number, uptime_s=1.0, metrics={"drift": state}
        )
        assert view.apply_telemetry("cam-01", telemetry)
        row = view.devices["cam-01"]
        assert row.drift == expected
        assert expected in " ".join(row_cells(row, 2.0))


def test_a_corrupt_stored_baseline_and_a_full_disk_are_reported_and_the_daemon_learns_and_watches_anyway(
    folder: DaemonDir, mounts: Mounts
) -> None:
    video = _recording(folder.root / "scene.avi")
    folder.write(_config(video))
    drift_dir = mounts.tmpfs(folder.state / "drift", 64 * 1024)
    (drift_dir / "digits-det-v1.npz").write_bytes(b"not an npz archive")  # a torn write from an old version
    fill(drift_dir)
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    seen: list[AgentEvent] = []
    daemon.events.subscribe(lambda event: seen.append(event) if event.type == "drift" else None)
    thread = _run(daemon)
    try:
        wait_for(lambda: daemon.models.pipeline is not None, 30, "a model in service")
        wait_for(lambda: daemon.status()["metrics"]["drift"]["state"] == "watching", 30, "a calibrated baseline")
        wait_for(lambda: any(e.phase == "start" and e.severity == "warning" for e in seen), 30, "a drift alarm")
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
    learnt = [e for e in seen if e.message.startswith("site baseline learnt")]
    assert len(learnt) == 1 and "kept in memory only" in learnt[0].message  # the disk is full: said, not fatal
    assert not (drift_dir / "digits-det-v1.json").exists()
