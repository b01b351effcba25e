"""`edge-agent model quantize` as a person runs it: a float ONNX model in, the fastest integer format that keeps
agreement with the float model (measured on this machine) out, as a bundle that verifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FLOATS, MODELS, SAMPLES, assert_clean_error, run_cli

DIGITS = [str(p) for p in sorted(SAMPLES.glob("digit_*.png"))]
SCENES = [str(p) for p in sorted(SAMPLES.glob("scene_*.png"))]


@pytest.mark.parametrize(
    ("bundle", "task", "samples", "metric"),
    [
        ("digits-cls-onnx", "classification", DIGITS, "top-1 label"),
        ("digits-det-onnx", "detection", SCENES, "detections matched (IoU >= 0.5)"),
    ],
)
def test_quantize_bundles_the_fastest_format_that_kept_agreement_and_the_bundle_verifies(
    tmp_path: Path, bundle: str, task: str, samples: list[str], metric: str
) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "model", "quantize", str(FLOATS / f"{bundle}.onnx"), "--task", task, "--samples", *samples,
        "--labels", str(MODELS / bundle / "labels.txt"), "--mean", "0", "--std", "255",
        "--out", str(out), "--rounds", "2", "--calls", "5", "--threads", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    trials = report["trials"]
    assert trials[0]["format"] == "float" and trials[0]["kept"] and len(trials) == 7
    assert report["metric"] == metric and report["evaluation_samples"] == len(samples)
    kept = [t for t in trials if t["kept"]]
    (chosen,) = [t for t in trials if t["chosen"]]
    assert chosen["format"] == report["chosen"] and chosen["kept"]
    assert chosen["invoke_ms"] == min(t["invoke_ms"] for t in kept)  # the fastest that agreed, whichever it is
    assert all(t["agreement"] >= 0.99 for t in kept)
    assert all((t["agreement"] is None) == (t["error"] is not None) for t in trials)
    assert run_cli("model", "verify", str(out)).returncode == 0
    inspect = json.loads(run_cli("model", "inspect", "--json", str(out), check=True).stdout)
    precision = inspect["weights"]["precision"]
    assert precision == ("float32" if chosen["format"] == "float" else "int8")
    assert chosen["format"] in inspect["manifest"]["description"]
    assert not list(tmp_path.glob(".bundle.quantize.*"))  # the candidates' work folder is gone


def test_quantize_keeps_the_float_model_when_no_format_can_reach_the_agreement_asked(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = run_cli(
        "model", "quantize", str(FLOATS / "motion-ae-onnx.onnx"), "--task", "anomaly",
        "--samples", str(SAMPLES / "motion_walking.csv"), "--channels", "acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z",
        "--min-agreement", "100%", "--rounds", "1", "--calls", "3", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "the bundle holds the float model" in result.stdout
    assert (out / "model.onnx").read_bytes() == (FLOATS / "motion-ae-onnx.onnx").read_bytes()


def test_quantize_refuses_a_tflite_model_pointing_at_the_workstation_tool(tmp_path: Path) -> None:
    result = run_cli(
        "model", "quantize", str(FLOATS / "digits-cls-tflite.tflite"), "--task", "classification",
        "--samples", DIGITS[0], "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert_clean_error(result, "needs TensorFlow's converter", "scripts/quantize_tflite.py")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--min-agreement", "2", "expected an agreement"), ("--rounds", "0", "expected a whole number >= 1")],
)
def test_quantize_arguments_out_of_range_are_usage_errors(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = run_cli(
        "model", "quantize", str(FLOATS / "digits-cls-onnx.onnx"), "--task", "classification",
        "--samples", DIGITS[0], "--out", str(tmp_path / "b"), flag, value,
    )  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
