"""The daemon as a person and systemd run it: `edge-agent run` as a real process, status over its socket, signals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from conftest import assert_clean_error, run_cli
from daemon_support import ROOT, DaemonDir, events_of, processed, start_daemon, stop, wait_for, wait_status
from streams import MjpegServer


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


def test_daemon_on_the_defaults_runs_the_bundled_detector_on_the_bundled_video(folder):
    process = start_daemon(folder)
    try:
        data = wait_status(folder, lambda s: processed(s) >= 20, 30, "20 results")
        assert data["model"]["name"] == "digits-det" and data["sources"][0]["state"] == "connected"
        assert data["metrics"]["latency_ms"]["invoke"]["p99"] > 0
        assert data["metrics"]["frame_age_ms"]["p50"] < 1000
        human = run_cli("status", "--socket", str(folder.socket), check=True).stdout
        assert "digits-det" in human and "inferences/s" in human and "connected" in human
    finally:
        code, output, _ = stop(process)
    assert code == 0, output
    assert "Traceback" not in output and not folder.socket.exists()


def test_status_without_a_daemon_says_so_in_one_line(folder):
    result = run_cli("status", "--socket", str(folder.socket))
    assert_clean_error(result, "no edge-agent daemon is running")


def test_sigterm_during_inference_stops_within_two_seconds_and_nothing_is_left_behind(folder):
    folder.write(
        '[model]\nbundle = "models/digits-det-onnx"\n[source]\ntype = "video"\nloop = true\nrate = "max"'
    )
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) >= 200, 30, "the loop running flat out")
    finally:
        code, output, took = stop(process)
    assert code == 0 and took < 2.0, (took, output)
    assert "Traceback" not in output and not folder.socket.exists()


def test_sensor_pipeline_reports_anomalies_in_a_faulty_recording(folder):
    folder.write(
        '[model]\nbundle = "models/motion-ae-onnx"\n'
        '[source]\ntype = "csv"\npath = "models/samples/motion_faulty.csv"\nwindow = 50\nhop = 5\nspeed = 20\nloop = true\n'
        "[monitor.anomaly]\ncooldown_s = 0"
    )
    process = start_daemon(folder)
    try:
        data = wait_status(folder, lambda s: events_of(s, "anomaly"), 30, "an anomaly event")
        event = events_of(data, "anomaly")[0]
        assert event["severity"] in ("warning", "critical") and "score" in str(event["evidence"])
    finally:
        code, output, _ = stop(process)
    assert code == 0, output


def test_a_stalled_camera_stream_is_reported_and_the_daemon_recovers_when_it_returns(folder):
    camera = MjpegServer(fps=20)
    camera.start()
    folder.write(
        f'[model]\nbundle = "models/digits-cls-tflite"\n[source]\ntype = "stream"\nurl = "{camera.url}"\n'
        "stall_timeout_s = 1.0\nrestart_after_s = 2.0\nopen_timeout_s = 2\nread_timeout_s = 2\n"
        "[source.reconnect]\ninitial_s = 0.2\nmax_s = 1.0"
    )
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) >= 10, 30, "frames from the stream")
        camera.stop()
        data = wait_status(
            folder,
            lambda s: s["sources"][0]["state"] in ("stalled", "reconnecting", "failed"),
            20,
            "the stall",
        )
        assert data["loop"]["alive"] and events_of(data, "source")
        before = processed(data)
        camera.start()
        wait_status(
            folder,
            lambda s: s["sources"][0]["state"] == "connected" and processed(s) > before + 5,
            30,
            "recovery",
        )
    finally:
        camera.stop()
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_sighup_reloads_the_config_and_a_bad_one_is_refused_without_stopping(folder):
    folder.write('[model]\nbundle = "models/digits-cls-tflite"')
    process = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) >= 5, 30, "first results")
        folder.write('[model]\nbundle = "models/digits-cls-onnx"')
        process.send_signal(signal.SIGHUP)
        wait_status(
            folder, lambda s: s["model"]["runtime"] == "onnxruntime" and processed(s) > 3, 30, "the new model"
        )
        folder.config.write_text(folder.config.read_text() + "\n[pipeline]\nmax_rate_hz = -3\n")
        process.send_signal(signal.SIGHUP)
        data = wait_status(
            folder, lambda s: any("reload refused" in e["message"] for e in s["events"]), 15, "the refusal"
        )
        assert "pipeline.max_rate_hz" in str(data["events"]) and data["model"]["runtime"] == "onnxruntime"
        assert process.poll() is None
    finally:
        code, output, _ = stop(process)
    assert code == 0, output


def listen_for_sd_notify(folder: DaemonDir):
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; returns it and a `receive_until(word)`."""
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(folder.root / "notify.sock"))
    listener.settimeout(0.5)
    got: list[str] = []

    def receive_until(word: str) -> bool:
        with contextlib.suppress(TimeoutError):
            got.extend(listener.recv(4096).decode().split("\n"))
        return any(line.startswith(word) for line in got)

    return listener, got, receive_until


