"""Anchor-based SSD heads (BlazeFace from the MediaPipe wheel) decoded by the agent and, in plain Python loops, by a
reference that follows MediaPipe's SsdAnchorsCalculator and TensorsToDetectionsCalculator, on real pictures."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_clean_error, run_cli
from daemon_support import run_with_jsonl

from agent.errors import ContractError
from agent.inference import Model
from agent.inference.bundle import load_bundle
from agent.inference.results import DetectionResult

KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion"]
OPTIONS = {
    "format": "anchors",
    "activation": "sigmoid",
    "score_clip": 100.0,
    "score_threshold": 0.5,
    "iou_threshold": 0.3,
    "nms": "weighted",
    "keypoints": KEYPOINTS,
    "anchors": {"strides": [8, 16, 16, 16], "min_scale": 0.1484375, "max_scale": 0.75},
}

pytest_plugins = ["public_models"]  # the session fixture `public_models`


@pytest.fixture(scope="module")
def face(public_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BlazeFace bundled by `model init` with its anchor options, letterboxed as MediaPipe feeds it."""
    folder = tmp_path_factory.mktemp("anchors")
    labels = folder / "labels.txt"
    labels.write_text("face\n")
    out = folder / "face-detect"
    run_cli(
        "model", "init", str(public_models["face-detect.tflite"]), "--task", "detection", "--out", str(out),
        "--samples", *(str(public_models[n]) for n in ("astronaut.png", "camera.png", "chelsea.png")),
        "--mean", "127.5", "--std", "127.5", "--resize", "letterbox", "--pad-value", "0",
        "--labels", str(labels), "--output-options", json.dumps(OPTIONS), "--name", "face-detect", check=True,
    )  # fmt: skip
    return out


def reference_anchors(
    strides: list[int], min_scale: float, max_scale: float, size: int
) -> list[tuple[float, ...]]:
    """SsdAnchorsCalculator with aspect ratio 1, interpolated scale ratio 1, offsets 0.5, fixed anchor size."""
    anchors: list[tuple[float, ...]] = []
    layer = 0
    while layer < len(strides):
        count = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            count += 2  # one anchor of the layer's scale, one of the interpolated scale
            last += 1
        cells = math.ceil(size / strides[layer])
        for y in range(cells):
            for x in range(cells):
                for _ in range(count):
                    anchors.append(((x + 0.5) / cells, (y + 0.5) / cells, 1.0, 1.0))
        layer = last
    assert min_scale < max_scale  # only used for anchor sizes, which a fixed anchor size ignores
    return anchors


def reference_decode(regressors: np.ndarray, scores: np.ndarray, size: int) -> list[dict[str, object]]:
    """TensorsToDetectionsCalculator (reverse_output_order, scales = input size, 6 keypoints, clipped sigmoid at
    0.5) and MediaPipe's weighted non-maximum suppression (IoU > 0.3)."""
    anchors = reference_anchors([8, 16, 16, 16], 0.1484375, 0.75, size)
    found = []
    for i, (ax, ay, aw, ah) in enumerate(anchors):
        logit = max(-100.0, min(100.0, float(scores[i][0])))
        score = 1.0 / (1.0 + math.exp(-logit))
        if score < 0.5:
            continue
        row = [float(v) for v in regressors[i]]
        cx, cy = row[0] / size * aw + ax, row[1] / size * ah + ay
        w, h = row[2] / size * aw, row[3] / size * ah
        points = [(row[4 + 2 * k] / size * aw + ax, row[5 + 2 * k] / size * ah + ay) for k in range(6)]
        found.append(
            {"score": score, "box": [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], "points": points}
        )
    found.sort(key=lambda d: -d["score"])

    def iou(a: list[float], b: list[float]) -> float:
        iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    merged = []
    remaining = found
    while remaining:
        top = remaining[0]
        cluster = [d for d in remaining if iou(top["box"], d["box"]) > 0.3]
        total = sum(d["score"] for d in cluster)
        box = [sum(d["box"][j] * d["score"] for d in cluster) / total for j in range(4)]
        points = [
            tuple(sum(d["points"][k][j] * d["score"] for d in cluster) / total for j in range(2))
            for k in range(6)
        ]
        merged.append({"score": top["score"], "box": box, "points": points})
        remaining = [d for d in remaining if d not in cluster]
    return merged


