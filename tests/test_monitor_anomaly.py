"""Anomaly episodes: rising-edge events, cooldown while an anomaly lasts, hysteresis against flapping."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS, SAMPLES

from agent.inference import Model
from agent.inference.decode import (
    AnomalyResult,
    ClassificationResult,
    Detection,
    DetectionResult,
    Label,
    RawResult,
    Result,
)
from agent.inference.inputs import read_csv, sliding_windows
from agent.inference.manifest import WindowInput
from agent.monitor.anomaly import AnomalyRules, AnomalyTracker, assess


def _score(value: float, threshold: float = 0.2) -> Result:
    return AnomalyResult(score=value, threshold=threshold, anomaly=value > threshold)


def _run(tracker: AnomalyTracker, scores: list[float], period_s: float = 1.0) -> list[tuple[float, str]]:
    events: list[tuple[float, str]] = []
    for index, value in enumerate(scores):
        event = tracker.update(_score(value), now=index * period_s, seq=index)
        if event is not None:
            events.append((index * period_s, event.phase))
    return events


def test_a_persisting_anomaly_fires_on_the_rising_edge_then_once_per_cooldown() -> None:
    tracker = AnomalyTracker(AnomalyRules(cooldown_s=10.0, clear_s=0.0))
    events = _run(tracker, [0.1] * 3 + [0.5] * 25 + [0.1] * 5)
    assert events == [(3.0, "start"), (13.0, "ongoing"), (23.0, "ongoing"), (30.0, "end")]
    assert tracker.episodes == 1 and not tracker.active


def test_single_normal_frames_inside_an_anomaly_do_not_split_the_episode() -> None:
    tracker = AnomalyTracker(AnomalyRules(cooldown_s=100.0, clear_after=3))
    flapping = [0.5, 0.1, 0.5, 0.1, 0.1, 0.5, 0.1, 0.5] * 5  # never three normal results in a row
    events = _run(tracker, flapping, period_s=0.1)
    assert events == [(0.0, "start")]
    assert tracker.active and tracker.episodes == 1


def test_rise_after_debounces_a_single_noisy_result() -> None:
    tracker = AnomalyTracker(AnomalyRules(rise_after=2))
    assert _run(tracker, [0.1, 0.9, 0.1, 0.1, 0.9, 0.1]) == []
    assert _run(AnomalyTracker(AnomalyRules(rise_after=2)), [0.1, 0.9, 0.9]) == [(2.0, "start")]


def test_a_new_episode_after_a_clear_fires_again() -> None:
    tracker = AnomalyTracker(AnomalyRules(cooldown_s=60.0, clear_after=2, clear_s=0.0))
    events = _run(tracker, [0.5, 0.1, 0.1, 0.5])
    assert [phase for _, phase in events] == ["start", "end", "start"]
    assert tracker.episodes == 2


def test_end_event_can_be_turned_off() -> None:
    tracker = AnomalyTracker(AnomalyRules(clear_after=1, report_end=False))
    assert _run(tracker, [0.5, 0.1]) == [(0.0, "start")]


def test_severity_is_critical_far_above_the_threshold_and_evidence_is_json_ready() -> None:
    tracker = AnomalyTracker(AnomalyRules(critical_ratio=3.0))
    event = tracker.update(_score(0.9, threshold=0.2), now=0.0, seq=42)
    assert event is not None
    assert event.severity == "critical" and event.type == "anomaly" and event.wants_snapshot
    assert event.evidence["score"] == pytest.approx(0.9)
    assert event.evidence["ratio"] == pytest.approx(4.5)
    assert event.evidence["seq"] == 42
    mild = AnomalyTracker().update(_score(0.3), now=0.0)
    assert mild is not None and mild.severity == "warning"


def test_a_configured_detection_label_above_min_score_counts_as_an_anomaly() -> None:
    rules = AnomalyRules(labels=("person",), min_score=0.6)
    box = (0.0, 0.0, 10.0, 10.0)
    weak = DetectionResult(detections=(Detection(0, "person", 0.4, box, box),))
    other = DetectionResult(detections=(Detection(1, "cat", 0.9, box, box),))
    strong = DetectionResult(
        detections=(Detection(1, "cat", 0.9, box, box), Detection(0, "person", 0.8, box, box))
    )
    assert not assess(weak, rules).anomalous
    assert not assess(other, rules).anomalous
    finding = assess(strong, rules)
    assert finding.anomalous and finding.evidence["matches"] == [{"label": "person", "score": 0.8}]
    assert assess(strong.to_dict(), rules).anomalous  # the JSON form works the same


def test_only_the_top_classification_label_counts() -> None:
    rules = AnomalyRules(labels=("fall",), min_score=0.5)
    top_fall = ClassificationResult(labels=(Label(3, "fall", 0.7), Label(0, "walk", 0.2)))
    second_fall = ClassificationResult(labels=(Label(0, "walk", 0.6), Label(3, "fall", 0.55)))
    assert assess(top_fall, rules).anomalous
    assert not assess(second_fall, rules).anomalous


def test_without_labels_classification_and_raw_results_are_never_anomalies() -> None:
    rules = AnomalyRules()
    assert not assess(ClassificationResult(labels=(Label(0, "x", 1.0),)), rules).anomalous
    assert not assess(RawResult(), rules).anomalous
    assert not assess({"task": "anomaly", "score": None, "anomaly": None}, rules).anomalous


def test_the_bundled_autoencoder_on_the_faulty_recording_raises_one_event_not_one_per_window() -> None:
    """Real model, real recording: the faulty walk's windows from the stuck gyro (5.0 s) on are all anomalous."""
    model = Model.load(MODELS / "motion-ae-onnx")
    try:
        contract = model.manifest.input
        assert isinstance(contract, WindowInput)
        channels, length = tuple(contract.channels), contract.length
        clean = sliding_windows(read_csv(SAMPLES / "motion_walking.csv", channels), length, 5)
        faulty = sliding_windows(read_csv(SAMPLES / "motion_faulty.csv", channels), length, 5)
        clean_results = [model.infer(np.ascontiguousarray(w)) for w in clean]
        faulty_results = [model.infer(np.ascontiguousarray(w)) for w in faulty]
    finally:
        model.close()
    assert not any(r.anomaly for r in clean_results)
    tracker = AnomalyTracker(AnomalyRules(cooldown_s=10.0))
    events = [tracker.update(r, now=i * 0.5, seq=i) for i, r in enumerate(clean_results + faulty_results)]
    fired = [e for e in events if e is not None]
    assert fired and fired[0].phase == "start"
    assert fired[0].evidence["seq"] >= len(clean_results)
    anomalous = sum(bool(r.anomaly) for r in faulty_results)
    assert anomalous >= 5
    assert len(fired) == 1  # one start; the episode lasts the rest of the recording, within the cooldown
