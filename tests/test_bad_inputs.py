"""Every bad input the inference core meets gets a clear, typed error (and from the CLI one line, no traceback)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import DATA, SAMPLES, assert_clean_error, edit_manifest, run_cli

from agent.errors import ContractError, IntegrityError, ManifestError, ModelError, RuntimeUnavailable
from agent.inference import Model, load_bundle
from agent.inference.runtimes import open_backend

CLS = ("digits-cls-tflite", "digits-cls-onnx")


@pytest.mark.parametrize("name", CLS)
def test_missing_model_file_is_reported(bundle_copy, name):
    bundle = bundle_copy(name)
    model_file = load_bundle(bundle).model_path
    model_file.unlink()
    with pytest.raises(IntegrityError, match=rf"{model_file.name}: listed in the manifest but missing"):
        load_bundle(bundle)
    assert_clean_error(run_cli("infer", "--model", str(bundle), str(SAMPLES / "digit_3.png")), "missing")


@pytest.mark.parametrize("name", CLS)
def test_truncated_model_file_is_refused_before_the_runtime_sees_it(bundle_copy, name):
    bundle = bundle_copy(name)
    model_file = load_bundle(bundle).model_path
    model_file.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(IntegrityError, match="truncated: 1000 bytes"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", CLS)
def test_model_file_whose_hash_does_not_match_is_refused(bundle_copy, name):
    bundle = bundle_copy(name)
    model_file = load_bundle(bundle).model_path
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 does not match"):
        load_bundle(bundle)
    assert_clean_error(run_cli("model", "verify", str(bundle)), "sha256 does not match")


@pytest.mark.parametrize("name", CLS)
def test_truncated_model_with_a_matching_manifest_is_refused_by_the_runtime(bundle_copy, name):
    bundle = bundle_copy(name)
    manifest = load_bundle(bundle).manifest
    model_file = bundle / manifest.model
    model_file.write_bytes(model_file.read_bytes()[:2000])
    edit_manifest(bundle, rehash=(manifest.model,))
    with pytest.raises(ModelError, match="cannot load this model"):
        Model.load(bundle)


def test_manifest_size_that_does_not_match_the_model_tensor_is_refused(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    edit_manifest(bundle, input={"width": 48, "height": 48})
    with pytest.raises(ContractError, match=r"NHWC image \[1, 48, 48, 3\].*shape \[-?1, 32, 32, 3\]"):
        Model.load(bundle)


def test_manifest_layout_that_does_not_match_the_model_is_refused(bundle_copy):
    bundle = bundle_copy("digits-cls-onnx")
    edit_manifest(bundle, input={"layout": "NHWC"})
    with pytest.raises(ContractError, match="NHWC image"):
        Model.load(bundle)


def test_manifest_output_count_that_does_not_match_the_model_is_refused(bundle_copy):
    bundle = bundle_copy("digits-det-tflite")
    edit_manifest(bundle, output={"format": "ssd"})
    with pytest.raises(ContractError, match="4 outputs"):
        Model.load(bundle)


def test_labels_that_do_not_match_the_output_size_are_refused(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    (bundle / "labels.txt").write_text("zero\none\n")
    edit_manifest(bundle, rehash=("labels.txt",))
    with pytest.raises(ContractError, match="10 class scores but the labels file has 2"):
        Model.load(bundle)


def test_window_length_that_does_not_match_the_model_is_refused(bundle_copy):
    bundle = bundle_copy("motion-cls-tflite")
    edit_manifest(bundle, input={"length": 40})
    with pytest.raises(ContractError, match=r"NTC window \[1, 40, 6\]"):
        Model.load(bundle)


def test_unknown_task_is_refused(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    edit_manifest(bundle, task="segmentation")
    with pytest.raises(ManifestError, match="task"):
        load_bundle(bundle)
    assert_clean_error(run_cli("model", "inspect", str(bundle)), "task")


def test_unknown_runtime_is_refused(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    manifest = load_bundle(bundle).manifest
    (bundle / manifest.model).rename(bundle / "model.pt")
    edit_manifest(bundle, model="model.pt", files={"model.pt": manifest.files[manifest.model].model_dump()})
    with pytest.raises(ManifestError, match=r"unknown runtime for model file 'model\.pt'"):
        load_bundle(bundle)


def test_invalid_json_manifest_names_the_line(bundle_copy):
    bundle = bundle_copy("digits-cls-tflite")
    (bundle / "manifest.json").write_text('{\n  "name": "x",\n  oops\n}')
    assert_clean_error(run_cli("model", "verify", str(bundle)), "invalid JSON at line 3")


def test_undecodable_image_is_reported_and_the_other_files_still_run(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    result = run_cli(
        "infer", "--model", "models/digits-cls-tflite", str(broken), str(SAMPLES / "digit_7.png")
    )
    assert_clean_error(result, "broken.png: not a decodable image")
    assert "digit_7.png" in result.stdout


def test_tensor_of_the_wrong_shape_is_refused(tmp_path):
    window = tmp_path / "short.npy"
    np.save(window, np.zeros((20, 6), np.float32))
    result = run_cli("infer", "--model", "models/motion-cls-tflite", str(window))
    assert_clean_error(result, "short.npy", "shape [time=50, channels=6], got [20, 6]")


def test_unsupported_input_file_type_is_refused(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert_clean_error(
        run_cli("infer", "--model", "models/digits-cls-onnx", str(other)), "unsupported input type"
    )


@pytest.mark.parametrize("fixture", ["custom_op.tflite", "custom_op.onnx"])
def test_model_that_needs_a_custom_op_the_runtime_lacks_is_refused(fixture):
    with pytest.raises(RuntimeUnavailable, match="needs an op it lacks"):
        open_backend(DATA / fixture)


def test_missing_runtime_disables_only_its_own_backend(monkeypatch):
    for module in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
    ):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(RuntimeUnavailable, match="pip install ai-edge-litert"):
        Model.load("models/digits-cls-tflite")
    model = Model.load("models/digits-cls-onnx")
    assert model.infer(np.zeros((32, 32, 3), np.uint8)).task == "classification"


def test_missing_bundle_folder_is_one_clear_line():
    assert_clean_error(run_cli("model", "inspect", "/nonexistent/bundle"), "bundle folder not found")
