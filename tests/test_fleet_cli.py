"""`edge-fleet` as a real subprocess against a real Mosquitto and real device links: the status table (online, offline
by clean stop and by last will, stale births), the event stream (de-duplicated by id), commands with MQTT 5 response
topics under the shipped ACL, and one clear line for every failure (usage, no reply, connection, password, TLS)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.fleet import FleetTopics, FleetView
from agent.link import Event, Link, ModelRef, SnapshotArgs, Status, Telemetry
from agent.link.mqtt import InboundMessage

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    Broker,
    BrokerOptions,
    MosquittoSub,
    PahoPeer,
    free_port,
    kill_process,
    link_config,
    needs_mosquitto,
    shipped_acl_broker,
    start_link_agent,
)

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

SHIPPED = ROOT / "firmware-config" / "mosquitto"
DEV_A = f"edge/{FLEET}/devices/dev-a"
METRICS = {
    "rates": {"processed_per_s": 29.5},
    "latency_ms": {"total": {"p95": 41.2}, "invoke": {"p95": 30.0}},
    "counters": {"dropped": 7},
}


# -- helpers ----------------------------------------------------------------------------------------------------------


def fleet_env(**extra: str) -> dict[str, str]:
    """This process's environment without any EDGE_FLEET_* setting, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGE_FLEET_")}
    return env | extra


def on(broker: Broker, *args: str) -> list[str]:
    """Connection flags for `broker` (fleet f1) followed by `args`."""
    return ["--host", broker.host, "--port", str(broker.port), "--fleet", FLEET, *args]


def run_fleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `edge-fleet ARGS` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env or fleet_env(),
    )


def start_fleet(*args: str) -> subprocess.Popen[str]:
    """Starts `edge-fleet ARGS` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent.fleet.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=fleet_env(),
    )


def finish(process: subprocess.Popen[str], timeout_s: float = 30.0) -> tuple[int, str, str]:
    """Waits for a background edge-fleet; its exit status, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_process(process)
        raise
    return process.returncode, out, err


def wait_subscribed(broker: Broker, client_id: str, process: subprocess.Popen[str], times: int = 1) -> None:
    """Waits until the broker has acknowledged `client_id`'s subscription `times` times (so live messages reach it)."""
    deadline = time.monotonic() + 15
    while broker.log().count(f"Sending SUBACK to {client_id}") < times:
        if process.poll() is not None or time.monotonic() > deadline:
            code, out, err = finish(process)
            raise AssertionError(f"edge-fleet never subscribed ({code}):\n{out}\n{err}")
        time.sleep(0.05)


def assert_fleet_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """Exit `status`, one `edge-fleet: error:` line holding every fragment, and no traceback; returns the line."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-fleet: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr
    return lines[0]


def status_json(broker: Broker, *extra: str) -> dict[str, Any]:
    """`edge-fleet status --once --json` for 1 s; the device rows by id."""
    result = run_fleet(*on(broker, "status", "--once", "--json", "--timeout", "1", *extra))
    assert result.returncode == 0, result.stderr
    return {row["device"]: row for row in json.loads(result.stdout)["devices"]}


def as_operator(broker: Broker, certs: Path, *args: str, identity: str = "operator") -> list[str]:
    """Flags for the shipped broker: mutual TLS with an operator's certificate (`operator`: every fleet)."""
    tls = ["--ca-file", str(certs / "ca.crt"), "--cert-file", str(certs / f"{identity}.crt")]
    return on(broker, *tls, "--key-file", str(certs / f"{identity}.key"), *args)