def test_a_missing_model_leaves_the_daemon_up_without_one_saying_why(folder):
    folder.write('[model]\nbundle = "/nonexistent/bundle"')
    listener, got, receive_until = listen_for_sd_notify(folder)
    env = {"NOTIFY_SOCKET": str(folder.root / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    process = start_daemon(folder, env=env)
    try:
        data = wait_status(
            folder, lambda s: s["agent"]["state"] == "no-model", 30, "the daemon up without a model"
        )
        assert "/nonexistent/bundle" in data["agent"]["problem"] and data["model"] is None
        [event] = [e for e in events_of(data, "model") if e["severity"] == "critical"]
        assert "running without one" in event["message"]
        human = run_cli("status", "--socket", str(folder.socket), check=True).stdout
        assert "no model in service" in human and "/nonexistent/bundle" in human
        # systemd sees a live service: READY, a STATUS naming the problem, and the watchdog fed
        wait_for(lambda: receive_until("READY=1"), 10, "READY=1")
        wait_for(lambda: receive_until("WATCHDOG=1"), 10, "WATCHDOG=1")
        assert any(line.startswith("STATUS=no model in service") for line in got), got
    finally:
        code, output, _ = stop(process)
        listener.close()
    assert code == 0 and "Traceback" not in output, output


def test_a_corrupt_model_at_start_is_retried_and_serves_once_repaired(folder):
    bundle = folder.root / "bundle"
    shutil.copytree(ROOT / "models" / "digits-det-onnx", bundle)
    good = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(good[:1000] + bytes(64) + good[1064:])
    folder.write(f'[model]\nbundle = "{bundle}"\nretry_s = 1')
    process = start_daemon(folder)
    try:
        data = wait_status(
            folder, lambda s: s["agent"]["state"] == "no-model", 30, "the daemon up without a model"
        )
        assert "sha256 does not match" in data["agent"]["problem"]
        (bundle / "model.onnx").write_bytes(good)
        data = wait_status(folder, lambda s: processed(s) >= 5, 30, "the repaired model serving")
        assert data["agent"]["state"] == "running" and data["model"]["name"] == "digits-det"
        assert any("in service" in e["message"] for e in events_of(data, "model"))
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_a_model_that_does_not_fit_the_source_is_not_served_and_the_daemon_says_why(folder):
    folder.write('[model]\nbundle = "models/motion-ae-onnx"')  # the default source is the video
    process = start_daemon(folder)
    try:
        data = wait_status(
            folder, lambda s: s["agent"]["state"] == "no-model", 30, "the daemon up without a model"
        )
        assert "sensor windows" in data["agent"]["problem"] and data["sources"] == []
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output


def test_sd_notify_ready_status_watchdog_and_stopping_reach_the_socket(folder):
    listener, got, receive_until = listen_for_sd_notify(folder)
    process = start_daemon(
        folder, env={"NOTIFY_SOCKET": str(folder.root / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    )
    try:
        wait_for(lambda: receive_until("READY=1"), 30, "READY=1")
        wait_for(lambda: receive_until("WATCHDOG=1"), 10, "WATCHDOG=1")
        assert any(line.startswith("STATUS=digits-det") for line in got)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: receive_until("STOPPING=1"), 10, "STOPPING=1")
    finally:
        code, output, _ = stop(process)
        listener.close()
    assert code == 0, output


def test_sigkill_leaves_a_stale_socket_that_the_next_daemon_replaces(folder):
    process = start_daemon(folder)
    wait_status(folder, lambda s: processed(s) >= 1, 30, "first result")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert folder.socket.exists()
    assert_clean_error(run_cli("status", "--socket", str(folder.socket)), "stale socket")
    again = start_daemon(folder)
    try:
        wait_status(folder, lambda s: processed(s) >= 1, 30, "the second daemon")
    finally:
        code, output, _ = stop(again)
    assert code == 0, output


def test_duration_stops_the_daemon_by_itself(folder):
    started = time.monotonic()
    result = run_cli("run", "--config", str(folder.config), "--duration", "3", check=True)
    assert time.monotonic() - started < 20 and "Traceback" not in result.stderr


def test_results_go_to_the_json_lines_sink_file(folder):
    out = folder.root / "results.jsonl"
    folder.write(f'[sinks.jsonl]\nenabled = true\npath = "{out}"')
    process = start_daemon(folder)
    try:
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 5, 30, "five JSON lines")
    finally:
        code, output, _ = stop(process)
    assert code == 0, output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    seqs = [line["seq"] for line in lines]
    assert seqs == sorted(seqs) and lines[0]["model"]["name"] == "digits-det"
    assert lines[0]["result"]["task"] == "detection" and lines[0]["latency_ms"]["invoke"] > 0


def test_sigterm_with_the_broker_unreachable_still_stops_within_two_seconds(folder):
    from streams import free_port

    folder.write(
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {free_port()}\n[link.backoff]\ninitial_s = 0.2\nmax_s = 0.5'
    )
    process = start_daemon(folder)
    try:
        wait_status(
            folder, lambda s: processed(s) >= 5 and s["link"]["state"] != "connected", 30, "running offline"
        )
    finally:
        code, output, took = stop(process)
    assert code == 0 and took < 2.0, (took, output)


def test_a_results_file_that_cannot_be_written_at_start_leaves_the_daemon_serving_without_it(folder):
    folder.write('[sinks.jsonl]\nenabled = true\npath = "/proc/no/such/results.jsonl"')
    process = start_daemon(folder)
    try:
        data = wait_status(folder, lambda s: processed(s) >= 5, 30, "results without the file sink")
        [event] = [e for e in events_of(data, "error") if "running without local sinks" in e["message"]]
        assert "/proc/no/such/results.jsonl" in event["message"]
    finally:
        code, output, _ = stop(process)
    assert code == 0 and "Traceback" not in output, output
