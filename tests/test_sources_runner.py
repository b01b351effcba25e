"""The source runner's promises: it survives any source failure, reconnects with backoff, and stops on time.

The sources here are small scripted implementations of the Source protocol (the failure under test is scripted); the
real devices, streams and files are covered by the other test_sources_* files.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from streams import Harness, wait_until

from agent.backoff import BackoffConfig
from agent.errors import SourceError
from agent.sources import EndOfStream, ItemKind, SourceState, SyntheticConfig, VideoConfig
from agent.types import Array

FAST_BACKOFF = BackoffConfig(initial_s=0.02, max_s=0.2, multiplier=2.0, jitter=0.0)


class ScriptedSource:
    """Frames on demand; `fail_reads` makes the next reads raise, `fail_opens` the next opens."""

    kind: ItemKind = "frame"

    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self.frame = np.zeros((4, 4, 3), dtype=np.uint8)
        self.opens = 0
        self.closes = 0
        self.fail_opens = 0
        self.read_errors: list[BaseException] = []
        self.end_after: int | None = None
        self.silent = threading.Event()
        self.reads = 0

    def open(self) -> None:
        self.opens += 1
        if self.fail_opens:
            self.fail_opens -= 1
            raise SourceError(f"{self.name}: cannot open (scripted)")

    def read(self, timeout_s: float) -> Array | None:
        self.reads += 1
        if self.read_errors:
            raise self.read_errors.pop(0)
        if self.end_after is not None and self.reads > self.end_after:
            raise EndOfStream(self.name)
        if self.silent.is_set():
            time.sleep(timeout_s)
            return None
        time.sleep(0.005)
        return self.frame

    def close(self) -> None:
        self.closes += 1


class BlockedSource(ScriptedSource):
    """A source whose read never returns until released (a driver stuck in a kernel call)."""

    def __init__(self) -> None:
        super().__init__("blocked")
        self.release = threading.Event()
        self.entered = threading.Event()

    def read(self, timeout_s: float) -> Array | None:
        self.entered.set()
        self.release.wait(30)
        return None


def config(**changes: object) -> VideoConfig:
    """A config for the scripted sources (only the common fields matter)."""
    return VideoConfig(name="scripted", reconnect=FAST_BACKOFF, **changes)  # type: ignore[arg-type,unused-ignore]


def test_items_carry_increasing_seq_across_reconnects() -> None:
    source = ScriptedSource()
    with Harness(config(), source) as harness:
        harness.wait_items(5, 5)
        source.read_errors.append(SourceError("scripted: connection reset"))
        harness.wait_state(SourceState.RECONNECTING, 5)
        before = harness.count()
        harness.wait_items(before + 5, 5)
    seqs = [item.seq for item in harness.items]
    assert seqs == list(range(len(seqs)))
    assert source.opens >= 2 and source.closes >= 2
    status = harness.runner.status()
    assert status.reconnects >= 1 and status.errors >= 1
    assert status.last_error == "scripted: connection reset"
    item = harness.items[-1]
    assert item.kind == "frame" and item.source == "scripted"
    assert abs(item.captured_at - time.time()) < 5 and item.captured_mono <= time.monotonic()


def test_source_raising_a_random_exception_does_not_kill_the_runner() -> None:
    source = ScriptedSource()
    source.read_errors.extend(
        [ZeroDivisionError("division by zero"), KeyError("x"), RuntimeError("driver bug")]
    )
    with Harness(config(), source) as harness:
        harness.wait_items(3, 5)
        assert harness.runner._thread is not None and harness.runner._thread.is_alive()
    status = harness.runner.status()
    assert status.errors == 3
    assert "RuntimeError" in (status.last_error or "") and "driver bug" in (status.last_error or "")


def test_open_exception_of_any_type_is_a_failure_with_retry() -> None:
    class ExplodingOpen(ScriptedSource):
        def open(self) -> None:
            self.opens += 1
            if self.opens < 3:
                raise OSError(5, "Input/output error")

    source = ExplodingOpen()
    with Harness(config(), source) as harness:
        harness.wait_items(1, 5)
    assert harness.state_names[:2] == ["failed", "connected"]
    assert "OSError" in (harness.runner.status().last_error or "")


def test_stop_returns_quickly_while_the_source_is_blocked() -> None:
    source = BlockedSource()
    harness = Harness(config(), source)
    harness.runner.start()
    assert source.entered.wait(5)
    started = time.monotonic()
    stopped_cleanly = harness.runner.stop(timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert not stopped_cleanly
    assert harness.runner.status().state is SourceState.STOPPED
    source.release.set()
    wait_until(lambda: source.closes >= 1, 5, "the abandoned thread to close the source")
    assert harness.runner.status().state is SourceState.STOPPED


def test_stop_of_a_healthy_source_is_prompt_and_final() -> None:
    source = ScriptedSource()
    with Harness(config(), source) as harness:
        harness.wait_items(2, 5)
        started = time.monotonic()
        assert harness.runner.stop()
        assert time.monotonic() - started < 1.0
        delivered = harness.count()
    time.sleep(0.1)
    assert harness.count() == delivered
    assert harness.state_names[-1] == "stopped"
    assert source.closes == source.opens


def test_finite_source_ends_without_reconnecting() -> None:
    source = ScriptedSource()
    source.end_after = 3
    with Harness(config(), source) as harness:
        harness.wait_state(SourceState.ENDED, 5)
        time.sleep(0.1)
        assert source.opens == 1
        assert harness.count() == 3
    assert harness.state_names == ["connected", "ended", "stopped"]


def test_silent_source_goes_stalled_then_connected_when_items_resume() -> None:
    source = ScriptedSource()
    with Harness(config(stall_timeout_s=0.3), source) as harness:
        harness.wait_items(2, 5)
        source.silent.set()
        index = harness.wait_state(SourceState.STALLED, 3)
        assert harness.runner.status().rate_hz == 0.0
        source.silent.clear()
        harness.wait_state(SourceState.CONNECTED, 3, after=index)
        assert source.opens == 1


def test_restart_after_s_reopens_a_source_that_stays_silent() -> None:
    source = ScriptedSource()
    with Harness(config(stall_timeout_s=0.2, restart_after_s=0.4), source) as harness:
        harness.wait_items(1, 5)
        source.silent.set()
        wait_until(lambda: source.opens >= 2, 5, "a reopen")
        source.silent.clear()
        harness.wait_items(harness.count() + 1, 5)
    states = harness.state_names
    assert states.index("stalled") < states.index("reconnecting")
    assert "no item for" in (harness.runner.status().last_error or "")


def test_backoff_grows_while_open_keeps_failing_and_resets_after_an_item() -> None:
    source = ScriptedSource()
    source.fail_opens = 6
    backoff = BackoffConfig(initial_s=0.02, max_s=0.1, multiplier=2.0, jitter=0.0)
    waits: list[float] = []
    with Harness(VideoConfig(name="scripted", reconnect=backoff), source) as harness:
        for _ in range(40):
            waits.append(harness.runner.status().backoff_s)
            time.sleep(0.01)
        harness.wait_items(1, 5)
    distinct = sorted({round(w, 3) for w in waits if w > 0})
    assert distinct[:3] == [0.02, 0.04, 0.08], distinct
    assert max(waits) <= 0.1
    assert harness.runner.status().backoff_s == 0.0
    assert harness.state_names[:2] == ["failed", "connected"]


def test_consumer_exception_is_counted_and_the_runner_goes_on() -> None:
    calls: list[int] = []

    def deliver(item: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("mailbox bug")

    from agent.sources import SourceRunner

    runner = SourceRunner(ScriptedSource(), config(), deliver)
    runner.start()
    try:
        wait_until(lambda: len(calls) >= 5, 5, "five deliveries")
    finally:
        runner.stop()
    assert runner.status().errors == 1


def test_status_reports_rate_and_age_and_serialises() -> None:
    source = SyntheticConfig(rate_hz=1000.0, window=10, hop=10, channels=["a", "b"])
    with Harness(source) as harness:
        harness.wait_items(20, 5)
        status = harness.runner.status()
    assert 50 < status.rate_hz < 200, status.rate_hz
    data = status.to_dict()
    assert data["state"] == "connected" and data["type"] == "synthetic" and data["name"] == "synthetic"
    assert data["since_item_s"] is not None and data["since_item_s"] < 1


def test_runner_cannot_be_started_twice() -> None:
    with Harness(config(), ScriptedSource()) as harness, pytest.raises(RuntimeError):
        harness.runner.start()
