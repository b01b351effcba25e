"""Drift against the bundled references, with the bundled models and real inputs (samples, held-out sets)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np
import pytest
from conftest import FLOATS, MODELS, SAMPLES

from agent.events import AgentEvent
from agent.inference import Model
from agent.inference.decode import AnomalyResult, ClassificationResult, Label, Result
from agent.inference.inputs import read_csv, read_image, sliding_windows
from agent.inference.manifest import ImageInput
from agent.inference.reference import DriftReference, compute_reference, image_channels
from agent.monitor.drift import DriftMonitor, _thumbnail, merge_groups, psi
from agent.types import Array


def _reference(bundle: str) -> DriftReference:
    return DriftReference.model_validate_json((MODELS / bundle / "reference.json").read_text())


def _motion_windows(hop: int = 10) -> list[Array]:
    """Windows of the four clean bundled recordings (one per activity), in the reference's channel order."""
    channels = tuple(c.name for c in _reference("motion-cls-tflite").input)
    windows = []
    for activity in ("badminton", "running", "standing", "walking"):
        samples = read_csv(SAMPLES / f"motion_{activity}.csv", channels)
        windows += [np.ascontiguousarray(w) for w in sliding_windows(samples, 50, hop)]
    return windows


def _offset(windows: Iterable[Array], reference: DriftReference, std_units: float) -> list[Array]:
    stds = np.array([c.std for c in reference.input], np.float32)
    return [w + std_units * stds for w in windows]


def _run(
    monitor: DriftMonitor, inputs: list[Array], results: list[Result] | None = None
) -> list[AgentEvent]:
    events = []
    for index, data in enumerate(inputs):
        event = monitor.observe(data, results[index] if results is not None else None)
        if event is not None:
            events.append(event)
    return events


def _infer(bundle: str, inputs: list[Array]) -> list[Result]:
    model = Model.load(MODELS / bundle)
    try:
        return [model.infer(data) for data in inputs]
    finally:
        model.close()


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    small = psi([25, 25, 25, 25], [28, 25, 25, 22])
    large = psi([25, 25, 25, 25], [55, 25, 15, 5])
    assert 0 < small < 0.1 < 0.25 < large


def test_sparse_reference_bins_are_merged_until_each_holds_five_percent() -> None:
    assert merge_groups([1, 1, 1, 50, 30, 1, 1], 0.05) == [0, 0, 0, 0, 1, 1, 1]
    assert merge_groups([0] * 9 + [256], 0.05) == [0] * 10  # one group: the score is always in the top bin


def test_the_four_bundled_motion_recordings_together_do_not_drift() -> None:
    windows = _motion_windows()
    monitor = DriftMonitor(_reference("motion-cls-tflite"), every_n=len(windows))
    events = _run(monitor, windows, _infer("motion-cls-tflite", windows))
    report = monitor.last_report
    assert report is not None and events == []
    assert report.max_psi < 0.1, report.to_dict()
    assert "output.label" in report.psi and report.psi["output.label"] < 0.1
    assert all(abs(shift) < 0.2 for shift in report.mean_shift.values())
    assert not monitor.drifting


def test_a_sensor_offset_of_a_third_of_a_standard_deviation_is_drift() -> None:
    reference = _reference("motion-cls-tflite")
    windows = _offset(_motion_windows(), reference, 0.3)
    monitor = DriftMonitor(reference, every_n=len(windows))
    events = _run(monitor, windows)
    assert len(events) == 1
    event = events[0]
    assert event.type == "drift" and event.phase == "start" and event.severity == "warning"
    evidence = event.evidence
    assert evidence["level"] == "significant" and evidence["worst"].startswith("input.")
    assert all(0.2 < shift < 0.45 for shift in evidence["mean_shift_std"].values())
    assert monitor.drifting


def test_a_stuck_gyro_is_drift_with_a_collapsed_spread() -> None:
    reference = _reference("motion-cls-tflite")
    windows = _motion_windows()
    stuck = []
    for window in windows:
        copy = window.copy()
        copy[:, 5] = 0.25  # gyr_z frozen at one reading
        stuck.append(copy)
    monitor = DriftMonitor(reference, every_n=len(stuck))
    events = _run(monitor, stuck)
    assert len(events) == 1 and events[0].evidence["worst"] == "input.gyr_z"
    ratios = events[0].evidence["std_ratio"]
    assert ratios["gyr_z"] < 0.3 < min(v for k, v in ratios.items() if k != "gyr_z")


def test_drift_state_has_hysteresis_and_does_not_flap_near_the_threshold() -> None:
    reference = _reference("motion-cls-tflite")
    clean = _motion_windows()  # largest PSI 0.097
    slight = _offset(clean, reference, 0.05)  # largest PSI 0.13: between the clear level and the threshold
    strong = _offset(clean, reference, 0.3)
    monitor = DriftMonitor(reference, every_n=len(clean), psi_threshold=0.2, clear_psi=0.11)
    phases = []
    for batch in (clean, slight, strong, slight, slight, strong, clean, slight):
        phases.append([e.phase for e in _run(monitor, batch)])
    assert phases == [[], [], ["start"], [], [], [], ["end"], []]  # no second alarm when it swings back up
    assert monitor.checks == 8 and not monitor.drifting


