"""Anomaly episodes with evidence: a recurring fault is one episode with updates, rules on decoded results say which.

The storm this guards against: the sensor demo (`firmware-config/sensor-demo.toml`) replays the faulty IMU recording in
a loop, 0.5 s a pass; every pass has ten anomalous windows then ten normal ones, and with the episode ending after
three normal results the same `start` (score 0.2623, the pass's first faulty window) and an `end` went out every pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import MODELS, ROOT, SAMPLES

from agent.config import load_config
from agent.daemon.operations import anomaly_rules
from agent.events import AgentEvent
from agent.inference import Model
from agent.inference.decode import Detection, DetectionResult
from agent.monitor.anomaly import AnomalyRules, AnomalyTracker, assess
from agent.monitor.episodes import Episode, Hysteresis
from agent.sources.config import CsvConfig
from agent.sources.csv_replay import CsvReplaySource

DEMO = ROOT / "firmware-config" / "sensor-demo.toml"
PASSES = 40
WINDOW_PERIOD_S = 5 * 0.1 / 20.0  # hop 5 samples of 0.1 s, replayed 20x faster: the demo's pace


def _replay_events(rules: AnomalyRules, passes: int = PASSES) -> tuple[list[AgentEvent], int]:
    """The bundled autoencoder on the faulty recording replayed `passes` times, at the demo's pace (simulated)."""
    config = CsvConfig(
        path=SAMPLES / "motion_faulty.csv", window=50, hop=5, rate="max", loop=True, name="imu"
    )
    source = CsvReplaySource(config)
    model = Model.load(MODELS / "motion-ae-onnx")
    tracker = AnomalyTracker(rules)
    events: list[AgentEvent] = []
    anomalous = 0
    try:
        source.open()
        for index in range(passes * 20):  # 100 samples / hop 5: 20 windows a pass
            window = source.read(1.0)
            assert window is not None
            result = model.infer(np.ascontiguousarray(window))
            anomalous += bool(result.to_dict()["anomaly"])
            event = tracker.update(result, now=index * WINDOW_PERIOD_S, seq=index)
            if event is not None:
                events.append(event)
    finally:
        source.close()
        model.close()
    return events, anomalous


def test_the_sensor_demo_replayed_in_a_loop_is_one_episode_with_updates_not_a_storm() -> None:
    rules = anomaly_rules(load_config(DEMO, environ={}).monitor.anomaly)
    events, anomalous = _replay_events(rules)
    duration_s = PASSES * 20 * WINDOW_PERIOD_S
    phases = [event.phase for event in events]
    assert anomalous >= PASSES * 5  # the fault is there on every pass
    assert phases.count("start") == 1 and phases.count("end") == 0
    assert phases[0] == "start"
    updates = [event for event in events if event.phase == "ongoing"]
    assert 1 <= len(updates) <= duration_s / rules.cooldown_s + 1  # at most one update per cooldown
    last = updates[-1].evidence
    assert last["kind"] == "model" and last["episode"] == 1 and last["updates"] == len(updates)
    assert anomalous // 2 < last["anomalous_results"] <= anomalous and last["peak_score"] >= last["score"]
    json.dumps([event.to_dict() for event in events], allow_nan=False)


def test_without_a_quiet_time_the_same_replay_was_a_storm_of_episodes() -> None:
    """The cause, kept on record: ending an episode after three normal results alone restarts it every pass."""
    events, _ = _replay_events(AnomalyRules(cooldown_s=2.0, clear_s=0.0), passes=10)
    starts = [event for event in events if event.phase == "start"]
    assert len(starts) == 10
    assert {round(event.evidence["score"], 4) for event in starts} == {0.2623}


def test_a_fault_that_comes_back_within_clear_s_continues_the_episode_and_one_after_starts_a_new_one() -> (
    None
):
    episode = Episode(Hysteresis(rise_after=1, clear_after=2, clear_s=5.0, cooldown_s=100.0))
    timeline = [
        (0.0, True),
        (1.0, False),
        (2.0, False),
        (3.0, False),
        (4.0, True),
        (5.0, False),
        (6.0, False),
    ]
    assert [episode.step(breached, now) for now, breached in timeline] == [
        "start", None, None, None, None, None, None,
    ]  # fmt: skip
    assert episode.active and episode.count == 1 and episode.breaches == 2
    assert episode.step(False, 9.0) == "end"  # 2 normal in a row and 5 s since the breach at 4.0
    assert episode.step(True, 20.0) == "start" and episode.count == 2


def test_more_than_max_objects_in_one_frame_is_a_rule_anomaly_that_names_the_rule() -> None:
    box = (0.0, 0.0, 4.0, 4.0)
    crowd = DetectionResult(detections=tuple(Detection(1, "digit", 0.9, box, box) for _ in range(4)))
    few = DetectionResult(detections=crowd.detections[:3])
    rules = AnomalyRules(max_objects=3)
    assert not assess(few, rules).anomalous
    finding = assess(crowd, rules)
    assert finding.anomalous
    assert finding.evidence == {"kind": "rule", "rule": "max_objects", "count": 4, "bound": 3}
    assert assess(crowd.to_dict(), rules).evidence["rule"] == "max_objects"  # the JSON form the same
    event = AnomalyTracker(rules).update(crowd, now=0.0, seq=7)
    assert event is not None and event.evidence["kind"] == "rule" and "4 objects" in event.message


def test_a_listed_class_seen_is_a_rule_anomaly_and_a_model_score_a_model_anomaly() -> None:
    box = (0.0, 0.0, 4.0, 4.0)
    seen = DetectionResult(detections=(Detection(0, "person", 0.8, box, box),))
    finding = assess(seen, AnomalyRules(labels=("person",)))
    assert finding.evidence["kind"] == "rule" and finding.evidence["rule"] == "labels"
    scored = assess({"task": "anomaly", "score": 0.5, "threshold": 0.2, "anomaly": True}, AnomalyRules())
    assert scored.evidence["kind"] == "model"


def test_the_anomaly_config_keys_reach_the_tracker(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        "[monitor.anomaly]\ncooldown_s = 3.0\nrise_after = 2\nclear_after = 4\nclear_s = 7.5\nmax_objects = 5\n"
    )
    rules = anomaly_rules(load_config(path, environ={}).monitor.anomaly)
    assert (rules.cooldown_s, rules.rise_after, rules.clear_after, rules.clear_s, rules.max_objects) == (
        3.0, 2, 4, 7.5, 5,
    )  # fmt: skip
