"""The shadow tee: a sampled share of live items to a candidate, off the inference thread and within a CPU budget."""

from __future__ import annotations

import time

import cv2
import pytest
from conftest import MODELS, SAMPLES

from agent.inference import Model
from agent.pipeline import ActiveModel, ResultRecord, StageTimes
from agent.pipeline.shadow import ShadowPair, ShadowTee
from agent.sources.base import Item


@pytest.fixture(scope="module")
def models():
    active, candidate = Model.load(MODELS / "digits-cls-tflite"), Model.load(MODELS / "digits-cls-onnx")
    yield active, candidate
    active.close()
    candidate.close()


def records(model: Model, count: int) -> list[ResultRecord]:
    made = []
    for seq in range(count):
        frame = cv2.imread(str(SAMPLES / f"digit_{seq % 10}.png"))
        item = Item(frame, seq, time.time(), time.monotonic(), "frame", "test")
        made.append(
            ResultRecord(item, model.infer(frame), model.name, model.version, StageTimes(0, 0, 0, 0), 0.0)
        )
    return made


def drain(tee: ShadowTee, compared: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while tee.stats.compared < compared:
        assert time.monotonic() < deadline, tee.stats.to_dict()
        time.sleep(0.01)


def test_every_nth_item_is_compared_and_two_runtimes_of_one_model_agree(models):
    active, candidate = models
    pairs: list[ShadowPair] = []
    tee = ShadowTee(ActiveModel(candidate), every_n=2, cpu_share=1.0, on_pair=pairs.append)
    try:
        for record in records(active, 20):
            tee.emit(record)
            drain(tee, tee.stats.offered - tee.stats.skipped_busy - tee.stats.skipped_budget)
    finally:
        tee.close()
    stats = tee.stats.to_dict()
    assert stats["offered"] == 10 and stats["compared"] == 10 and stats["errors"] == 0
    assert stats["agreement"] == 1.0 and len(pairs) == 10
    assert all(pair.seq % 2 == 1 for pair in pairs)
    assert abs(stats["mean_score_delta"]) < 0.05


def test_a_candidate_over_its_cpu_share_is_skipped_not_queued(models, monkeypatch):
    active, candidate = models
    now = [100.0]
    original = Model.infer

    def slow_infer(self, data):
        if self is candidate:
            time.sleep(0.05)
        return original(self, data)

    monkeypatch.setattr(Model, "infer", slow_infer)
    tee = ShadowTee(ActiveModel(candidate), every_n=1, cpu_share=0.1, burst_s=1.0, clock=lambda: now[0])
    try:
        for record in records(active, 10):  # a frozen clock: 0.1 s of credit, 0.05 s per shadow inference
            tee.emit(record)
            drain(tee, tee.stats.offered - tee.stats.skipped_busy - tee.stats.skipped_budget)
        stats = tee.stats.to_dict()
        assert stats["compared"] <= 3 and stats["skipped_budget"] >= 7, stats
        now[0] += 10.0  # time passes: the share earns credit again
        for record in records(active, 2):
            tee.emit(record)
        drain(tee, stats["compared"] + 1)
    finally:
        tee.close()


def test_items_offered_faster_than_the_candidate_runs_replace_each_other(models, monkeypatch):
    active, candidate = models
    original = Model.infer

    def slow_infer(self, data):
        if self is candidate:
            time.sleep(0.2)
        return original(self, data)

    monkeypatch.setattr(Model, "infer", slow_infer)
    tee = ShadowTee(ActiveModel(candidate), every_n=1, cpu_share=1.0, burst_s=10.0)
    try:
        started = time.perf_counter()
        for record in records(active, 10):
            tee.emit(record)
        assert time.perf_counter() - started < 1.0, "emit never waits for the candidate"
    finally:
        tee.close(2.0)
    stats = tee.stats.to_dict()
    assert stats["skipped_busy"] >= 5 and stats["compared"] <= 4, stats


def test_a_failing_candidate_is_counted_as_errors(models, monkeypatch):
    active, candidate = models

    def broken(self, data):
        raise RuntimeError("delegate crashed")

    recs = records(active, 4)  # made before the candidate breaks
    monkeypatch.setattr(Model, "infer", broken)
    tee = ShadowTee(ActiveModel(candidate), every_n=1, cpu_share=1.0)
    try:
        for record in recs:
            tee.emit(record)
            drain(tee, tee.stats.offered - tee.stats.skipped_busy)
    finally:
        tee.close()
    assert tee.stats.errors == len(recs) and tee.stats.to_dict()["agreement"] is None


def test_the_shadow_worker_runs_at_a_lower_priority_and_reports_the_share_it_got(models):
    active, candidate = models
    tee = ShadowTee(ActiveModel(candidate), every_n=1, cpu_share=1.0)
    try:
        for record in records(active, 10):
            tee.emit(record)
            drain(tee, tee.stats.offered - tee.stats.skipped_busy - tee.stats.skipped_budget)
    finally:
        tee.close()
    stats = tee.stats.to_dict()
    assert stats["priority"] == 19, "the scheduler serves the active loop first when the cores are busy"
    assert 0 < stats["share_got"] < 1