def test_a_moderate_drift_that_turns_significant_is_reported_once_more() -> None:
    reference = _reference("motion-cls-tflite")
    clean = _motion_windows()
    slight, strong = _offset(clean, reference, 0.05), _offset(clean, reference, 0.3)
    monitor = DriftMonitor(reference, every_n=len(clean), psi_threshold=0.12, clear_psi=0.05)
    events = [_run(monitor, batch) for batch in (slight, strong, strong, slight, strong)]
    phases = [[e.phase for e in batch] for batch in events]
    assert phases == [["start"], ["ongoing"], [], [], []]
    assert "significant" in events[1][0].message


def test_output_drift_alone_is_detected_when_one_class_takes_over() -> None:
    monitor = DriftMonitor(_reference("motion-cls-tflite"), every_n=100)
    standing = ClassificationResult(labels=(Label(2, "standing", 0.99),))
    events = [monitor.observe(None, standing) for _ in range(100)]
    fired = [e for e in events if e is not None]
    assert len(fired) == 1 and fired[0].evidence["worst"] == "output.label"
    assert fired[0].evidence["psi"]["output.label"] > 0.25


def test_held_out_detector_frames_do_not_drift() -> None:
    frames = list(np.load(FLOATS / "digits-det-onnx.eval.npz")["x"])
    monitor = DriftMonitor(_reference("digits-det-onnx"), every_n=len(frames))
    events = _run(monitor, frames, _infer("digits-det-onnx", frames))
    report = monitor.last_report
    assert report is not None and events == []
    assert report.max_psi < 0.2, report.to_dict()
    assert {"output.label", "output.score", "output.count"} <= set(report.psi)


@pytest.mark.parametrize(
    ("change", "sign"),
    [
        (lambda f: cv2.add(f, np.full_like(f, 60)), 1),  # over-exposed: +60 grey levels
        (lambda f: (f * 0.5).astype(np.uint8), -1),  # dusk, or a dirty lens
    ],
    ids=["brighter", "darker"],
)
def test_a_strong_brightness_change_is_drift(change: Callable[[Array], Array], sign: int) -> None:
    frames = [change(f) for f in np.load(FLOATS / "digits-det-onnx.eval.npz")["x"]]
    monitor = DriftMonitor(_reference("digits-det-onnx"), every_n=len(frames))
    events = _run(monitor, frames)
    assert len(events) == 1
    report = monitor.last_report
    assert report is not None and report.level == "significant"
    assert all(np.sign(shift) == sign and abs(shift) > 0.5 for shift in report.mean_shift.values())


def test_the_data_a_reference_was_computed_from_reads_as_no_drift() -> None:
    frames = list(np.load(FLOATS / "digits-det-onnx.eval.npz")["x"][:40])
    contract = ImageInput(kind="image", width=96, height=96)
    reference = compute_reference(contract, "raw", frames, [])
    monitor = DriftMonitor(reference, every_n=len(frames))
    _run(monitor, frames)
    report = monitor.last_report
    assert report is not None
    assert report.max_psi == pytest.approx(0.0, abs=1e-9)
    assert all(shift == pytest.approx(0.0, abs=1e-6) for shift in report.mean_shift.values())


def test_large_frames_are_decimated_to_nearly_the_same_thumbnail() -> None:
    scene = read_image(SAMPLES / "scene_0.png")
    full_hd = cv2.resize(scene, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    fast = _thumbnail(full_hd)
    assert fast is not None
    exact = image_channels(full_hd)
    assert (
        float(np.abs(fast.reshape(-1, 3).astype(np.float32) - exact).mean()) < 6.0
    )  # bins are 16 levels wide


def test_inputs_of_the_wrong_shape_are_skipped_and_counted() -> None:
    monitor = DriftMonitor(_reference("motion-ae-onnx"), every_n=1000)
    monitor.observe(np.zeros((50, 4), np.float32))  # a source with two columns missing
    monitor.observe(np.zeros(7, np.float32))
    assert monitor.skipped == 2
    image_monitor = DriftMonitor(_reference("digits-det-onnx"), every_n=1000)
    image_monitor.observe(np.zeros((4, 4, 2), np.uint8))
    image_monitor.observe(np.zeros((32, 32), np.uint8))  # grey frames are fine
    assert image_monitor.skipped == 1
    assert image_monitor.status()["items_in_window"] == 2


def test_status_is_json_ready_before_and_after_a_check() -> None:
    import json

    monitor = DriftMonitor(_reference("motion-ae-onnx"), every_n=5)
    assert json.loads(json.dumps(monitor.status()))["last"] is None
    for window in _motion_windows()[:5]:
        monitor.observe(window, AnomalyResult(score=0.01, threshold=0.17, anomaly=False))
    status = json.loads(json.dumps(monitor.status(), allow_nan=False))
    assert status["checks"] == 1 and set(status["last"]["psi"]) >= {"input.acc_x", "output.score"}
