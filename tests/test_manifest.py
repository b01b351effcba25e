"""Manifest validation: every malformed manifest is refused with a message that names the key."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from agent.inference.manifest import Manifest
from agent.validation import describe_validation_error

SHA = "0" * 64
GOOD: dict[str, Any] = {
    "schema": 1,
    "name": "digits-cls",
    "version": 3,
    "task": "classification",
    "model": "model.tflite",
    "labels": "labels.txt",
    "input": {"kind": "image", "width": 32, "height": 32, "mean": [0], "std": [255]},
    "output": {"top_k": 3},
    "golden": {"tolerance": 0.01, "cases": [{"input": "golden/a.png", "expected": "golden/a.npz"}]},
    "files": {
        p: {"sha256": SHA, "size": 1} for p in ("model.tflite", "labels.txt", "golden/a.png", "golden/a.npz")
    },
}


def variant(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        data[key] = value
    return data


def error_text(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(data)
    return describe_validation_error(info.value, "manifest.json")


def test_good_manifest_round_trips_through_json():
    manifest = Manifest.model_validate(GOOD)
    assert manifest.runtime == "litert"
    assert Manifest.model_validate(manifest.to_json_dict()) == manifest


def test_unknown_task_is_refused():
    assert "task" in error_text(variant(task="pose-estimation"))


def test_unknown_runtime_is_refused_by_file_type():
    data = variant(model="model.pt")
    data["files"]["model.pt"] = {"sha256": SHA, "size": 1}
    assert "unknown runtime for model file 'model.pt'" in error_text(data)


@pytest.mark.parametrize("path", ["../model.tflite", "/etc/passwd", "a/../../b.tflite", "golden\\x.png"])
def test_paths_that_escape_the_bundle_are_refused(path):
    data = variant(model=path)
    assert "plain relative path" in error_text(data) or "unknown runtime" in error_text(data)


def test_file_used_but_not_listed_is_refused():
    data = variant()
    del data["files"]["labels.txt"]
    assert "'labels.txt' is used by the manifest but not listed" in error_text(data)


def test_unknown_key_is_refused_with_its_path():
    data = variant(output={"top_k": 3, "topk": 4})
    assert "manifest.json: output.classification.topk: unknown key" in error_text(data)


def test_output_parameters_of_another_task_are_refused():
    text = error_text(variant(output={"format": "yolo"}))
    assert "format" in text and "unknown key" in text


def test_bad_sha256_and_negative_size_are_refused():
    data = variant()
    data["files"]["model.tflite"] = {"sha256": "abc", "size": -1}
    text = error_text(data)
    assert "sha256" in text and "size" in text


def test_mean_with_wrong_channel_count_is_refused():
    data = variant(input={"kind": "image", "width": 8, "height": 8, "mean": [1, 2]})
    assert "mean has 2 values, expected 1 or 3" in error_text(data)


def test_detection_needs_an_image_input():
    data = variant(
        task="detection", output={"format": "ssd"}, input={"kind": "window", "length": 10, "channels": ["x"]}
    )
    assert "detection model needs an image input" in error_text(data)


def test_a_manifest_without_new_fields_is_written_without_them_for_older_agents():
    written = Manifest.model_validate(GOOD).to_json_dict()
    assert "input_shapes" not in written and "outputs" not in written["golden"]


def test_pinned_input_shapes_round_trip_and_sizes_below_one_are_refused():
    pinned = Manifest.model_validate(variant(input_shapes={"x": [1, 3, 48, 192]}))
    assert pinned.input_shapes == {"x": (1, 3, 48, 192)}
    assert Manifest.model_validate(pinned.to_json_dict()) == pinned
    assert "input_shapes" in error_text(variant(input_shapes={"x": [1, 0, 48]}))
    assert "input_shapes" in error_text(variant(input_shapes={"x": []}))


def test_per_output_golden_limits_take_precedence_and_a_golden_without_any_limit_is_refused():
    limits = [{"name": "probs", "atol": 0.001, "rtol": 0.02, "range": 1.0}]
    golden = {**GOOD["golden"], "outputs": limits}
    manifest = Manifest.model_validate(variant(golden=golden))
    assert manifest.golden is not None and manifest.golden.allowed(0) == pytest.approx(0.021)
    with pytest.raises(ValueError, match="limits name 1 outputs"):
        manifest.golden.allowed(1)
    assert "give per-output limits" in error_text(variant(golden={"cases": GOOD["golden"]["cases"]}))
    zero = [{"atol": 0.0, "rtol": 0.0, "range": 1.0}]
    assert "must be > 0" in error_text(variant(golden={"cases": GOOD["golden"]["cases"], "outputs": zero}))
