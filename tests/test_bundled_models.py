"""The bundled INT8 models through both runtimes: golden self-tests, known answers on real data, float-vs-INT8."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import BUNDLES, FLOATS, MODELS, SAMPLES

from agent.inference import Model, load_bundle
from agent.inference.golden import run_golden
from agent.inference.inputs import load_inputs, read_image
from agent.inference.runtimes import open_backend

EXPECTED = {
    "digits-cls-tflite",
    "digits-cls-onnx",
    "digits-det-tflite",
    "digits-det-onnx",
    "motion-cls-tflite",
    "motion-ae-onnx",
}


def test_all_expected_bundles_are_present():
    assert set(BUNDLES) >= EXPECTED


@pytest.mark.parametrize("name", BUNDLES)
def test_bundled_model_passes_its_golden_self_test(name):
    model = Model.load(MODELS / name)
    report = run_golden(model)
    assert report.cases and report.passed, [vars(c) for c in report.cases]


@pytest.mark.parametrize("name", BUNDLES)
def test_bundled_model_is_int8_small_and_carries_a_drift_reference(name):
    bundle = load_bundle(MODELS / name)
    data = bundle.model_path.read_bytes()
    assert len(data) < 2 * 1024 * 1024
    model = Model(bundle)
    if bundle.manifest.runtime == "litert":
        assert model.backend.inputs[0].dtype.kind in "iu" and model.backend.inputs[0].quantization is not None
    else:
        assert b"QuantizeLinear" in data and b"DequantizeLinear" in data  # QDQ graph
    reference = json.loads((bundle.path / "reference.json").read_text())
    assert (
        reference["samples"] >= 100
        and reference["input"]
        and reference["output"]["task"] == bundle.manifest.task
    )
    assert bundle.manifest.latency_budgets


@pytest.mark.parametrize("name", ["digits-cls-tflite", "digits-cls-onnx"])
def test_digit_classifier_reads_each_sample_digit(name):
    model = Model.load(MODELS / name)
    for digit in range(10):
        result = model.infer(read_image(SAMPLES / f"digit_{digit}.png"))
        assert result.labels[0].label == str(digit), (digit, result.summary())


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("name", ["digits-det-tflite", "digits-det-onnx"])
def test_detector_finds_the_digits_pasted_on_real_photographs(name):
    model = Model.load(MODELS / name)
    scenes = json.loads((SAMPLES / "scenes.json").read_text())["images"]
    found = total = false_positives = 0
    for scene in scenes:
        result = model.infer(read_image(SAMPLES / scene["file"]))
        truths = scene["objects"]
        total += len(truths)
        matched = set()
        for det in result.detections:
            hits = [
                i
                for i, t in enumerate(truths)
                if i not in matched
                and str(t["class"]) == det.label
                and _iou(det.box_norm, tuple(t["box"])) >= 0.5
            ]
            if hits:
                matched.add(hits[0])
            else:
                false_positives += 1
        found += len(matched)
        # boxes come back in the pixels of the source picture, not of the model input
        height, width = read_image(SAMPLES / scene["file"]).shape[:2]
        assert all(
            0 <= d.box[0] < d.box[2] <= width and 0 <= d.box[1] < d.box[3] <= height
            for d in result.detections
        )
    assert found / total >= 0.8, (found, total)
    assert false_positives <= total * 0.25, false_positives


def test_motion_classifier_recognises_held_out_recordings():
    model = Model.load(MODELS / "motion-cls-tflite")
    for activity in model.bundle.labels:
        windows = load_inputs(SAMPLES / f"motion_{activity}.csv", model.manifest.input, hop=10)
        votes = Counter(model.infer(window).labels[0].label for _, window in windows)
        assert votes.most_common(1)[0][0] == activity, (activity, votes)


def test_autoencoder_flags_the_faulty_recording_and_not_the_clean_ones():
    model = Model.load(MODELS / "motion-ae-onnx")
    contract = model.manifest.input
    faulty = [model.infer(w) for _, w in load_inputs(SAMPLES / "motion_faulty.csv", contract, hop=10)]
    assert sum(r.anomaly for r in faulty) >= len(faulty) // 3
    clean = [
        model.infer(w)
        for p in sorted(SAMPLES.glob("motion_*.csv"))
        if "faulty" not in p.name
        for _, w in load_inputs(p, contract, hop=10)
    ]
    assert sum(r.anomaly for r in clean) <= max(1, len(clean) // 20)


def _float_twin(name: str) -> tuple[Model, Model]:
    bundle = load_bundle(MODELS / name)
    twin = next(FLOATS.glob(f"{name}.*[!z]"))  # the float model file, not the .npz
    return Model(bundle), Model(bundle, backend=open_backend(twin))


def _eval_set(name: str) -> dict[str, np.ndarray]:
    with np.load(FLOATS / f"{name}.eval.npz", allow_pickle=True) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("name", ["digits-cls-tflite", "digits-cls-onnx", "motion-cls-tflite"])
def test_int8_classifier_agrees_with_its_float_twin(name):
    int8, floating = _float_twin(name)
    data = _eval_set(name)
    top_int8 = np.array([int8.infer(x).labels[0].index for x in data["x"]])
    top_float = np.array([floating.infer(x).labels[0].index for x in data["x"]])
    agreement = float(np.mean(top_int8 == top_float))
    assert agreement >= 0.97, agreement
    assert float(np.mean(top_int8 == data["y"])) >= 0.85


@pytest.mark.parametrize("name", ["digits-det-tflite", "digits-det-onnx"])
def test_int8_detector_agrees_with_its_float_twin(name):
    int8, floating = _float_twin(name)
    data = _eval_set(name)
    same = total = 0
    for x in data["x"][:150]:
        a, b = int8.infer(x).detections, floating.infer(x).detections
        total += max(len(a), len(b))
        same += sum(any(d.label == e.label and _iou(d.box_norm, e.box_norm) >= 0.5 for e in b) for d in a)
    assert same / max(total, 1) >= 0.85, (same, total)


def test_int8_autoencoder_scores_correlate_with_its_float_twin():
    int8, floating = _float_twin("motion-ae-onnx")
    data = _eval_set("motion-ae-onnx")
    s_int8 = np.array([int8.infer(x).score for x in data["x"]])
    s_float = np.array([floating.infer(x).score for x in data["x"]])
    assert float(np.corrcoef(s_int8, s_float)[0, 1]) >= 0.95
    threshold = int8.manifest.output.threshold
    assert float(np.mean((s_int8 > threshold) == data["y"].astype(bool))) >= 0.85


def test_tflite_and_onnx_classifiers_give_the_same_answers():
    tflite, onnx = Model.load(MODELS / "digits-cls-tflite"), Model.load(MODELS / "digits-cls-onnx")
    xs = _eval_set("digits-cls-tflite")["x"][:200]
    agree = np.mean([tflite.infer(x).labels[0].index == onnx.infer(x).labels[0].index for x in xs])
    assert agree >= 0.97
