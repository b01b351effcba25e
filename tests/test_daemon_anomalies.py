"""The daemon in this process on the sensor demo: anomaly episodes reported once, and visible in status and telemetry."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import MODELS, SAMPLES
from daemon_support import DaemonDir, processed, wait_for
from rich.console import Console

from agent.cli.daemon_cmd import render_status
from agent.config import load_config
from agent.daemon.app import Daemon
from agent.events import AgentEvent
from agent.fleet import FleetTopics, FleetView
from agent.fleet.render import row_cells
from agent.link import Telemetry


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


SENSOR_DEMO = f"""
[model]
bundle = "{MODELS / "motion-ae-onnx"}"
[source]
type = "csv"
path = "{SAMPLES / "motion_faulty.csv"}"
window = 50
hop = 5
speed = 20.0
loop = true
[monitor.anomaly]
cooldown_s = 2.0
[monitor.operational]
window_s = 1.0
latency_budget_ms = 0.0001
latency_windows = 1
min_results = 1
"""


def test_the_sensor_demo_in_the_daemon_is_one_model_episode_and_one_latency_episode_seen_everywhere(
    folder: DaemonDir,
) -> None:
    folder.write(SENSOR_DEMO)  # a budget no model meets: every window is over it
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    seen: list[AgentEvent] = []
    daemon.events.subscribe(lambda event: seen.append(event) if event.type == "anomaly" else None)
    thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: daemon.models.pipeline is not None and processed(daemon.status()) >= 3, 30, "running"
        )
        wait_for(lambda: len(daemon.status()["metrics"]["anomaly"]["active"]) == 2, 15, "two active episodes")
        time.sleep(4.0)  # eight passes of the faulty recording, four monitoring windows
        status = daemon.status()
        telemetry = daemon.telemetry()
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
    kinds = [(event.evidence["kind"], event.phase) for event in seen]
    assert kinds.count(("model", "start")) == 1 and kinds.count(("latency", "start")) == 1
    assert not [kind for kind in kinds if kind[1] == "end"]
    assert kinds.count(("model", "ongoing")) <= 4  # cooldown 2 s over about 6 s
    assert kinds.count(("latency", "ongoing")) == 0  # one update a minute at most
    latency = next(event for event in seen if event.evidence["kind"] == "latency")
    assert latency.evidence["bound"] == 0.0001 and latency.evidence["value"] > 0.0001
    # status, the status text, telemetry and the fleet view all say it
    active = {entry["kind"]: entry for entry in status["metrics"]["anomaly"]["active"]}
    assert set(active) == {"model", "latency"}
    assert active["model"]["duration_s"] >= 4.0 and active["model"]["since"] < time.time() - 4.0
    assert status["metrics"]["anomaly"]["episodes"]["results"] == 1
    console = Console(width=160, record=True)
    console.print(render_status(status))
    text = console.export_text()
    assert "anomalies: 2 active" in text and "latency" in text and "score" in text
    assert {entry["kind"] for entry in telemetry["anomaly"]["active"]} == {"model", "latency"}
    view = FleetView(FleetTopics("lab"))
    payload = Telemetry(device="dev-a", time=time.time(), seq=1, uptime_s=5.0, metrics=telemetry)
    assert view.apply_telemetry("dev-a", payload)
    [row] = view.rows()
    assert row.active_anomalies == ("model", "latency")
    assert "ACTIVE model, latency" in row_cells(row, time.time())[7]  # after the drift column
