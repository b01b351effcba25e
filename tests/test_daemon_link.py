"""The daemon with its fleet link on a real Mosquitto: status and last will, telemetry, results, events, commands.

The daemon runs as a real process (`edge-agent run`); an operator (a paho MQTT 5 peer) and `mosquitto_sub` read and
command it from the outside, as the fleet would.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_support import DaemonDir, processed, start_daemon, stop, wait_for, wait_status

from agent.link import CommandReply

pytest.register_assert_rewrite("broker")
from broker import Broker, BrokerOptions, MosquittoSub, PahoPeer, needs_mosquitto  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

DEVICE = "cam-1"
ROOT = f"edge/f1/devices/{DEVICE}"
REPLIES = f"{ROOT}/reply/op"
MODELS = Path(__file__).resolve().parent.parent / "models"


def config(broker: Broker, extra: str = "") -> str:
    return (
        f'[device]\nid = "{DEVICE}"\nfleet = "f1"\n'
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        "[link.backoff]\ninitial_s = 0.2\nmax_s = 1.0\n"
        "[link.telemetry]\ninterval_s = 1.0\n"
        '[link.results]\nmode = "every"\nmax_per_s = 50\n' + extra
    )


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


@pytest.fixture
def operator(broker: Broker, peers: Callable[..., PahoPeer]) -> PahoPeer:
    peer = peers(broker, "op")
    peer.subscribe(f"{ROOT}/#")
    return peer


def next_on(
    peer: PahoPeer, topic: str, predicate: Callable[[Any], bool] = lambda _: True, timeout_s: float = 20
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = peer.next_message(max(0.1, deadline - time.monotonic()))
        if message.topic == topic:
            data = json.loads(message.payload)
            if predicate(data):
                return data
    raise AssertionError(f"nothing on {topic} within {timeout_s} s")


def ask(peer: PahoPeer, name: str, args: dict[str, Any] | None = None, timeout_s: float = 20) -> CommandReply:
    correlation = os.urandom(6)
    body = json.dumps({"args": args or {}})
    peer.publish(f"{ROOT}/cmd/{name}", body, response_topic=REPLIES, correlation=correlation)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = peer.next_message(max(0.1, deadline - time.monotonic()))
        if message.topic == REPLIES and message.properties.CorrelationData == correlation:
            return CommandReply.model_validate_json(message.payload)
    raise AssertionError(f"no reply to {name}")


def test_daemon_reports_status_telemetry_and_results_to_the_fleet(broker, folder, operator, observers):
    watcher: MosquittoSub = observers(broker, [f"{ROOT}/status", f"{ROOT}/telemetry"])
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        status = next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "online" and d["sources"])
        assert status["model"] == {"name": "digits-det", "version": 1} and status["sources"] == {
            "video": "connected"
        }
        telemetry = next_on(
            operator, f"{ROOT}/telemetry", lambda d: d["metrics"]["counters"]["processed"] > 0
        )
        metrics = telemetry["metrics"]
        assert metrics["latency_ms"]["invoke"]["p99"] > 0 and "system" in metrics and telemetry["schema"] == 1
        result = next_on(operator, f"{ROOT}/results")
        assert result["result"]["result"]["task"] == "detection" and result["model"]["name"] == "digits-det"
        seen = watcher.wait_for(lambda m: m.topic.endswith("/telemetry"), 10)  # an independent client agrees
        assert json.loads(seen.payload)["device"] == DEVICE
    finally:
        code, output, _ = stop(process)
    assert code == 0, output
    offline = next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "offline")
    assert offline["reason"] == "stopped"


def test_sigkill_of_the_daemon_leaves_the_last_will_offline_status(broker, folder, operator):
    folder.write(config(broker).replace("[link.backoff]", "keepalive_s = 5\n[link.backoff]"))
    process = start_daemon(folder)
    next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "online")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    offline = next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "offline", timeout_s=30)
    assert offline["reason"] == "lost"


def test_sigterm_stops_within_2_s_when_the_broker_has_frozen_mid_session(broker, folder, operator):
    folder.write(config(broker))
    process = start_daemon(folder)
    assert broker.process is not None
    try:
        next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "online")
        wait_status(folder, lambda s: processed(s) >= 5, 30, "the daemon running")
        os.kill(
            broker.process.pid, signal.SIGSTOP
        )  # the TCP connection stays open; nothing is ever acknowledged
        code, output, took = stop(process)
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        if process.poll() is None:
            stop(process)
    assert code == 0 and took < 2.0, (took, output)
    assert "Traceback" not in output


def test_remote_commands_change_the_running_daemon_and_persist(broker, folder, operator):
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "online")
        wait_status(folder, lambda s: processed(s) > 5, 30, "results")

        reply = ask(operator, "get-config")
        assert reply.status == "ok" and reply.data["config"]["device"]["id"] == DEVICE

        reply = ask(operator, "set-config", {"patch": {"pipeline": {"max_rate_hz": 2}}})
        assert reply.status == "ok" and reply.data["applied_live"] == ["pipeline"], reply
        overrides = folder.state / "config-overrides.json"
        wait_for(lambda: overrides.exists(), 10, "the patch persisted once applied")
        assert json.loads(overrides.read_text()) == {"pipeline": {"max_rate_hz": 2}}

        reply = ask(operator, "set-config", {"patch": {"model": {"bundle": "/no/such/bundle"}}})
        assert reply.status == "error" and "/no/such/bundle" in (reply.reason or ""), reply  # the reply tells
        assert "running config is kept" in (reply.reason or "")
        assert "model" not in json.loads(overrides.read_text())  # never persisted, since it did not load
        time.sleep(12)  # let the 10 s rate window forget the 10 fps before the change
        data = wait_status(
            folder, lambda s: s["metrics"]["rates"]["processed_per_s"] <= 2.5, 10, "duty cycling"
        )
        assert data["loop"]["alive"]

        reply = ask(operator, "set-config", {"patch": {"pipeline": {"max_rate_hz": -5}}})
        assert reply.status == "error" and "pipeline.max_rate_hz" in (reply.reason or "")

        reply = ask(operator, "snapshot", {"max_bytes": 30000})
        assert reply.status == "ok" and reply.data["bytes"] <= 30000
        image = cv2.imdecode(
            np.frombuffer(base64.b64decode(reply.data["jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR
        )
        assert image is not None and image.shape[:2] == (reply.data["height"], reply.data["width"])

        reply = ask(operator, "set-results-policy", {"mode": "on_change", "max_per_s": 1})
        assert reply.status == "ok" and reply.data["persisted"]

        reply = ask(operator, "set-log-level", {"level": "DEBUG", "logger": "agent.link"})
        assert reply.status == "ok"

        before = wait_status(folder, lambda s: True, 5, "status")["agent"]["uptime_s"]
        reply = ask(operator, "restart-pipeline")
        assert reply.status == "ok"
        wait_status(
            folder,
            lambda s: any(e["message"] == "pipeline restarted" for e in s["events"]),
            15,
            "the restart",
        )
        assert wait_status(folder, lambda s: True, 5, "status")["agent"]["uptime_s"] >= before

        reply = ask(operator, "no-such-command")
        assert reply.status == "error"
    finally:
        code, output, _ = stop(process)
    assert code == 0, output
    # the persisted override survives a restart
    again = start_daemon(folder)
    try:
        data = wait_status(folder, lambda s: processed(s) >= 1, 30, "the restarted daemon")
        assert data["agent"]["device"] == DEVICE
        reply = ask(operator, "get-config")
        assert reply.data["config"]["pipeline"]["max_rate_hz"] == 2
        assert reply.data["config"]["link"]["results"]["mode"] == "on_change"
    finally:
        stop(again)


def test_a_device_that_boots_without_a_loadable_model_reports_it_and_is_fixed_remotely(
    broker, folder, operator, observers
):
    watcher = observers(broker, [f"{ROOT}/status"])
    folder.write(config(broker, '[model]\nbundle = "/lost/bundle"\n'))
    process = start_daemon(folder)
    try:
        event = next_on(
            operator, f"{ROOT}/events", lambda d: d["type"] == "model" and d["severity"] == "critical"
        )
        assert "/lost/bundle" in event["message"] and "running without one" in event["message"]
        online = watcher.wait_for(lambda m: m.json()["state"] == "online", 20).json()
        assert online["model"] is None and online["sources"] == {}
        reply = ask(operator, "set-config", {"patch": {"model": {"bundle": str(MODELS / "digits-det-onnx")}}})
        assert reply.status == "ok" and reply.data["applied_live"] == ["model"], reply
        data = wait_status(folder, lambda s: processed(s) >= 5, 30, "the model the fleet named serving")
        assert data["agent"]["state"] == "running" and data["model"]["name"] == "digits-det"
        overrides = json.loads((folder.state / "config-overrides.json").read_text())
        assert overrides["model"]["bundle"].endswith("digits-det-onnx")  # persisted: the next boot serves it
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_anomaly_events_reach_the_fleet_with_a_snapshot_kept_on_disk(broker, folder, operator):
    folder.write(config(broker, '[monitor.anomaly]\nlabels = ["2"]\nmin_score = 0.5\ncooldown_s = 1\n'))
    process = start_daemon(folder)
    try:
        event = next_on(
            operator, f"{ROOT}/events", lambda d: d["type"] == "anomaly" and d["snapshot"], timeout_s=40
        )
        assert len(event["id"]) == 32 and event["device"] == DEVICE
        assert (folder.state / "snapshots" / event["snapshot"]).stat().st_size > 1000
    finally:
        stop(process)


def test_events_made_while_the_broker_is_down_arrive_once_it_is_up(broker_factory, folder, observers):
    # The operator's persistent session (saved by Mosquitto across its restart) holds the subscription, so
    # events flushed from the outbox the instant the daemon reconnects are queued for it, not lost to a race.
    broker = broker_factory(BrokerOptions(persistence=True))
    observer = observers(broker, [f"{ROOT}/events"], client_id="late-op")
    broker.stop()
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        data = wait_status(folder, lambda s: processed(s) >= 10, 30, "the daemon running without a broker")
        assert data["link"]["state"] in ("connecting", "disconnected")
        model_event = next(e for e in data["events"] if e["type"] == "model")
        broker.start()
        observer.wait_for(lambda seen: seen.json()["id"] == model_event["id"], timeout_s=40)
    finally:
        code, output, _ = stop(process)
    assert code == 0, output


def test_set_config_refuses_a_bundle_that_fails_its_golden_self_test_and_says_why(
    broker, folder, operator, tmp_path
):
    import shutil

    import numpy as np
    from conftest import edit_manifest

    bundle = tmp_path / "tampered"
    shutil.copytree(MODELS / "digits-det-onnx", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    expected = manifest["golden"]["cases"][0]["expected"]
    with np.load(bundle / expected) as stored:
        outputs = {name: stored[name] + 5.0 for name in stored.files}  # far outside any tolerance
    np.savez(bundle / expected, **outputs)
    edit_manifest(bundle, rehash=(expected,))  # the hashes match: only the self-test can tell
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) > 3, 30, "results")
        reply = ask(operator, "set-config", {"patch": {"model": {"bundle": str(bundle)}}})
        assert reply.status == "error" and "golden self-test" in (reply.reason or ""), reply
        data = wait_status(folder, lambda s: True, 5, "status")
        assert data["model"]["bundle"].endswith("digits-det-tflite")  # the running model is kept
        assert not (folder.state / "config-overrides.json").exists()
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_set_config_puts_the_previous_source_back_when_the_new_one_cannot_open(broker, folder, operator):
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) > 3, 30, "results")
        patch = {"source": {"type": "video", "path": "/no/such/camera.mp4"}}
        reply = ask(operator, "set-config", {"patch": patch})
        assert reply.status == "error" and "cannot open" in (reply.reason or ""), reply
        assert "previous config is back" in (reply.reason or "")
        data = wait_status(
            folder, lambda s: s["sources"] and s["sources"][0]["state"] == "connected", 15, "source"
        )
        before = processed(data)
        wait_status(folder, lambda s: processed(s) > before + 3, 15, "service going on")
        reply = ask(operator, "get-config")
        assert reply.data["config"]["source"]["path"] != "/no/such/camera.mp4"
        assert not (folder.state / "config-overrides.json").exists()
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_a_clean_stop_publishes_the_events_it_made_before_the_offline_status(broker, folder, operator):
    folder.write(config(broker))
    process = start_daemon(folder)
    try:
        next_on(operator, f"{ROOT}/status", lambda d: d["state"] == "online")
        wait_status(folder, lambda s: processed(s) >= 5, 30, "the daemon running")
        code, output, took = stop(process)
    finally:
        if process.poll() is None:
            stop(process)
    assert code == 0 and took < 2.0, (took, output)
    seen: list[tuple[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        t.endswith("/status") and d["state"] == "offline" for t, d in seen
    ):
        message = operator.next_message(max(0.1, deadline - time.monotonic()))
        if message.topic in (f"{ROOT}/events", f"{ROOT}/status"):
            seen.append((message.topic, json.loads(message.payload)))
    stopped = [i for i, (t, d) in enumerate(seen) if t.endswith("/events") and "stopped" in d["message"]]
    offline = [i for i, (t, d) in enumerate(seen) if t.endswith("/status") and d["state"] == "offline"]
    assert stopped, f"the source's last event never reached the fleet: {[d.get('message') for _, d in seen]}"
    assert offline and stopped[0] < offline[0], "the event came after the offline status"
