"""The daemon in this process, for what needs a hand inside it: a model that hangs, hot swap and restore."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import MODELS
from daemon_support import DaemonDir, processed, wait_for

from agent.config import load_config
from agent.daemon.app import Daemon
from agent.inference.model import Model


@pytest.fixture
def folder() -> Iterator[DaemonDir]:
    made = DaemonDir()
    yield made
    made.cleanup()


def run_in_thread(daemon: Daemon) -> threading.Thread:
    thread = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    thread.start()
    wait_for(
        lambda: daemon.models.pipeline is not None and processed(daemon.status()) >= 3, 30, "the daemon running"
    )
    return thread


def test_a_hung_invoke_starves_the_systemd_watchdog_and_feeding_resumes_after(folder, monkeypatch):
    path = folder.root / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    hang, released = threading.Event(), threading.Event()
    original = Model.invoke

    def invoke(self: Model, tensor: Any) -> Any:
        if hang.is_set():
            released.wait(30)
        return original(self, tensor)

    monkeypatch.setattr(Model, "invoke", invoke)
    folder.write("[pipeline]\nhang_timeout_s = 1.0")
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)

    def feeds(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                count += listener.recv(4096).count(b"WATCHDOG=1")
            except TimeoutError:
                break
        return count

    try:
        assert feeds(1.0) >= 2
        hang.set()
        time.sleep(1.5)  # longer than hang_timeout_s: the invoke now counts as hung
        feeds(0.05)  # what was sent before that is still queued in the socket
        assert feeds(1.5) == 0, "the watchdog was fed while the invoke hung"
        assert daemon.status()["loop"]["busy_s"] > 1.0
        hang.clear()
        released.set()
        assert feeds(1.5) >= 2
    finally:
        released.set()
        daemon.request_stop()
        thread.join(10)
        listener.close()
    assert not thread.is_alive()


def test_hot_swap_through_the_daemon_keeps_the_previous_model_to_restore_at_once(folder):
    folder.write('[model]\nbundle = "models/digits-det-tflite"')
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)
    try:
        assert daemon.main.call(lambda: daemon.models.load_candidate(MODELS / "digits-det-onnx"), 30).ok
        assert daemon.main.call(daemon.models.activate, 30).ok
        wait_for(lambda: daemon.status()["metrics"]["counters"]["swaps"] == 1, 10, "the swap counted")
        data = daemon.status()
        assert data["model"]["runtime"] == "onnxruntime" and data["previous_model"]["runtime"] == "litert"
        before = processed(data)
        wait_for(lambda: processed(daemon.status()) > before + 3, 10, "results from the new model")
        assert daemon.main.call(daemon.models.restore_previous, 30).ok
        data = daemon.status()
        assert data["model"]["runtime"] == "litert" and data["previous_model"] is None
        assert not daemon.main.call(daemon.models.restore_previous, 30).ok
        kinds = [e["message"] for e in data["events"] if e["type"] == "model"]
        assert any("restored" in m for m in kinds)
    finally:
        daemon.request_stop()
        thread.join(10)


def test_a_candidate_that_does_not_fit_the_source_is_refused_and_service_goes_on(folder):
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)
    try:
        outcome = daemon.main.call(lambda: daemon.models.load_candidate(MODELS / "motion-ae-onnx"), 30)
        assert not outcome.ok and "sensor windows" in outcome.message
        before = processed(daemon.status())
        wait_for(lambda: processed(daemon.status()) > before, 10, "service going on")
    finally:
        daemon.request_stop()
        thread.join(10)


def test_a_config_change_that_fails_halfway_leaves_the_previous_config_serving(folder):
    from agent.config import apply_patch
    from agent.errors import AgentError

    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)
    try:
        unwritable = apply_patch(
            daemon.config, {"sinks": {"jsonl": {"enabled": True, "path": "/proc/no/such.jsonl"}}}
        )
        with pytest.raises(AgentError):
            daemon.main.call(lambda: daemon.apply_config(unwritable), 30)
        wrong_source = apply_patch(
            daemon.config, {"source": {"type": "synthetic"}}
        )  # windows for an image model
        with pytest.raises(AgentError, match="sensor windows"):
            daemon.main.call(lambda: daemon.apply_config(wrong_source), 30)
        assert daemon.config.source.type == "video" and not daemon.config.sinks.jsonl.enabled
        before = processed(daemon.status())
        wait_for(lambda: processed(daemon.status()) > before + 3, 10, "service going on")
        assert daemon.status()["loop"]["alive"]
    finally:
        daemon.request_stop()
        thread.join(10)


def test_a_restart_while_an_invoke_hangs_serves_a_fresh_copy_of_the_model(folder, monkeypatch):
    stuck_in: list[Model] = []
    released = threading.Event()
    original = Model.invoke

    def invoke(self: Model, tensor: Any) -> Any:
        if stuck_in and self is stuck_in[0]:
            released.wait(30)
        return original(self, tensor)

    monkeypatch.setattr(Model, "invoke", invoke)
    closed: list[Model] = []
    original_close = Model.close
    monkeypatch.setattr(Model, "close", lambda self: (closed.append(self), original_close(self))[1])
    folder.write("[pipeline]\nhang_timeout_s = 1.0")
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)
    try:
        assert daemon.models.active is not None
        hung = daemon.models.active.model
        stuck_in.append(hung)
        wait_for(lambda: daemon.status()["loop"]["busy_s"] > 0.5, 10, "the invoke hanging")
        daemon.request_restart()
        wait_for(
            lambda: daemon.models.active is not None and daemon.models.active.model is not hung,
            20,
            "a fresh copy in service",
        )
        before = processed(daemon.status())
        wait_for(lambda: processed(daemon.status()) >= before + 3, 20, "results from the fresh copy")
        assert daemon.status()["model"]["name"] == hung.name and hung not in closed
        released.set()  # the hung invoke returns: its model copy is closed, the fresh one serves on
        wait_for(lambda: hung in closed, 10, "the stuck copy closed once its thread ended")
        assert daemon.models.active.model not in closed
    finally:
        released.set()
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()


def test_a_restart_during_a_slow_invoke_waits_for_it_and_keeps_the_model(folder, monkeypatch):
    slow = threading.Event()
    original = Model.invoke

    def invoke(self: Model, tensor: Any) -> Any:
        if slow.is_set():
            slow.clear()
            time.sleep(1.5)  # slower than the 1 s a restart used to allow, far below hang_timeout_s
        return original(self, tensor)

    monkeypatch.setattr(Model, "invoke", invoke)
    daemon = Daemon(load_config(folder.config, environ={}), folder.config)
    thread = run_in_thread(daemon)
    try:
        assert daemon.models.active is not None
        model = daemon.models.active.model
        slow.set()
        wait_for(lambda: daemon.status()["loop"]["busy_s"] > 0.2, 10, "the slow invoke")
        daemon.request_restart()
        wait_for(
            lambda: any(e["message"] == "pipeline restarted" for e in daemon.status()["events"]),
            20,
            "restart",
        )
        before = processed(daemon.status())
        wait_for(lambda: processed(daemon.status()) >= before + 3, 20, "results after the restart")
        assert daemon.models.active.model is model and daemon.models.quarantined == 0
    finally:
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()