@pytest.fixture
def shipped(
    broker_factory: Callable[..., Broker], certs: Path, links: Callable[..., Link]
) -> tuple[Broker, Link]:
    """The shipped broker set-up and a connected dev-a (mutual TLS) that also answers `snapshot` with a real JPEG."""
    broker = shipped_acl_broker(broker_factory, certs)
    link = links(link_config(broker, device="dev-a"), start=False)
    image = np.zeros((48, 64, 3), np.uint8)
    image[8:40, 16:48] = (0, 200, 255)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()

    def snapshot(args: SnapshotArgs) -> dict[str, Any]:
        assert args.max_bytes == 100000
        return {"format": "jpeg", "width": 64, "height": 48, "jpeg_base64": base64.b64encode(jpeg).decode()}

    link.router.register("snapshot", snapshot, SnapshotArgs)
    link.start()
    assert link.wait_connected(10), link.state()
    return broker, link


# -- status -----------------------------------------------------------------------------------------------------------


def test_status_once_json_shows_an_online_device_with_model_fps_latency_drops_and_last_anomaly(
    broker: Broker, links: Callable[..., Link]
) -> None:
    link = links(link_config(broker), start=False)
    link.set_status(model=ModelRef(name="digits", version=3), sources={"camera": "running"})
    link.start()
    assert link.wait_connected(10)
    process = start_fleet(*on(broker, "status", "--once", "--json", "--timeout", "2", "--client-id", "op-1"))
    wait_subscribed(broker, "op-1", process)
    # Telemetry and events are not retained: the device sends them while the operator looks.
    link.publish_event(Event(type="anomaly", severity="warning", message="score 0.93 above 0.8"))
    link.publish_event(Event(type="drift", severity="info", message="input drift"))  # not an anomaly
    link.publish_telemetry(METRICS)
    code, out, err = finish(process)
    assert code == 0, err
    view = json.loads(out)
    assert view["fleet"] == FLEET and view["prefix"] == f"edge/{FLEET}/"
    [row] = view["devices"]
    assert row["device"] == "dev-a" and row["state"] == "online" and row["birth"] == 1
    assert row["model"] == {"name": "digits", "version": 3} and row["sources"] == {"camera": "running"}
    assert (row["fps"], row["latency_p95_ms"], row["dropped"]) == (29.5, 41.2, 7)
    assert row["last_anomaly"]["message"] == "score 0.93 above 0.8"
    assert 0 <= row["last_seen_age_s"] < 10


def test_status_table_shows_a_cleanly_stopped_device_offline(
    broker: Broker, links: Callable[..., Link]
) -> None:
    link = links(link_config(broker), start=False)
    link.set_status(model=ModelRef(name="digits", version=3))
    link.start()
    assert link.wait_connected(10)
    link.stop()  # publishes the retained offline status (reason stopped) itself
    result = run_fleet(*on(broker, "status", "--once", "--timeout", "1"))
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if "dev-a" in line]
    assert "offline #1 (stopped)" in row and "digits v3" in row
    assert "1 device, 0 online" in result.stdout


def test_status_shows_a_killed_device_offline_by_its_last_will(
    broker: Broker, observers: Callable[..., MosquittoSub], tmp_path: Path
) -> None:
    agent = start_link_agent(broker, tmp_path / "state")
    try:
        watcher = observers(broker, [f"{DEV_A}/status"])
        kill_process(agent)  # SIGKILL: no clean stop, the broker publishes the will
        watcher.wait_for(lambda m: b'"offline"' in m.payload)
    finally:
        kill_process(agent)
    row = status_json(broker)["dev-a"]
    assert (row["state"], row["reason"], row["birth"]) == ("offline", "lost", 1)


