"""The model service's slot state machine with real models on the bundled video: load, swap, restore, shadow, hang.

Each transition is called as the daemon's main thread would and returns its outcome; the tests read the state, the
events it reported, which models are open, and the health counters that start afresh at every swap.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS

from agent.config import AgentConfig, apply_patch
from agent.daemon.model_service import ModelService, SlotState
from agent.daemon.ports import Reporter
from agent.daemon.serving import PipelinePorts
from agent.events import AgentEvent
from agent.inference.model import Model


class Harness:
    """A model service on a tmp state dir, its events collected, every model close recorded."""

    def __init__(self, state_dir: Path, bundle: Path, **patch: Any) -> None:
        self.events: list[AgentEvent] = []
        config = apply_patch(
            AgentConfig(state_dir=state_dir),
            {"model": {"bundle": str(bundle), "warmup_runs": 1, "retry_s": 1}, **patch},
        )
        self.service = ModelService(
            config, state_dir, PipelinePorts(Reporter(self.events.append), state_dir, list)
        )

    def processed(self) -> int:
        pipeline = self.service.pipeline
        return (
            pipeline.monitors.metrics.snapshot(time.monotonic())["counters"]["processed"] if pipeline else 0
        )

    def wait_processed(self, more: int, timeout_s: float = 20.0) -> None:
        target = self.processed() + more
        deadline = time.monotonic() + timeout_s
        while self.processed() < target:
            assert time.monotonic() < deadline, f"fewer than {more} more results in {timeout_s} s"
            time.sleep(0.05)

    def messages(self, kind: str) -> list[str]:
        return [e.message for e in self.events if e.type == kind]


@pytest.fixture
def closed(monkeypatch) -> list[Model]:
    """Every model closed during the test."""
    seen: list[Model] = []
    original = Model.close
    monkeypatch.setattr(Model, "close", lambda self: (seen.append(self), original(self))[1])
    return seen


@pytest.fixture
def harness(tmp_path) -> Iterator[Harness]:
    made = Harness(tmp_path, MODELS / "digits-det-tflite")
    yield made
    made.service.stop(time.monotonic() + 2)


def test_start_serves_the_configured_model_and_reports_it(harness):
    outcome = harness.service.start()
    assert outcome.ok and outcome.state is SlotState.SERVING and outcome.evidence["name"] == "digits-det"
    harness.wait_processed(3)
    assert harness.messages("model") == ["model digits-det v1 in service"]
    health = harness.service.health()
    assert (
        health is not None
        and health["items"] >= 3
        and health["model"] == {"name": "digits-det", "version": 1}
    )


def test_a_swap_keeps_the_previous_model_and_restore_brings_it_back_at_once(harness, closed):
    harness.service.start()
    harness.wait_processed(2)
    first = harness.service.active
    outcome = harness.service.load_candidate(MODELS / "digits-det-onnx")
    assert outcome.ok and harness.service.state is SlotState.CANDIDATE_READY
    assert harness.service.active is first, "loading a candidate never touches the model in service"
    outcome = harness.service.activate()
    assert outcome.ok and outcome.state is SlotState.SERVING
    assert (
        harness.service.previous is first and harness.service.active.model.manifest.runtime == "onnxruntime"
    )
    assert first.model not in closed
    harness.wait_processed(3)
    outcome = harness.service.restore_previous()
    assert outcome.ok and harness.service.active is first and harness.service.previous is None
    assert any(m.bundle.path.name == "digits-det-onnx" for m in closed), "the replaced candidate is closed"
    again = harness.service.restore_previous()
    assert not again.ok and "no previous model" in again.message
    assert harness.messages("model")[-1] == "restored model digits-det v1"


def test_health_counters_start_afresh_at_each_swap(harness):
    harness.service.start()
    harness.wait_processed(10)
    before = harness.service.health()
    assert before is not None and before["items"] >= 10
    harness.service.load_candidate(MODELS / "digits-det-onnx")
    harness.service.activate()
    after = harness.service.health()
    assert after is not None and after["items"] < before["items"]
    harness.wait_processed(3)
    assert harness.service.health()["items"] >= 3


def test_a_candidate_that_does_not_fit_the_source_is_refused_and_service_goes_on(harness, closed):
    harness.service.start()
    outcome = harness.service.load_candidate(MODELS / "motion-ae-onnx")
    assert not outcome.ok and "sensor windows" in outcome.message
    assert harness.service.state is SlotState.SERVING and harness.service.candidate is None
    assert [m.bundle.path.name for m in closed] == ["motion-ae-onnx"]
    harness.wait_processed(3)


def test_a_discarded_candidate_is_closed_and_activate_then_has_nothing_to_do(harness, closed):
    harness.service.start()
    harness.service.load_candidate(MODELS / "digits-det-onnx")
    assert harness.service.discard_candidate().ok
    assert harness.service.state is SlotState.SERVING
    assert [m.bundle.path.name for m in closed] == ["digits-det-onnx"]
    outcome = harness.service.activate()
    assert not outcome.ok and outcome.message == "no candidate is loaded"


def test_a_missing_model_leaves_the_slot_empty_and_a_repaired_one_serves_on_retry(tmp_path):
    bundle = tmp_path / "bundle"
    made = Harness(tmp_path, bundle)
    try:
        outcome = made.service.start()
        assert not outcome.ok and outcome.state is SlotState.NO_MODEL
        assert made.service.pipeline is None and "no model in service" in made.messages("model")[0]
        made.service.tick(time.monotonic())  # not due yet: nothing happens
        assert made.service.state is SlotState.NO_MODEL
        shutil.copytree(MODELS / "digits-det-tflite", bundle)
        made.service.tick(time.monotonic() + 2)  # past model.retry_s
        assert made.service.state is SlotState.SERVING
        made.wait_processed(2)
    finally:
        made.service.stop(time.monotonic() + 2)


def test_a_candidate_loaded_while_no_model_serves_is_served_at_once(tmp_path):
    made = Harness(tmp_path, tmp_path / "lost")
    try:
        made.service.start()
        outcome = made.service.load_candidate(MODELS / "digits-det-onnx")
        assert outcome.ok and outcome.state is SlotState.SERVING and made.service.previous is None
        made.wait_processed(2)
    finally:
        made.service.stop(time.monotonic() + 2)


def test_a_shadow_run_compares_the_candidate_on_live_items_within_its_cpu_share(harness):
    harness.service.start()
    harness.service.load_candidate(MODELS / "digits-det-onnx")
    assert harness.service.start_shadow(every_n=2, cpu_share=0.5).ok
    deadline = time.monotonic() + 20
    while (harness.service.shadow_stats() or {}).get("compared", 0) < 5:
        assert time.monotonic() < deadline, harness.service.shadow_stats()
        time.sleep(0.05)
    stats = harness.service.shadow_stats()
    assert stats["candidate"]["runtime"] == "onnxruntime" and stats["errors"] == 0
    assert stats["agreement"] is not None and stats["agreement"] >= 0.6, (
        stats
    )  # the same detector, two runtimes
    assert stats["latency_ms"]["count"] == stats["compared"]
    assert harness.service.activate().ok
    assert harness.service.shadow_stats() is None, "activation ends the shadow run"


def test_an_invoke_that_hangs_moves_the_slot_to_stuck_and_back_when_it_returns(tmp_path, monkeypatch):
    hang, released = threading.Event(), threading.Event()
    original = Model.invoke

    def invoke(self: Model, tensor: Any) -> Any:
        if hang.is_set():
            released.wait(30)
        return original(self, tensor)

    monkeypatch.setattr(Model, "invoke", invoke)
    made = Harness(tmp_path, MODELS / "digits-det-tflite", pipeline={"hang_timeout_s": 0.5})
    try:
        made.service.start()
        made.wait_processed(2)
        hang.set()
        deadline = time.monotonic() + 10
        while made.service.state is not SlotState.STUCK:
            assert time.monotonic() < deadline, "the hang was not noticed"
            made.service.tick(time.monotonic())
            time.sleep(0.1)
        assert any("hangs in an invoke" in m for m in made.messages("model"))
        hang.clear()
        released.set()
        deadline = time.monotonic() + 10
        while made.service.state is not SlotState.SERVING:
            assert time.monotonic() < deadline, "the slot did not come back from stuck"
            made.service.tick(time.monotonic())
            time.sleep(0.1)
        made.wait_processed(2)
    finally:
        released.set()
        made.service.stop(time.monotonic() + 2)


def test_stop_closes_every_model_it_loaded(harness, closed):
    harness.service.start()
    harness.service.load_candidate(MODELS / "digits-det-onnx")
    harness.service.activate()
    harness.service.load_candidate(MODELS / "digits-cls-tflite")
    harness.service.stop(time.monotonic() + 2)
    assert harness.service.state is SlotState.STOPPED
    assert sorted(m.bundle.path.name for m in closed) == [
        "digits-cls-tflite",
        "digits-det-onnx",
        "digits-det-tflite",
    ]
