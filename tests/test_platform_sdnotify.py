"""sd_notify over a real AF_UNIX datagram socket (a path and the abstract namespace), and the progress watchdog."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.platform.sdnotify import Notifier, Watchdog, socket_address, watchdog_interval_s


class Listener:
    """What systemd does: a bound datagram socket that receives notifications."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout_s: float = 1.0) -> list[str] | None:
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(4096).decode().split("\n")
        except TimeoutError:
            return None

    def drain(self, seconds: float) -> list[list[str]]:
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                got.append(message)
        return got


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Listener, str]]:
    path = tmp_path / "notify.sock"
    server = Listener(str(path))
    yield server, str(path)
    server.sock.close()


def test_ready_and_status_arrive_as_one_datagram(listener: tuple[Listener, str]) -> None:
    server, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("digits v3: 14.9 inferences/s")
    assert server.receive() == ["READY=1", "STATUS=digits v3: 14.9 inferences/s"]
    assert notifier.status("line one\nline two")
    assert server.receive() == ["STATUS=line one line two"]  # a newline would start a new assignment
    assert notifier.stopping() and server.receive() == ["STOPPING=1"]
    assert notifier.watchdog() and server.receive() == ["WATCHDOG=1"]
    assert notifier.extend_timeout(20) and server.receive() == ["EXTEND_TIMEOUT_USEC=20000000"]
    assert notifier.sent == 5
    notifier.close()


def test_reloading_carries_the_monotonic_time_notify_reload_needs(listener: tuple[Listener, str]) -> None:
    server, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = server.receive()
    assert message is not None and message[0] == "RELOADING=1"
    key, _, value = message[1].partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_namespace_socket_is_reached() -> None:
    name = f"edge-agent-test-{uuid.uuid4().hex}"
    server = Listener(b"\0" + name.encode())
    try:
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.ready()
        assert server.receive() == ["READY=1"]
    finally:
        server.sock.close()


def test_unset_notify_socket_is_a_silent_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x") and not notifier.watchdog() and not notifier.reloading()
    assert notifier.sent == 0 and notifier.errors == 0 and notifier.watchdog_s is None


def test_a_vanished_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="agent.platform.sdnotify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.status("still here")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gone.sock" in warnings[0].getMessage()
    assert notifier.errors == 3


def test_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract") == b"\0abstract"
    assert socket_address("") is None and socket_address(None) is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_honours_watchdog_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert (
        watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    )  # meant for another
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


def test_watchdog_ticks_feed_only_on_progress_or_health(listener: tuple[Listener, str]) -> None:
    server, path = listener
    counter = {"progress": 0}
    idle = {"ok": False}
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    dog = Watchdog(notifier, progress=lambda: counter["progress"], healthy=lambda: idle["ok"])
    assert dog.interval_s == 1.0  # half of WATCHDOG_USEC
    assert dog.tick()  # the first tick counts as progress
    assert not dog.tick()  # stuck: the counter did not move and the loop is not idle
    counter["progress"] += 1
    assert dog.tick()
    idle["ok"] = True  # e.g. waiting on a stalled camera, no item in the model
    assert dog.tick() and dog.tick()
    idle["ok"] = False
    assert not dog.tick()
    assert [m for m in server.drain(0.2)] == [["WATCHDOG=1"]] * 4
    assert dog.feeds == 4 and dog.starved == 1


def test_watchdog_thread_stops_feeding_when_the_loop_hangs_and_resumes_after(
    listener: tuple[Listener, str],
) -> None:
    server, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # feed every 50 ms
    progress = {"count": 0}
    moving = threading.Event()
    moving.set()
    stop = threading.Event()

    def inference_loop() -> None:
        while not stop.is_set():
            if moving.is_set():
                progress["count"] += 1
            time.sleep(0.005)

    worker = threading.Thread(target=inference_loop, name="fake-inference")
    worker.start()
    dog = Watchdog(notifier, progress=lambda: progress["count"])
    try:
        assert dog.start()
        assert any(t.name == "sd-watchdog" for t in threading.enumerate())
        assert len(server.drain(0.4)) >= 3  # about eight feeds in 0.4 s (fewer on a busy machine)
        moving.clear()  # the invoke hangs
        server.drain(0.3)  # a feed for the last increments may still arrive
        assert server.drain(0.4) == []
        moving.set()
        assert len(server.drain(0.4)) >= 3
    finally:
        dog.stop()
        stop.set()
        worker.join(2)
    assert not any(t.name == "sd-watchdog" for t in threading.enumerate())


def test_watchdog_without_watchdog_usec_starts_no_thread(listener: tuple[Listener, str]) -> None:
    _, path = listener
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), progress=lambda: 0)
    assert dog.interval_s is None
    assert not dog.start()
    dog.stop()


def test_a_raising_probe_starves_the_watchdog_instead_of_killing_it(listener: tuple[Listener, str]) -> None:
    server, path = listener

    def progress() -> int:
        raise RuntimeError("loop object gone")

    def healthy() -> bool:
        raise RuntimeError("loop object gone")

    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}), progress, healthy)
    assert not dog.tick()
    assert server.receive(0.1) is None