def test_status_ignores_a_stale_birth_from_an_old_session(
    broker: Broker, links: Callable[..., Link], peers: Callable[..., PahoPeer], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    first = links(link_config(broker), state_dir=state_dir)
    assert first.wait_connected(10)
    first.stop()
    second = links(link_config(broker), state_dir=state_dir)  # birth 2, retained online
    assert second.wait_connected(10)
    process = start_fleet(
        *on(broker, "status", "--once", "--json", "--timeout", "1.5", "--client-id", "op-2")
    )
    wait_subscribed(broker, "op-2", process)
    late = peers(broker, "late")  # a late copy of birth 1's will, and of its online status
    for state in ("offline", "online"):
        stale = Status(
            state=state, device="dev-a", birth=1, time=time.time(), agent_version="0.1.0", reason="lost"
        )
        late.publish(f"{DEV_A}/status", stale.to_bytes())
    code, out, err = finish(process)
    assert code == 0, err
    view = json.loads(out)
    [row] = view["devices"]
    assert (row["state"], row["birth"], row["reason"]) == ("online", 2, None)
    assert view["ignored"]["stale"] == 2


def message(topic: str, payload: bytes) -> InboundMessage:
    return InboundMessage(topic=topic, payload=payload)


def test_view_keeps_the_highest_birth_and_offline_is_final_within_a_birth() -> None:
    view = FleetView(FleetTopics(FLEET))

    def status(state: str, birth: int, reason: str | None = None) -> bool:
        payload = Status(
            state=state, device="dev-a", birth=birth, time=100.0 + birth, agent_version="1", reason=reason
        )
        return view.apply(message(f"{DEV_A}/status", payload.to_bytes()))

    assert status("online", 3)
    assert status("online", 3)  # republished (model changed): same birth, still online
    assert not status("offline", 2, "lost")  # older birth: stale
    assert status("offline", 3, "lost")  # the will of birth 3 ends it
    assert not status("online", 3)  # a late online of birth 3 cannot revive it
    assert status("online", 4)
    row = view.devices["dev-a"]
    assert (row.state, row.birth, view.stale) == ("online", 4, 2)


def test_view_ignores_older_telemetry_forged_devices_and_garbage() -> None:
    view = FleetView(FleetTopics(FLEET))
    new = Telemetry(device="dev-a", time=200.0, seq=2, uptime_s=1, metrics=METRICS)
    old = Telemetry(
        device="dev-a", time=100.0, seq=1, uptime_s=1, metrics={"rates": {"processed_per_s": 1.0}}
    )
    assert view.apply(message(f"{DEV_A}/telemetry", new.to_bytes()))
    assert not view.apply(message(f"{DEV_A}/telemetry", old.to_bytes()))
    other = Telemetry(device="dev-b", time=300.0, seq=3, uptime_s=1, metrics={})
    assert not view.apply(message(f"{DEV_A}/telemetry", other.to_bytes()))  # names another device
    assert not view.apply(message(f"{DEV_A}/events", b"not json"))
    assert not view.apply(message("elsewhere/devices/dev-a/status", b"{}"))
    row = view.devices["dev-a"]
    assert (row.fps, row.latency_p95_ms, row.dropped, row.state) == (29.5, 41.2, 7, "unknown")
    assert view.invalid == 2


# -- watch ------------------------------------------------------------------------------------------------------------


def test_watch_prints_each_event_once_when_the_outbox_resends_it(
    broker: Broker, peers: Callable[..., PahoPeer]
) -> None:
    process = start_fleet(
        *on(broker, "watch", "--json", "--count", "3", "--timeout", "20", "--client-id", "op-3")
    )
    wait_subscribed(broker, "op-3", process)
    device = peers(broker, "dev-a")
    events = [Event(type="anomaly", device="dev-a", message=f"event {n}") for n in range(3)]
    for event in (events[0], events[0], events[1], events[0], events[1], events[2]):  # at least once
        device.publish(f"{DEV_A}/events", event.to_bytes())
    code, out, err = finish(process)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [event.id for event in events]


def test_watch_one_device_and_type_prints_one_line_per_event(
    broker: Broker, links: Callable[..., Link], peers: Callable[..., PahoPeer]
) -> None:
    link = links(link_config(broker))
    assert link.wait_connected(10)
    process = start_fleet(
        *on(broker, "watch", "dev-a", "--type", "anomaly", "--count", "1", "--client-id", "op-4")
    )
    wait_subscribed(broker, "op-4", process)
    other = peers(broker, "dev-b")
    other.publish(
        f"edge/{FLEET}/devices/dev-b/events", Event(type="anomaly", message="not this device").to_bytes()
    )
    link.publish_event(Event(type="drift", severity="warning", message="not this type"))
    link.publish_event(Event(type="anomaly", severity="critical", message="score 0.97\nabove 0.8"))
    code, out, err = finish(process)
    assert code == 0, err
    [line] = out.splitlines()
    assert line.endswith("dev-a  anomaly  critical  score 0.97 above 0.8"), line


def test_watch_survives_a_broker_restart(broker: Broker, peers: Callable[..., PahoPeer]) -> None:
    process = start_fleet(
        *on(broker, "watch", "--json", "--count", "2", "--timeout", "20", "--client-id", "op-5")
    )
    wait_subscribed(broker, "op-5", process)
    before, after = Event(type="error", message="before"), Event(type="error", message="after")
    device = peers(broker, "dev-a")
    device.publish(f"{DEV_A}/events", before.to_bytes())
    device.close()
    broker.stop()
    broker.start()
    wait_subscribed(broker, "op-5", process, times=2)  # reconnected, subscriptions renewed
    peers(broker, "dev-a-again").publish(f"{DEV_A}/events", after.to_bytes())
    code, out, err = finish(process)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [before.id, after.id]
    assert "connection lost" in err and f"reconnected to {broker.host}:{broker.port}" in err


def test_watch_that_times_out_before_its_count_says_so(broker: Broker) -> None:
    result = run_fleet(*on(broker, "watch", "--count", "2", "--timeout", "0.5"))
    assert_fleet_error(result, 1, "timed out after 0.5 s with 0 of 2 events")


# -- cmd --------------------------------------------------------------------------------------------------------------


def test_cmd_ping_round_trip_under_the_shipped_acl(shipped: tuple[Broker, Link], certs: Path) -> None:
    broker, link = shipped
    result = run_fleet(*as_operator(broker, certs, "cmd", "dev-a", "ping", "--json"))
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "ok" and reply["command"] == "ping" and reply["data"]["pong"] is True
    assert reply["correlation"]  # our token, echoed
    result = run_fleet(*as_operator(broker, certs, "cmd", "dev-a", "ping"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pong"] is True
    assert "Sending PUBLISH to operator" in broker.log() and f"{DEV_A}/reply/" in broker.log()
    assert link.router.stats()["ok"] == 2


def test_two_operator_tools_with_their_own_identities_run_side_by_side(
    shipped: tuple[Broker, Link], certs: Path, observers: Callable[..., MosquittoSub]
) -> None:
    broker, link = shipped
    # A watching tool (operator-watch) stays connected while another (operator) sends commands and gets answers.
    watcher = observers(broker, [f"edge/{FLEET}/#"], cert="operator-watch")
    for _ in range(2):
        result = run_fleet(*as_operator(broker, certs, "cmd", "dev-a", "ping", "--json"))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["data"]["pong"] is True
    seen = watcher.collect(quiet_s=0.5)
    assert len([m for m in seen if m.topic == f"{DEV_A}/cmd/ping"]) == 2
    assert len([m for m in seen if m.topic.startswith(f"{DEV_A}/reply/") and b'"pong"' in m.payload]) == 2
    # An operator limited to fleet f1 may command it too, at the same time.
    result = run_fleet(*as_operator(broker, certs, "cmd", "dev-a", "ping", identity="ops-f1"))
    assert result.returncode == 0, result.stderr
    assert watcher.process.poll() is None, "the watching tool was disconnected"
    assert "already connected" not in broker.log()
    assert link.router.stats()["ok"] == 3


def test_cmd_snapshot_out_writes_the_jpeg(shipped: tuple[Broker, Link], certs: Path, tmp_path: Path) -> None:
    broker, _link = shipped
    target = tmp_path / "shot.jpg"
    args = ["cmd", "dev-a", "snapshot", '{"max_bytes": 100000}', "--out", str(target)]
    result = run_fleet(*as_operator(broker, certs, *args))
    assert result.returncode == 0, result.stderr
    image = cv2.imdecode(np.frombuffer(target.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (48, 64, 3)
    data = json.loads(result.stdout)
    assert data["width"] == 64 and f"written to {target}" in data["jpeg_base64"]


def test_cmd_unknown_command_exits_1_with_the_agents_reason(
    shipped: tuple[Broker, Link], certs: Path
) -> None:
    broker, _link = shipped
    result = run_fleet(*as_operator(broker, certs, "cmd", "dev-a", "reboot"))
    assert_fleet_error(result, 1, "reboot: unknown command 'reboot'; known: ping, snapshot")


def test_cmd_malformed_or_invalid_json_args_exit_2_before_anything_is_sent(
    broker: Broker, observers: Callable[..., MosquittoSub]
) -> None:
    watcher = observers(broker, [f"edge/{FLEET}/#"])
    cases = [
        ('{"level": ', "malformed JSON args"),
        ('["DEBUG"]', "must be an object"),
        ('{"level": "LOUD"}', "bad args for set-log-level: level"),
        ('{"level": "DEBUG", "colour": 1}', "colour: Extra inputs are not permitted"),
    ]
    for args, fragment in cases:
        assert_fleet_error(run_fleet(*on(broker, "cmd", "dev-a", "set-log-level", args)), 2, fragment)
    assert watcher.collect(quiet_s=0.3) == []


def test_cmd_to_a_device_that_does_not_answer_times_out(broker: Broker, links: Callable[..., Link]) -> None:
    result = run_fleet(*on(broker, "cmd", "dev-z", "ping", "--timeout", "0.5"))
    assert_fleet_error(result, 1, "no reply from dev-z to ping within 0.5 s", "never reported a status")
    link = links(link_config(broker))
    assert link.wait_connected(10)
    link.stop()
    result = run_fleet(*on(broker, "cmd", "dev-a", "ping", "--timeout", "0.5"))
    assert_fleet_error(result, 1, "no reply from dev-a to ping within 0.5 s", "dev-a is offline", "stopped")


# -- connection failures ----------------------------------------------------------------------------------------------


def test_wrong_broker_port_is_one_clear_connection_error() -> None:
    port = free_port()  # nothing listens there
    for args in (["status", "--once"], ["watch", "--timeout", "1"], ["cmd", "dev-a", "ping"]):
        result = run_fleet("--port", str(port), "--host", "127.0.0.1", *args)
        assert_fleet_error(result, 1, f"cannot reach the broker at 127.0.0.1:{port}: Connection refused")


def test_wrong_password_is_refused_naming_the_password_sources(
    broker_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = broker_factory(BrokerOptions(allow_anonymous=False, passwords={"operator": "s3cret-horse"}))
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it\n")
    result = run_fleet(
        *on(broker, "--username", "operator", "--password-file", str(wrong), "status", "--once")
    )
    line = assert_fleet_error(result, 1, "broker refused the connection", "--password-file")
    assert "not-it" not in line
    env = fleet_env(EDGE_FLEET_PASSWORD="s3cret-horse", EDGE_FLEET_USERNAME="operator")
    result = run_fleet(*on(broker, "status", "--once", "--json", "--timeout", "0.3"), env=env)
    assert result.returncode == 0, result.stderr


def test_tls_broker_from_an_unknown_ca_is_refused_naming_the_ca_file(
    broker_factory: Callable[..., Broker], certs: Path
) -> None:
    broker = broker_factory(BrokerOptions(tls=True), certs=certs)
    result = run_fleet(*on(broker, "--ca-file", str(certs / "other-ca.crt"), "status", "--once"))
    assert_fleet_error(result, 1, "TLS failed", "not signed by --ca-file")
    result = run_fleet(
        *on(broker, "--ca-file", str(certs / "ca.crt"), "status", "--once", "--timeout", "0.3")
    )
    assert result.returncode == 0, result.stderr
