"""The latest-frame pipeline: single-slot mailbox, the worker, hot model swap under load, bad items, duty cycling."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from conftest import MODELS, SAMPLES

from agent.errors import ModelError
from agent.inference import Model
from agent.pipeline import (
    ActiveModel,
    InferenceLoop,
    LatestMailbox,
    LoopObserver,
    LoopSettings,
    ResultRecord,
    Staged,
    bind_model,
)
from agent.sources.base import Item


def frame_item(frame: np.ndarray, seq: int) -> Item:
    return Item(frame, seq, time.time(), time.monotonic(), "frame", "test")


class Collector(LoopObserver):
    def __init__(self) -> None:
        self.records: list[ResultRecord] = []
        self.errors: list[Exception] = []

    def on_record(self, record: ResultRecord) -> None:
        self.records.append(record)

    def on_error(self, item: Item, problem: Exception) -> None:
        self.errors.append(problem)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    frame = cv2.imread(str(SAMPLES / "scene_0.png"))
    assert frame is not None
    return frame


def wait_until(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_mailbox_keeps_only_the_newest_item_and_counts_the_dropped():
    box: LatestMailbox[int] = LatestMailbox()
    for i in range(5):
        box.put(i)
    assert box.get(0.01) == 4 and box.dropped == 4 and box.put_count == 5
    assert box.get(0.01) is None


def test_mailbox_get_wakes_when_closed():
    box: LatestMailbox[int] = LatestMailbox()
    threading.Timer(0.1, box.close).start()
    start = time.monotonic()
    assert box.get(5.0) is None and time.monotonic() - start < 2.0


def test_slow_model_always_takes_the_newest_frame_and_never_builds_a_queue(scene):
    model = Model.load(MODELS / "digits-det-onnx")
    box: LatestMailbox[Staged] = LatestMailbox()
    seen = Collector()
    loop = InferenceLoop(ActiveModel(model), box, observer=seen)
    loop.start()
    try:
        for seq in range(2000):  # far faster than the model
            loop.deliver(frame_item(scene, seq))
        wait_until(lambda: box.put_count == box.dropped + len(seen.records))
    finally:
        assert loop.stop()
    sequences = [r.item.seq for r in seen.records]
    assert sequences == sorted(sequences) and sequences[-1] == 1999
    assert box.dropped > 0 and box.dropped + len(sequences) == 2000
    assert all(r.age_s < 1.0 for r in seen.records)


def test_hot_swap_under_load_loses_no_more_than_the_frame_in_flight(scene):
    first, second = Model.load(MODELS / "digits-det-tflite"), Model.load(MODELS / "digits-det-onnx")
    box: LatestMailbox[Staged] = LatestMailbox()
    seen = Collector()
    loop = InferenceLoop(ActiveModel(first), box, observer=seen)
    loop.start()
    swaps, produced = 0, 0
    try:
        for seq in range(300):
            loop.deliver(frame_item(scene, seq))
            produced += 1
            time.sleep(0.004)  # a 250 fps source: slower than the model, so only a swap could lose a frame
            if seq % 30 == 15:
                loop.swap(ActiveModel(second if loop.active.model is first else first))
                swaps += 1
        wait_until(lambda: box.put_count == box.dropped + len(seen.records))
    finally:
        assert loop.stop()
    assert box.dropped <= swaps, f"{box.dropped} frames lost over {swaps} swaps"
    runtimes = {r.model_name + str(id(r)) for r in seen.records}
    assert len(runtimes) == len(seen.records) == produced - box.dropped
    # results after a swap come from the new model, with the same answer on the same frame
    answers = {tuple(d.label for d in r.result.detections) for r in seen.records}
    assert len(answers) == 1


def test_the_swap_hook_moves_the_monitors_between_the_same_two_items_as_the_model(scene):
    detector, classifier = Model.load(MODELS / "digits-det-onnx"), Model.load(MODELS / "digits-cls-onnx")

    class Following(Collector):
        bound = "detection"
        mismatched = 0

        def on_record(self, record: ResultRecord) -> None:
            super().on_record(record)
            self.mismatched += record.result.task != self.bound

    box: LatestMailbox[Staged] = LatestMailbox()
    seen = Following()
    loop = InferenceLoop(ActiveModel(detector), box, observer=seen)
    loop.start()
    try:
        for seq in range(200):
            loop.deliver(frame_item(scene, seq))
            time.sleep(0.002)
            if seq % 10 == 5:
                new = classifier if loop.active.model is detector else detector
                task = new.manifest.task
                loop.swap(ActiveModel(new), on_swap=lambda task=task: setattr(seen, "bound", task))
        wait_until(lambda: box.put_count == box.dropped + len(seen.records) + loop.errors)
    finally:
        assert loop.stop()
    assert {r.result.task for r in seen.records} == {"detection", "classification"}
    assert seen.mismatched == 0


def test_swap_returns_the_old_model_which_can_be_restored_at_once(scene):
    first, second = Model.load(MODELS / "digits-cls-tflite"), Model.load(MODELS / "digits-cls-onnx")
    loop = InferenceLoop(ActiveModel(first), LatestMailbox())
    old = loop.swap(ActiveModel(second))
    assert old.model is first and loop.active.model is second
    loop.swap(old)
    assert loop.active.model is first


def test_a_bad_item_is_counted_and_the_loop_goes_on():
    model = Model.load(MODELS / "motion-cls-tflite")
    box: LatestMailbox[Staged] = LatestMailbox()
    seen = Collector()
    loop = InferenceLoop(bind_model(model, "window", None), box, observer=seen)
    loop.start()
    try:
        loop.deliver(Item(np.zeros((7, 2), np.float32), 0, time.time(), time.monotonic(), "window"))
        wait_until(lambda: loop.progress == 1)
        loop.deliver(Item(np.zeros((50, 6), np.float32), 1, time.time(), time.monotonic(), "window"))
        wait_until(lambda: loop.progress == 2)
    finally:
        assert loop.stop()
    assert loop.errors == 1 and len(seen.errors) == 1 and [r.item.seq for r in seen.records] == [1]
    assert "shape" in (loop.last_error or "")


def test_window_channels_are_matched_by_name_whatever_the_source_order():
    model = Model.load(MODELS / "motion-cls-tflite")
    channels = list(model.manifest.input.channels)  # type: ignore[union-attr]
    reordered = [*list(reversed(channels)), "extra"]
    active = bind_model(model, "window", reordered)
    window = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    source_window = np.concatenate([window[:, ::-1], np.zeros((50, 1), np.float32)], axis=1)
    adapted = active.adapt(Item(source_window, 0, 0.0, 0.0, "window"))
    assert np.array_equal(adapted, window)
    with pytest.raises(ModelError, match="channels"):
        bind_model(model, "window", ["acc_x"])


def test_a_model_that_does_not_fit_the_source_is_refused():
    with pytest.raises(ModelError, match="sensor windows"):
        bind_model(Model.load(MODELS / "motion-ae-onnx"), "frame", None)
    with pytest.raises(ModelError, match="images"):
        bind_model(Model.load(MODELS / "digits-cls-tflite"), "window", ["a"])


def test_max_rate_duty_cycles_the_worker(scene):
    model = Model.load(MODELS / "digits-cls-tflite")
    box: LatestMailbox[Staged] = LatestMailbox()
    seen = Collector()
    loop = InferenceLoop(ActiveModel(model), box, observer=seen, settings=LoopSettings(max_rate_hz=20))
    stop = threading.Event()

    def produce() -> None:
        seq = 0
        while not stop.is_set():
            loop.deliver(frame_item(scene, seq))
            seq += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    loop.start()
    producer.start()
    time.sleep(1.0)
    stop.set()
    producer.join()
    assert loop.stop()
    assert 10 <= len(seen.records) <= 25, len(seen.records)


def test_a_staged_window_keeps_its_own_input_for_the_reconstruction_score():
    model = Model.load(MODELS / "motion-ae-onnx")
    rng = np.random.default_rng(1)
    first = rng.standard_normal((50, 6)).astype(np.float32)
    other = (rng.standard_normal((50, 6)) * 40 + 25).astype(np.float32)
    alone = model.infer(first).score
    loop = InferenceLoop(bind_model(model, "window", None), LatestMailbox())
    staged_first = loop._prepare(loop.active, Item(first, 0, 0.0, 0.0, "window"))
    loop._prepare(
        loop.active, Item(other, 1, 0.0, 0.0, "window")
    )  # the capture thread stages the next window
    result = model.decode(model.invoke(staged_first.tensor), staged_first)
    assert result.score == pytest.approx(alone, rel=1e-5)
