"""Calibrated drift: a site baseline and its thresholds, on streams from the shipped data and the bundled models.

The streams (scripts/drift_streams.py) are a fixed camera on a bundled scene, looped BasicMotions recordings with
per-loop gain and noise, and held-out digits; each shift's size is stated there. The ERT itself is measured over 40
false alarms by scripts/bench_monitoring.py (minutes); these tests check what a few thousand items can show.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from itertools import islice

import numpy as np
import pytest
from conftest import MODELS, ROOT

from agent.config import parse_config
from agent.daemon.baseline import BaselineStore, run_job
from agent.errors import ConfigError
from agent.events import AgentEvent
from agent.inference import Model, load_bundle
from agent.inference.reference import DriftReference
from agent.monitor.calibration import calibrate
from agent.monitor.drift import DriftMonitor
from agent.monitor.features import FeatureSpec, spec_for
from agent.monitor.reference import bundle_calibration, spec_of

sys.path.insert(0, str(ROOT / "scripts"))
import drift_streams


@pytest.fixture(scope="module")
def detector() -> Iterator[Model]:
    model = Model(load_bundle(MODELS / "digits-det-tflite"))
    yield model
    model.close()


@pytest.fixture(scope="module")
def autoencoder() -> Iterator[Model]:
    model = Model(load_bundle(MODELS / "motion-ae-onnx"))
    yield model
    model.close()


def _spec(model: Model) -> FeatureSpec:
    manifest = model.manifest
    return spec_of(manifest.input, manifest.task, model.bundle.labels)


def _monitor(model: Model, **kw: object) -> DriftMonitor:
    spec = _spec(model)
    options: dict[str, object] = {
        "every_n": 48,
        "input_every": 4,
        "ert_items": 50_000,
        "baseline_items": 2400,
    }
    options.update(kw)
    return DriftMonitor(spec, **options)  # type: ignore[arg-type]


def _feed(monitor: DriftMonitor, model: Model, items: Iterator[np.ndarray], count: int) -> list[AgentEvent]:
    events = []
    for item in islice(items, count):
        event = monitor.observe(item, model.infer(item))
        if event is not None:
            events.append(event)
        job = monitor.pending()
        if job is not None:  # the daemon runs this on a thread; here in line
            monitor.install(run_job(job), job.generation)
    return events


def test_an_unchanged_camera_raises_no_drift_and_a_darker_scene_raises_one_episode_with_its_evidence(
    detector,
):
    monitor = _monitor(detector)
    frames = drift_streams.camera(seed=3)
    quiet = _feed(monitor, detector, frames, 2400 + 48 * 20)
    assert monitor.state == "watching"
    assert [e for e in quiet if e.phase == "start" and e.evidence.get("against") == "baseline"] == []

    darker = drift_streams.camera(seed=4, shift=drift_streams.SHIFTS["lighting"][1])
    events = _feed(monitor, detector, darker, 48 * 15)
    starts = [e for e in events if e.phase == "start"]
    assert len(starts) == 1, [e.message for e in events]  # one episode, not one event per window
    start = starts[0]
    assert events.index(start) == 0 and start.severity == "warning"
    evidence = start.evidence
    assert evidence["against"] == "baseline"
    assert evidence["statistic"] in evidence["exceeding"]
    assert evidence["ert_items"] == 50_000 and evidence["every_n"] == 48 and evidence["items"] == 48
    assert evidence["input_samples"] == 12 and evidence["baseline_items"] > 0
    assert "input.brightness" in evidence["exceeding"]
    assert evidence["value"] > evidence["threshold"] > 0
    assert "site baseline" in start.message

    back = _feed(monitor, detector, drift_streams.camera(seed=5), 48 * 5)
    assert [e.phase for e in back] == ["end"] and back[0].severity == "info"
    assert not monitor.drifting


@pytest.mark.parametrize("shift", ["blur", "covered-lens", "noise"])
def test_a_camera_shift_is_detected_within_five_windows(detector, shift):
    monitor = _monitor(detector)
    _feed(monitor, detector, drift_streams.camera(seed=7), 2400)
    assert monitor.state == "watching"
    events = _feed(
        monitor, detector, drift_streams.camera(seed=8, shift=drift_streams.SHIFTS[shift][1]), 48 * 5
    )
    assert any(e.phase == "start" for e in events), f"{shift}: no alarm in 5 windows"


@pytest.mark.parametrize("shift", ["sensor-bias", "vibration", "stuck-sensor"])
def test_a_sensor_shift_is_detected_within_five_windows_and_the_unchanged_stream_stays_quiet(
    autoencoder, shift
):
    monitor = _monitor(autoencoder, every_n=40, baseline_items=2000)
    quiet = _feed(monitor, autoencoder, drift_streams.sensor(seed=11), 2000 + 40 * 10)
    assert monitor.state == "watching"
    assert not [e for e in quiet if e.phase == "start" and e.evidence.get("against") == "baseline"]
    stream = drift_streams.sensor(seed=12, shift=drift_streams.SHIFTS[shift][1])
    events = _feed(monitor, autoencoder, stream, 40 * 5)
    assert any(e.phase == "start" for e in events), f"{shift}: no alarm in 5 windows"


def test_thresholds_hold_their_false_alarm_rate_on_held_out_windows_of_the_baseline(autoencoder):
    spec = _spec(autoencoder)
    inputs, outputs = [], []
    for index, window in enumerate(islice(drift_streams.sensor(seed=21), 4000)):
        if index % 4 == 0:
            inputs.append(spec.input_features(window))
        outputs.append(spec.output_features(autoencoder.infer(window)))
    calibration = calibrate(
        spec, np.array(inputs), np.array(outputs), input_step=4, every_n=40, input_every=4, ert_items=400
    )
    assert calibration.window_level == pytest.approx(0.1)
    assert 0 < calibration.level < calibration.window_level  # the budget is shared by the statistics
    assert calibration.block_items > 4  # consecutive windows are correlated; the bootstrap keeps blocks
    assert calibration.held_out_windows == 30
    assert calibration.held_out_alarms <= 9  # ~3 expected at 10 % per window


def test_the_site_differs_from_the_training_data_is_said_once_as_information(detector):
    reference = DriftReference.model_validate_json(
        (MODELS / "digits-det-tflite" / "reference.json").read_bytes()
    )
    spec = _spec(detector)
    bundle = bundle_calibration(reference.features, spec, every_n=48, input_every=4, ert_items=50_000)
    assert bundle is not None and bundle.fingerprint == spec.fingerprint
    monitor = _monitor(detector, bundle=bundle)
    events = _feed(monitor, detector, drift_streams.camera(seed=1), 2400 + 48 * 10)
    told = [e for e in events if e.evidence.get("against") == "bundle"]
    # one fixed scene is a narrow slice of the 96x96 training population: said once, as information, never an alarm
    assert len(told) == 1 and told[0].severity == "info"
    assert "differs from the model's calibration data" in told[0].message
    assert monitor.status()["site_differs"] is True
    assert not [e for e in events if e.severity != "info"]


def test_the_bundled_references_carry_feature_rows_and_calibrated_thresholds():
    for name in ("digits-det-tflite", "digits-cls-onnx", "motion-ae-onnx", "motion-cls-tflite"):
        raw = json.loads((MODELS / name / "reference.json").read_text())
        features = raw["features"]
        model = load_bundle(MODELS / name)
        spec = spec_of(model.manifest.input, model.manifest.task, model.labels)
        assert features["fingerprint"] == spec.fingerprint
        assert len(features["inputs"]) == len(features["outputs"]) == 150
        calibration = features["calibration"]
        assert calibration["every_n"] == 100 and calibration["ert_items"] == 1_000_000
        assert set(calibration["thresholds"]) == {s.name for s in spec.statistics}


def test_a_monitor_resets_to_learning_stored_rows_are_calibrated_again_and_a_stale_calibration_is_refused(
    autoencoder,
):
    monitor = _monitor(autoencoder, every_n=40, baseline_items=800)
    _feed(monitor, autoencoder, drift_streams.sensor(seed=31), 800)
    assert monitor.state == "watching"
    inputs, outputs = monitor.baseline_arrays()
    assert len(outputs) == 800 and len(inputs) == 200
    monitor.reset()
    assert monitor.state == "learning" and monitor.calibration is None
    other = _monitor(autoencoder, every_n=40, baseline_items=800, ert_items=80_000)
    other.resume(inputs, outputs)
    job = other.pending()
    assert other.state == "calibrating" and job is not None and other.pending() is None
    calibration = calibrate(
        job.spec, job.inputs, job.outputs, input_step=4, every_n=40, input_every=4, ert_items=80_000
    )
    other.reset()  # a reset while the job was out: its result is stale
    assert not other.install(calibration, job.generation) and other.state == "learning"


def test_image_features_see_brightness_blur_and_a_covered_lens():
    spec = spec_for("image", "detection", (), ("0", "1"))
    frame = next(drift_streams.camera(seed=0))
    base = spec.input_features(frame)
    dark = spec.input_features(drift_streams.SHIFTS["lighting"][1](frame, np.random.default_rng(0)))
    blurred = spec.input_features(drift_streams.SHIFTS["blur"][1](frame, np.random.default_rng(0)))
    covered = spec.input_features(drift_streams.SHIFTS["covered-lens"][1](frame, np.random.default_rng(0)))
    assert base is not None and dark is not None and blurred is not None and covered is not None
    assert dark[0] < 0.8 * base[0]  # brightness
    assert blurred[2] < base[2] - 0.3 and covered[2] < blurred[2]  # sharpness
    assert abs(sum(base[3:11]) - 1) < 1e-9  # colour shares per channel
    assert spec.input_features(np.zeros((2, 2), np.float32)) is None  # not an image: skipped, no exception


@pytest.mark.parametrize(
    ("drift", "fragment"),
    [
        ({"every_n": 50}, "multiple of input_every"),
        ({"ert_items": 150}, "more than twice every_n"),
        ({"baseline_items": 900}, "at least 10 windows"),
    ],
)
def test_drift_settings_that_cannot_be_calibrated_are_refused_with_a_clear_error(drift, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_config({"monitor": {"drift": drift}})


def test_an_old_config_with_a_psi_threshold_still_loads():
    config = parse_config({"monitor": {"drift": {"psi_threshold": 0.2, "every_n": 300}}})
    assert config.monitor.drift.every_n == 300


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 torn zip", b"not an archive at all"], ids=["empty", "torn-zip", "garbage"]
)
def test_a_stored_baseline_file_that_cannot_be_read_is_ignored_not_raised(tmp_path, autoencoder, content):
    spec = _spec(autoencoder)
    store = BaselineStore(tmp_path)
    (tmp_path / "motion-ae-v1.npz").write_bytes(content)
    assert store.load(spec, "motion-ae", 1, 4) is None


def test_a_stored_baseline_of_another_shape_or_input_step_is_ignored(tmp_path, autoencoder):
    spec = _spec(autoencoder)
    store = BaselineStore(tmp_path)
    np.savez(
        tmp_path / "motion-ae-v1.npz",
        inputs=np.zeros((10, spec.input_size + 1)),
        outputs=np.zeros((40, spec.output_size)),
        fingerprint=np.array(spec.fingerprint),
        input_step=np.array(4),
    )
    assert store.load(spec, "motion-ae", 1, 4) is None  # rows too wide for these features
    np.savez(
        tmp_path / "motion-ae-v1.npz",
        inputs=np.zeros((10, spec.input_size)),
        outputs=np.zeros((40, spec.output_size)),
        fingerprint=np.array(spec.fingerprint),
        input_step=np.array(4),
    )
    assert store.load(spec, "motion-ae", 1, 2) is None  # taken every 4th item, asked for every 2nd
    stored = store.load(spec, "motion-ae", 1, 4)
    assert stored is not None and stored.outputs.shape == (40, spec.output_size) and stored.calibration is None
