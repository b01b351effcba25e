"""Bring your own model: public third-party models (fetched from the wheels that ship them) through `edge-agent model
init | verify | inspect`, `infer` and `bench`, with pinned dynamic shapes, per-output golden limits and tensors out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import MODELS, SAMPLES, assert_clean_error, edit_manifest, run_cli

from agent.errors import ContractError
from agent.inference import Model
from agent.inference.manifest import ImageInput, Manifest
from agent.inference.preprocess import ImagePreprocessor
from agent.inference.runtimes import TensorSpec, open_backend

SCENES = [str(p) for p in sorted(SAMPLES.glob("scene_*.png"))]

pytest_plugins = ["public_models"]  # the session fixture `public_models`


@pytest.fixture(scope="module")
def made(public_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundles drafted by `model init` from the public models, once for this module."""
    folder = tmp_path_factory.mktemp("byom")
    ocr = folder / "ocr-cls"
    run_cli(
        "model", "init", str(public_models["ocr-cls.onnx"]), "--task", "classification", "--out", str(ocr),
        "--samples", *SCENES, "--input-shape", "x=1,3,48,192", "--resize", "pad", "--pad-value", "0",
        "--mean", "127.5", "--std", "127.5", "--name", "ocr-cls", check=True,
    )  # fmt: skip
    face = folder / "face-landmark"
    run_cli(
        "model", "init", str(public_models["face-landmark.tflite"]), "--task", "raw", "--out", str(face),
        "--samples", *SCENES, "--name", "face-landmark", check=True,
    )  # fmt: skip
    return {"ocr": ocr, "face": face, "ocr-model": public_models["ocr-cls.onnx"]}


