"""The local debug CLI as a person runs it: `edge-agent infer|bench|model inspect|verify|init`."""

from __future__ import annotations

import json

import numpy as np
from conftest import MODELS, SAMPLES, assert_clean_error, edit_manifest, run_cli

from agent.inference import load_bundle


def test_infer_prints_a_readable_table_for_several_images():
    result = run_cli(
        "infer",
        "--model",
        "models/digits-cls-tflite",
        str(SAMPLES / "digit_2.png"),
        str(SAMPLES / "digit_5.png"),
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if "digit_" in line]
    assert len(lines) == 2 and lines[0].split("│")[1].strip() == "2" and lines[1].split("│")[1].strip() == "5"


def test_infer_json_gives_boxes_in_source_pixels():
    scene = json.loads((SAMPLES / "scenes.json").read_text())["images"][0]
    result = run_cli(
        "infer", "--json", "--model", "models/digits-det-onnx", str(SAMPLES / scene["file"]), check=True
    )
    data = json.loads(result.stdout)
    detections = data["results"][0]["result"]["detections"]
    assert detections and {"label", "score", "box", "box_norm"} <= set(detections[0])
    assert data["model"] == "digits-det" and data["results"][0]["latency_ms"] > 0


def test_infer_slides_windows_over_a_csv_recording():
    result = run_cli(
        "infer",
        "--json",
        "--hop",
        "25",
        "--model",
        "models/motion-ae-onnx",
        str(SAMPLES / "motion_walking.csv"),
        check=True,
    )
    results = json.loads(result.stdout)["results"]
    assert len(results) >= 3 and all(r["result"]["task"] == "anomaly" for r in results)


def test_bench_reports_percentiles_for_invoke_and_the_whole_path():
    result = run_cli(
        "bench",
        "--json",
        "--runs",
        "30",
        "--warmup",
        "5",
        "--threads",
        "1",
        "--model",
        "models/digits-cls-onnx",
        check=True,
    )
    data = json.loads(result.stdout)
    for stage in ("invoke", "preprocess", "decode", "full"):
        stats = data["stages"][stage]
        assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert data["stages"]["full"]["p50_ms"] > data["stages"]["invoke"]["p50_ms"]
    assert data["rss_mb"] > 10 and data["input"].startswith("synthetic 480x640x3")
    assert data["budgets"][0]["device_class"] == "rpi4"


def test_bench_table_is_readable():
    result = run_cli(
        "bench", "--runs", "20", "--warmup", "2", "--model", "models/motion-cls-tflite", check=True
    )
    assert "pre-process + invoke + decode" in result.stdout and "RSS" in result.stdout


def test_model_inspect_shows_tensors_and_quantization_from_the_model():
    result = run_cli("model", "inspect", "models/digits-cls-tflite", check=True)
    assert "int8" in result.stdout and "scale" in result.stdout and "zero point" in result.stdout
    data = json.loads(run_cli("model", "inspect", "--json", "models/digits-cls-tflite", check=True).stdout)
    assert data["manifest"]["name"] == "digits-cls" and data["tensors"][0]["kind"] == "input"


def test_model_verify_passes_a_good_bundle():
    result = run_cli("model", "verify", "models/motion-cls-tflite", check=True)
    assert "golden self-test: PASS" in result.stdout


def test_model_verify_fails_with_the_worst_deviation_when_the_golden_output_disagrees(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    case = load_bundle(bundle).manifest.golden.cases[0]
    with np.load(bundle / case.expected) as stored:
        outputs = {k: stored[k] for k in stored.files}
    outputs["output_0"] = outputs["output_0"] + 0.5
    np.savez(bundle / case.expected, **outputs)
    edit_manifest(bundle, rehash=(case.expected,))
    result = run_cli("model", "verify", "--json", str(bundle))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["worst_deviation"] >= 0.49
    assert "golden self-test: FAIL" in run_cli("model", "verify", str(bundle)).stdout


def test_bad_arguments_are_a_usage_error_not_a_traceback():
    result = run_cli("bench", "--model")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_init_turns_a_bare_tflite_file_into_a_verified_bundle(tmp_path):
    source = load_bundle(MODELS / "digits-cls-tflite")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(source.labels) + "\n")
    out = tmp_path / "bundle"
    samples = [str(p) for p in sorted(SAMPLES.glob("digit_*.png"))]
    result = run_cli(
        "model",
        "init",
        str(source.model_path),
        "--task",
        "classification",
        "--labels",
        str(labels),
        "--name",
        "my-digits",
        "--out",
        str(out),
        "--samples",
        *samples,
        check=True,
    )
    assert "review:" in result.stdout and "inferred from the input quantization" in result.stdout
    bundle = load_bundle(out)
    assert bundle.manifest.input.kind == "image" and bundle.manifest.input.layout == "NHWC"
    assert bundle.manifest.input.mean == (0.0,) and bundle.manifest.input.std == (255.0,)
    assert "golden self-test: PASS" in run_cli("model", "verify", str(out), check=True).stdout
    inferred = json.loads(run_cli("infer", "--json", "--model", str(out), samples[4], check=True).stdout)
    assert inferred["results"][0]["result"]["labels"][0]["label"] == "4"
    features = json.loads((out / "reference.json").read_text())["features"]  # the drift monitor's rows
    assert len(features["inputs"]) == len(features["outputs"]) == len(samples)
    calibration = features["calibration"]
    assert calibration["every_n"] == 100 and "output.label" in calibration["thresholds"]


def test_init_drafts_an_nchw_contract_for_an_onnx_model(tmp_path):
    source = load_bundle(MODELS / "digits-cls-onnx")
    out = tmp_path / "onnx-bundle"
    run_cli(
        "model",
        "init",
        str(source.model_path),
        "--task",
        "raw",
        "--out",
        str(out),
        "--samples",
        str(SAMPLES / "digit_1.png"),
        str(SAMPLES / "digit_8.png"),
        check=True,
    )
    bundle = load_bundle(out)
    assert bundle.manifest.input.layout == "NCHW" and bundle.manifest.task == "raw"
    assert "golden self-test: PASS" in run_cli("model", "verify", str(out), check=True).stdout


def test_init_drafts_a_window_contract_from_csv_samples(tmp_path):
    source = load_bundle(MODELS / "motion-ae-onnx")
    out = tmp_path / "ae"
    channels = ",".join(source.manifest.input.channels)
    result = run_cli(
        "model",
        "init",
        str(source.model_path),
        "--task",
        "anomaly",
        "--channels",
        channels,
        "--out",
        str(out),
        "--samples",
        *map(str, sorted(SAMPLES.glob("motion_[!f]*.csv"))),
        check=True,
    )
    assert "mean/std computed from the samples" in result.stdout and "anomaly threshold" in result.stdout
    manifest = load_bundle(out).manifest
    assert manifest.input.layout == "NCT" and manifest.output.mode == "reconstruction"


def test_init_refuses_to_overwrite_a_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = run_cli(
        "model",
        "init",
        "models/digits-cls-tflite/model.tflite",
        "--task",
        "raw",
        "--out",
        str(tmp_path / "x"),
        "--samples",
        str(SAMPLES / "digit_1.png"),
    )
    assert_clean_error(result, "exists and is not empty")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