@pytest.mark.parametrize("picture", ["astronaut.png", "camera.png", "chelsea.png"])
def test_the_anchor_decoder_matches_a_reference_decode_of_blazeface_on_real_pictures(
    face: Path,
    public_models: dict[str, Path],
    picture: str,
) -> None:
    model = Model.load(face)
    try:
        frame = cv2.imread(str(public_models[picture]))
        prepared = model.prepare(frame)
        raw = model.dequantize(model.invoke(prepared.tensor))
        result = model.decode(raw, prepared)
    finally:
        model.close()
    assert isinstance(result, DetectionResult)
    by_width = sorted(raw, key=lambda a: a.shape[-1])
    expected = reference_decode(by_width[1].reshape(896, 16), by_width[0].reshape(896, 1), 128)
    assert len(result.detections) == len(expected)
    for got, want in zip(result.detections, expected, strict=True):
        assert got.score == pytest.approx(want["score"], abs=1e-5)
        np.testing.assert_allclose(got.box_norm, want["box"], atol=1e-5)
        np.testing.assert_allclose([(k.x_norm, k.y_norm) for k in got.keypoints], want["points"], atol=1e-5)
        assert [k.name for k in got.keypoints] == KEYPOINTS


def test_blazeface_finds_the_astronaut_s_face_with_its_landmarks_where_a_face_has_them(
    face: Path,
    public_models: dict[str, Path],
) -> None:
    result = run_cli("infer", "--json", "--model", str(face), str(public_models["astronaut.png"]), check=True)
    (detection,) = json.loads(result.stdout)["results"][0]["result"]["detections"]
    x1, y1, x2, y2 = detection["box"]
    assert detection["label"] == "face" and detection["score"] > 0.8
    assert 140 < x1 < x2 < 300 and 50 < y1 < y2 < 220 and 60 < x2 - x1 < 140  # Eileen Collins' face, 512x512
    points = {k["name"]: (k["x"], k["y"]) for k in detection["keypoints"]}
    assert all(x1 - 10 <= x <= x2 + 10 and y1 - 10 <= y <= y2 + 10 for x, y in points.values())
    assert points["right_eye"][0] < points["left_eye"][0]  # the subject's right eye is on the picture's left
    assert (
        max(points["right_eye"][1], points["left_eye"][1]) < points["nose_tip"][1] < points["mouth_center"][1]
    )
    cat = run_cli("infer", "--json", "--model", str(face), str(public_models["chelsea.png"]), check=True)
    assert json.loads(cat.stdout)["results"][0]["result"]["detections"] == []


def test_anchor_options_that_make_another_anchor_count_are_refused_at_load(
    face: Path, tmp_path: Path
) -> None:
    manifest = json.loads((face / "manifest.json").read_text())
    manifest["output"]["anchors"]["strides"] = [8, 16, 16]
    bundle = tmp_path / "b"
    shutil.copytree(face, bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ContractError, match="the anchor options make 768 anchors; the model's outputs have 896"
    ):
        Model(load_bundle(bundle))
    assert_clean_error(run_cli("model", "verify", str(bundle)), "the anchor options make 768 anchors")


def test_an_anchor_detector_through_verify_bench_and_the_daemon(
    face: Path,
    public_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    assert "golden self-test: PASS" in run_cli("model", "verify", str(face), check=True).stdout
    bench = json.loads(
        run_cli("bench", "--json", "--model", str(face), "--runs", "5", "--warmup", "1").stdout
    )
    assert bench["stages"]["decode"]["runs"] == 5
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        (pictures / name).write_bytes(public_models[name].read_bytes())
    toml = f"""
[model]
bundle = "{face}"
[source]
type = "images"
folder = "{pictures}"
fps = 20
"""
    lines = run_with_jsonl(toml, 2).records
    faces = [r["result"]["detections"] for r in lines if r["result"]["detections"]]
    assert lines and faces and all(len(d) == 1 and len(d[0]["keypoints"]) == 6 for d in faces)
    assert any(not r["result"]["detections"] for r in lines)  # the cat


def test_anchor_sizes_follow_the_aspect_ratios_and_the_interpolated_scale_when_not_fixed() -> None:
    from agent.inference.anchors import generate_anchors
    from agent.inference.manifest import AnchorOptions

    options = AnchorOptions(
        strides=[32, 64], min_scale=0.2, max_scale=0.4, aspect_ratios=[1.0, 2.0], fixed_anchor_size=False
    )
    anchors = generate_anchors(options, 64, 64)
    assert anchors.shape == (2 * 2 * 3 + 1 * 1 * 3, 4)  # a 2x2 grid then a 1x1 grid, 3 anchors a cell
    first = anchors[:3]
    np.testing.assert_allclose(first[:, :2], [[0.25, 0.25]] * 3)
    np.testing.assert_allclose(
        first[:, 2:], [[0.2, 0.2], [0.2 * math.sqrt(2), 0.2 / math.sqrt(2)], [math.sqrt(0.08)] * 2], rtol=1e-6
    )
    last = anchors[-1]  # the last layer's interpolated anchor reaches towards scale 1
    np.testing.assert_allclose(last, [0.5, 0.5, math.sqrt(0.4), math.sqrt(0.4)], rtol=1e-6)