def test_a_model_with_a_free_input_size_is_refused_by_init_with_the_flag_that_pins_it(
    public_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    result = run_cli(
        "model", "init", str(public_models["ocr-cls.onnx"]), "--task", "classification",
        "--out", str(tmp_path / "b"), "--samples", SCENES[0],
    )  # fmt: skip
    assert_clean_error(result, "input 'x' has a free size [?,3,?,?]", "--input-shape x=1,3,N,N")
    assert not (tmp_path / "b").exists()


def test_a_text_classifier_with_free_height_and_width_runs_pinned_through_verify_inspect_infer_and_bench(
    made: dict[str, Path], tmp_path: Path
) -> None:
    bundle = made["ocr"]
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    assert manifest.input_shapes == {"x": (1, 3, 48, 192)}
    assert isinstance(manifest.input, ImageInput)
    assert (manifest.input.resize, manifest.input.pad_value) == ("pad", 0)
    # pinned at load, the model file not rewritten
    assert (bundle / "model.onnx").read_bytes() == made["ocr-model"].read_bytes()
    verify = json.loads(run_cli("model", "verify", "--json", str(bundle), check=True).stdout)
    assert verify["passed"] and all(len(case["outputs"]) == 1 for case in verify["cases"])
    inspect = json.loads(run_cli("model", "inspect", "--json", str(bundle), check=True).stdout)
    shapes = {t["name"]: t["shape"] for t in inspect["tensors"]}
    assert shapes["x"] == "[1,3,48,192]" and inspect["weights"]["precision"] == "float32"

    saved = tmp_path / "out.npz"
    result = run_cli("infer", "--model", str(bundle), *SCENES[:3], "--save-outputs", str(saved), check=True)
    assert "outputs of 3 input(s) written" in result.stdout
    with np.load(saved, allow_pickle=False) as stored:
        outputs, inputs, names = stored["output_0"], list(stored["inputs"]), list(stored["names"])
    assert outputs.shape == (3, 1, 2) and inputs == [Path(s).name for s in SCENES[:3]]
    # the same tensors as the bare runtime fed by hand with the pinned shape
    session = ort.InferenceSession(str(made["ocr-model"]), providers=["CPUExecutionProvider"])
    model = Model.load(bundle)
    try:
        for index, scene in enumerate(SCENES[:3]):
            tensor = model.prepare(cv2.imread(scene)).tensor
            assert tensor.shape == (1, 3, 48, 192)
            (bare,) = session.run(None, {"x": tensor})
            np.testing.assert_allclose(outputs[index], bare, rtol=1e-5, atol=1e-6)
        assert names == [model.backend.outputs[0].name]
    finally:
        model.close()
    bench = json.loads(
        run_cli("bench", "--json", "--model", str(bundle), "--runs", "5", "--warmup", "1").stdout
    )
    assert bench["stages"]["invoke"]["runs"] == 5 and bench["input"].startswith("synthetic")


def test_a_float16_face_mesh_is_reported_as_float16_and_runs_without_runtime_chatter(
    made: dict[str, Path],
) -> None:
    bundle = made["face"]
    inspect = run_cli("model", "inspect", "--json", str(bundle), check=True)
    weights = json.loads(inspect.stdout)["weights"]
    assert weights["precision"] == "float16" and weights["dequantize_ops"]["DEQUANTIZE"] > 10
    text = run_cli("model", "inspect", str(bundle), check=True)
    assert "weights: float16" in text.stdout and "DEQUANTIZE" in text.stdout
    verify = run_cli("model", "verify", str(bundle), check=True)
    assert "golden self-test: PASS" in verify.stdout
    infer = run_cli("infer", "--json", "--model", str(bundle), SCENES[0], check=True)
    tensors = json.loads(infer.stdout)["results"][0]["result"]["tensors"]
    assert [t["shape"] for t in tensors] == [[1, 1, 1, 1404], [1, 1, 1, 1]]
    bench = run_cli("bench", "--model", str(bundle), "--runs", "5", "--warmup", "1", check=True)
    for result in (inspect, verify, infer, bench):
        assert "XNNPACK" not in result.stderr and "INFO" not in result.stderr, result.stderr


def test_a_tampered_narrow_output_of_a_multi_output_model_fails_verify_where_one_shared_tolerance_passed_it(
    made: dict[str, Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "face"
    shutil.copytree(made["face"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    limits = {limit["name"]: limit for limit in manifest["golden"]["outputs"]}
    presence, mesh = limits["conv2d_31"], limits["conv2d_21"]
    shared = 0.02 * max(presence["range"], mesh["range"])  # the one limit bundles used to get
    moved = min(3.0, shared / 2)
    assert moved > presence["atol"] + presence["rtol"] * presence["range"]
    expected = bundle / "golden" / "case0.expected.npz"
    with np.load(expected) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["output_1"] = arrays["output_1"] + np.float32(moved)  # the face-presence logit, nudged
    np.savez(expected, **arrays)
    edit_manifest(bundle, rehash=("golden/case0.expected.npz",))

    result = run_cli("model", "verify", "--json", str(bundle))
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["passed"]
    failed = [case for case in report["cases"] if not case["passed"]]
    assert [case["input"] for case in failed] == ["golden/case0.png"]
    assert "output 'conv2d_31' deviates" in failed[0]["failure"]
    by_name = {o["name"]: o for o in failed[0]["outputs"]}
    assert by_name["conv2d_21"]["passed"] and not by_name["conv2d_31"]["passed"]

    written = json.loads((bundle / "manifest.json").read_text())
    del written["golden"]["outputs"]
    written["golden"]["tolerance"] = shared
    (bundle / "manifest.json").write_text(json.dumps(written))
    assert run_cli("model", "verify", str(bundle)).returncode == 0  # what a single tolerance let through


def test_pinning_the_free_batch_of_a_litert_model_resizes_its_tensors() -> None:
    path = MODELS / "digits-cls-tflite" / "model.tflite"
    free = open_backend(path)
    name = free.inputs[0].name
    assert free.inputs[0].shape[0] == -1
    pinned = open_backend(path, shapes={name: (3, 32, 32, 3)})
    assert pinned.inputs[0].shape == (3, 32, 32, 3) and pinned.outputs[0].shape == (3, 10)
    batch = np.zeros((3, 32, 32, 3), dtype=pinned.inputs[0].dtype)
    assert pinned.invoke([batch])[0].shape == (3, 10)
    for backend in (free, pinned):
        backend.close()


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"y": (1, 3, 48, 192)}, "a shape is pinned for input 'y', but the model's inputs are 'x'"),
        ({"x": (1, 3, 48)}, "input 'x' has 4 dimensions [?,3,?,?]; the pinned shape [1, 3, 48] has 3"),
        ({"x": (1, 4, 48, 192)}, "dimension 1 is fixed at 3, the pinned shape [1, 4, 48, 192] says 4"),
    ],
)
def test_a_pinned_shape_that_contradicts_the_model_is_refused_naming_what_differs(
    public_models: dict[str, Path],
    shapes: dict[str, tuple[int, ...]],
    message: str,
) -> None:
    with pytest.raises(ContractError) as raised:
        open_backend(public_models["ocr-cls.onnx"], shapes=shapes)
    assert message in str(raised.value)


def test_pad_resizing_keeps_the_aspect_ratio_at_the_top_left_and_pads_right_and_bottom() -> None:
    contract = ImageInput(width=192, height=48, color="BGR", resize="pad", pad_value=7, std=(1.0,))
    spec = TensorSpec("x", (1, 48, 192, 3), np.dtype(np.float32))
    frame = np.full((50, 100, 3), 200, dtype=np.uint8)  # 2:1, the input is 4:1
    tensor, frame_map = ImagePreprocessor(contract, spec)(frame)
    image = tensor[0]
    # 48 rows high, 96 columns wide, then the pad
    assert np.all(image[:, :96] == 200) and np.all(image[:, 96:] == 7)
    assert frame_map.to_frame((0.0, 0.0, 0.5, 1.0)) == pytest.approx((0.0, 0.0, 100.0, 50.0))
