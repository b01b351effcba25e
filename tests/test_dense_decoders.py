"""Segmentation maps and landmark models from the MediaPipe wheel, on scikit-image's photographs: the agent's decode
against a reference decode written here in plain Python, and each model through init, verify, bench and the daemon."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli
from daemon_support import run_with_jsonl

from agent.inference import KeypointsResult, Model, SegmentationResult
from agent.inference.dense import SegmentationDecoder
from agent.inference.manifest import SegmentationOutput
from agent.inference.runtimes import TensorSpec
from agent.monitor.features import spec_for

PICTURES = ("astronaut.png", "camera.png", "chelsea.png")

pytest_plugins = ["public_models"]  # the session fixture `public_models`


@pytest.fixture(scope="module")
def bundles(public_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dense")
    astronaut = cv2.imread(str(public_models["astronaut.png"]))
    face = folder / "face.png"  # the face as BlazeFace boxes it, enlarged: what a landmark model is fed
    cv2.imwrite(str(face), astronaut[50:206, 148:304])
    labels = folder / "labels.txt"
    labels.write_text("background\nperson\n")
    samples = [str(public_models[name]) for name in PICTURES]
    seg, mesh = folder / "selfie", folder / "face-mesh"
    run_cli(
        "model", "init", str(public_models["selfie-segmentation.tflite"]), "--task", "segmentation",
        "--labels", str(labels), "--samples", *samples, "--out", str(seg), "--name", "selfie", check=True,
    )  # fmt: skip
    run_cli(
        "model", "init", str(public_models["face-landmark.tflite"]), "--task", "keypoints",
        "--samples", str(face), *samples, "--out", str(mesh), "--name", "face-mesh", check=True,
    )  # fmt: skip
    return {"selfie": seg, "mesh": mesh, "face": face}


def reference_regions(
    probability: np.ndarray, threshold: float, min_area: float
) -> list[tuple[int, tuple[int, ...]]]:
    """(area, (x1, y1, x2, y2)) of the 8-connected regions at or above the threshold, by a breadth-first fill."""
    mask = probability >= threshold
    height, width = mask.shape
    seen = np.zeros_like(mask)
    found = []
    for y0 in range(height):
        for x0 in range(width):
            if not mask[y0, x0] or seen[y0, x0]:
                continue
            queue = deque([(y0, x0)])
            seen[y0, x0] = True
            xs, ys = [], []
            while queue:
                y, x = queue.popleft()
                xs.append(x)
                ys.append(y)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            if len(xs) / mask.size >= min_area:
                found.append((len(xs), (min(xs), min(ys), max(xs) + 1, max(ys) + 1)))
    return sorted(found, key=lambda r: -r[0])


@pytest.mark.parametrize("picture", PICTURES)
def test_the_segmentation_decoder_matches_a_reference_decode_of_the_selfie_model(
    bundles: dict[str, Path],
    public_models: dict[str, Path],
    picture: str,
) -> None:
    model = Model.load(bundles["selfie"])
    try:
        prepared = model.prepare(cv2.imread(str(public_models[picture])))
        raw = model.dequantize(model.invoke(prepared.tensor))
        result = model.decode(raw, prepared)
    finally:
        model.close()
    assert isinstance(result, SegmentationResult)
    probability = raw[0].reshape(256, 256)
    person = float((probability >= 0.5).mean())
    shares = {c.label: c.share for c in result.classes}
    assert shares.get("person", 0.0) == pytest.approx(person) and sum(shares.values()) == pytest.approx(1.0)
    expected = reference_regions(probability, 0.5, 0.001)
    assert [(round(r.share * 256 * 256), r.box_norm) for r in result.regions] == [
        (area, tuple(v / 256 for v in box)) for area, box in expected
    ]
    for region in result.regions:
        x1, y1, x2, y2 = (int(v * 256) for v in region.box_norm)
        inside = probability[y1:y2, x1:x2]
        assert region.label == "person" and 0.5 <= region.score <= 1.0 and inside.max() >= 0.5


def test_the_astronaut_is_one_large_person_region_and_the_background_has_none(
    bundles: dict[str, Path],
) -> None:
    result = run_cli("infer", "--json", "--model", str(bundles["selfie"]), str(bundles["face"]), check=True)
    data = json.loads(result.stdout)["results"][0]["result"]
    assert data["task"] == "segmentation" and data["regions"]
    biggest = data["regions"][0]
    assert biggest["label"] == "person" and biggest["share"] > 0.3
    assert all(r["label"] != "background" for r in data["regions"])


def test_a_multi_class_map_in_nchw_gives_the_regions_of_each_class_but_the_background() -> None:
    scores = np.zeros((1, 3, 20, 40), np.float32)
    scores[0, 0] = 1.0  # background everywhere
    scores[0, 1, 2:6, 3:9] = 5.0  # a class-1 block
    scores[0, 2, 10:18, 20:36] = 5.0  # a class-2 block
    scores[0, 2, 0, 39] = 5.0  # one pixel of class 2: under min_area
    config = SegmentationOutput(activation="softmax", min_area=0.01)
    decoder = SegmentationDecoder(
        config, [TensorSpec("map", (1, 3, 20, 40), np.dtype(np.float32))], ["bg", "a", "b"]
    )
    result = decoder([scores], None)
    assert [(r.label, r.box_norm) for r in result.regions] == [
        ("b", (20 / 40, 10 / 20, 36 / 40, 18 / 20)),
        ("a", (3 / 40, 2 / 20, 9 / 40, 6 / 20)),
    ]
    shares = {c.label: c.share for c in result.classes}
    assert shares["a"] == pytest.approx(24 / 800) and shares["b"] == pytest.approx(129 / 800)
    features = spec_for("image", "segmentation").output_features(result)
    assert features.tolist() == pytest.approx([(24 + 128) / 800, 2, result.regions[0].score])


def test_the_face_mesh_gives_468_landmarks_as_the_bare_runtime_does_with_the_face_present(
    bundles: dict[str, Path],
) -> None:
    model = Model.load(bundles["mesh"])
    try:
        prepared = model.prepare(cv2.imread(str(bundles["face"])))
        raw = model.dequantize(model.invoke(prepared.tensor))
        result = model.decode(raw, prepared)
    finally:
        model.close()
    assert isinstance(result, KeypointsResult)
    mesh = raw[0].reshape(468, 3)[:, :2] / 192.0
    np.testing.assert_allclose([(k.x_norm, k.y_norm) for k in result.keypoints], mesh, atol=1e-6)
    assert result.present and result.presence == pytest.approx(
        1 / (1 + np.exp(-float(raw[1].reshape(-1)[0])))
    )
    points = {k.name: (k.x, k.y) for k in result.keypoints}
    # MediaPipe's mesh: 1 nose tip, 33 and 263 the outer corners of the right and left eye, 13 the upper lip
    assert points["kp33"][0] < points["kp1"][0] < points["kp263"][0]
    assert max(points["kp33"][1], points["kp263"][1]) < points["kp1"][1] < points["kp13"][1]


def test_a_landmark_model_fed_no_face_says_absent(
    bundles: dict[str, Path], public_models: dict[str, Path]
) -> None:
    result = run_cli(
        "infer", "--json", "--model", str(bundles["mesh"]), str(public_models["chelsea.png"]), check=True
    )
    data = json.loads(result.stdout)["results"][0]["result"]
    assert data["task"] == "keypoints" and data["present"] is False and data["presence"] < 0.5


@pytest.mark.parametrize("which", ["selfie", "mesh"])
def test_segmentation_and_landmark_bundles_run_through_verify_bench_and_the_daemon(
    bundles: dict[str, Path], tmp_path: Path, which: str
) -> None:
    bundle = bundles[which]
    assert "golden self-test: PASS" in run_cli("model", "verify", str(bundle), check=True).stdout
    bench = json.loads(
        run_cli("bench", "--json", "--model", str(bundle), "--runs", "5", "--warmup", "1").stdout
    )
    assert bench["stages"]["decode"]["runs"] == 5
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    (pictures / "face.png").write_bytes(bundles["face"].read_bytes())
    toml = f"""
[model]
bundle = "{bundle}"
[source]
type = "images"
folder = "{pictures}"
loop = true
fps = 20
[monitor.anomaly]
labels = ["person"]
"""
    run = run_with_jsonl(toml, 2)
    lines = [record["result"] for record in run.records]
    shot = (
        cv2.imdecode(np.frombuffer(run.snapshots[0], np.uint8), cv2.IMREAD_COLOR) if run.snapshots else None
    )
    assert len(lines) >= 5
    if which == "selfie":
        assert all(r["task"] == "segmentation" and r["regions"] for r in lines)
        # a person region is an anomaly under the rule: its snapshot has the region's box drawn (yellow)
        assert shot is not None
        yellow = (shot[:, :, 0] < 80) & (shot[:, :, 1] > 180) & (shot[:, :, 2] > 180)
        assert yellow.sum() > 100
    else:
        assert all(r["task"] == "keypoints" and r["present"] and len(r["keypoints"]) == 468 for r in lines)
