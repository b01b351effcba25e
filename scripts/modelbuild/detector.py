"""`digits-det`: digits pasted on photographs, an anchor-free stride-8 detector (TFLite and ONNX)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets, keras_models, onnx_export, runtime
from .metrics import Detections, decode_ssd, decode_yolo, detection_scores
from .specs import Spec, make_spec, rounded, save_npz, write_spec

SIZE = 96
LABELS = [str(d) for d in range(10)]
SCORE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.45
MAX_DETECTIONS = 10
NMS_SCORE_THRESHOLD = 0.3
YOLO_OUTPUT = {
    "format": "yolo",
    "box_format": "cxcywh",
    "normalized": True,
    "score_threshold": SCORE_THRESHOLD,
    "iou_threshold": IOU_THRESHOLD,
    "max_detections": MAX_DETECTIONS,
}
SSD_OUTPUT = {"format": "ssd", "score_threshold": SCORE_THRESHOLD, "max_detections": MAX_DETECTIONS}


@dataclass(frozen=True)
class Scenes:
    """Scenes in source form with their ground truth (normalised x1, y1, x2, y2 boxes and classes)."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]


def make_scenes(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    digits8: np.ndarray,
    labels: np.ndarray,
    count: int,
    width: int = SIZE,
    height: int = SIZE,
    max_digits: int = 3,
) -> Scenes:
    """Compose ``count`` detection scenes (see ``datasets.make_scene``)."""
    return Scenes(*datasets.make_scenes(rng, photos, digits8, labels, count, width, height, max_digits))


def detect_tflite(runner: runtime.TfliteRunner, x: np.ndarray, score_threshold: float) -> list[Detections]:
    """Run a yolo-layout TFLite detector and decode every image like the agent does."""
    rows = runner(x)[0]
    return [decode_yolo(r, score_threshold, IOU_THRESHOLD, MAX_DETECTIONS) for r in rows]


def detect_onnx(runner: runtime.OnnxRunner, x: np.ndarray) -> list[Detections]:
    """Run the ONNX detector (in-graph NMS, SSD outputs) and read every detection it returns."""
    boxes, classes, scores, count = runner(x)
    return [decode_ssd(b, c, s, n, 0.0) for b, c, s, n in zip(boxes, classes, scores, count, strict=True)]


def build(stage: Path, split: datasets.DigitSplit, rng: np.random.Generator) -> list[Spec]:
    """Train the detector, export it to TFLite (yolo rows) and ONNX (SSD tail), evaluate, write specs."""
    train_photos = datasets.load_photos(datasets.TRAIN_PHOTOS)
    heldout_photos = datasets.load_photos(datasets.HELDOUT_PHOTOS)
    train = make_scenes(rng, train_photos, split.train_x, split.train_y, 4000, max_digits=6)
    calib = make_scenes(rng, train_photos, split.train_x, split.train_y, 256)
    held = make_scenes(rng, heldout_photos, split.test_x, split.test_y, 200)
    nhwc = runtime.image_contract(SIZE, SIZE, "NHWC")
    nchw = runtime.image_contract(SIZE, SIZE, "NCHW")

    trainer = keras_models.build_detector_trainer(SIZE)
    losses = keras_models.fit(
        trainer,
        runtime.preprocess_images(train.images, nhwc),
        keras_models.detection_targets(train.boxes, train.classes),
        keras_models.detection_loss,
        epochs=12,
        batch_size=32,
        learning_rate=5e-3,
    )
    model = keras_models.export_detector(trainer, SIZE)
    x_eval = runtime.preprocess_images(held.images, nhwc)
    fold_diff = float(
        np.abs(model.predict(x_eval, verbose=0) - _sigmoid(trainer.predict(x_eval, verbose=0))).max()
    )
    if fold_diff >= 1e-4:
        raise RuntimeError(f"folding batch norm changed the detector outputs by {fold_diff}")

    calibration = runtime.preprocess_images(calib.images, nhwc)
    (stage / "digits-det.float.tflite").write_bytes(runtime.keras_to_tflite(model, None))
    (stage / "digits-det.int8.tflite").write_bytes(runtime.keras_to_tflite(model, calibration))
    body = onnx_export.keras_to_onnx(model, "image", "rows", batch=1)
    diff = onnx_export.max_abs_diff(body, model, x_eval, lambda x: x.transpose(0, 3, 1, 2).copy())
    if diff >= 1e-4:
        raise RuntimeError(f"digits-det ONNX graph differs from Keras by {diff}")
    body_nodes = [node.name for node in body.graph.node]
    full = onnx_export.append_ssd_tail(body, MAX_DETECTIONS, IOU_THRESHOLD, NMS_SCORE_THRESHOLD)
    runtime.save_onnx(full, stage / "digits-det.float.onnx")
    runtime.quantize_onnx(
        stage / "digits-det.float.onnx",
        stage / "digits-det.int8.onnx",
        runtime.preprocess_images(calib.images, nchw),
        nodes_to_quantize=body_nodes,
    )

    base = {
        "train_loss": losses[-1],
        "eval_scenes": len(held.images),
        "batch_norm_fold_max_abs_diff": fold_diff,
    }
    x_eval_nchw = runtime.preprocess_images(held.images, nchw)
    tflite = {k: runtime.TfliteRunner(stage / f"digits-det.{k}.tflite") for k in ("float", "int8")}
    onnx = {k: runtime.OnnxRunner(stage / f"digits-det.{k}.onnx") for k in ("float", "int8")}
    rows = {k: run(x_eval)[0] for k, run in tflite.items()}
    tflite_metrics = {"int8_vs_float_max_abs_score_diff": float(np.abs(rows["float"] - rows["int8"]).max())}
    onnx_metrics: dict[str, float] = {"onnx_body_vs_keras_max_abs_diff": diff}
    for kind in ("float", "int8"):
        dets = [decode_yolo(r, 0.05, IOU_THRESHOLD, MAX_DETECTIONS) for r in rows[kind]]
        scores = detection_scores(dets, held.boxes, held.classes, SCORE_THRESHOLD)
        tflite_metrics.update({f"{kind}_{key}": value for key, value in scores.items()})
        scores = detection_scores(
            detect_onnx(onnx[kind], x_eval_nchw), held.boxes, held.classes, SCORE_THRESHOLD
        )
        onnx_metrics.update({f"{kind}_{key}": value for key, value in scores.items()})

    evaluation = save_npz(stage / "digits-det.eval.npz", **_padded_ground_truth(held))
    samples = save_npz(stage / "digits-det.samples.npz", x=calib.images)
    specs = [
        make_spec(
            bundle="digits-det-tflite",
            name="digits-det",
            task="detection",
            model_file="digits-det.int8.tflite",
            float_model_file="digits-det.float.tflite",
            labels=LABELS,
            input_contract=nhwc,
            output=YOLO_OUTPUT,
            samples=samples,
            evaluation=evaluation,
            metrics=rounded({**base, **tflite_metrics}),
        ),
        make_spec(
            bundle="digits-det-onnx",
            name="digits-det",
            task="detection",
            model_file="digits-det.int8.onnx",
            float_model_file="digits-det.float.onnx",
            labels=LABELS,
            input_contract=nchw,
            output=SSD_OUTPUT,
            samples=samples,
            evaluation=evaluation,
            metrics=rounded({**base, **onnx_metrics}),
        ),
    ]
    for spec in specs:
        write_spec(stage, spec)
    return specs


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _padded_ground_truth(scenes: Scenes) -> dict[str, np.ndarray]:
    """Evaluation arrays: images ``x``, classes ``y`` padded with -1, ``boxes`` padded with 0, ``counts``."""
    counts = np.array([len(c) for c in scenes.classes], np.int64)
    y = np.full((len(counts), counts.max()), -1, np.int64)
    boxes = np.zeros((len(counts), counts.max(), 4), np.float32)
    for i, (b, c) in enumerate(zip(scenes.boxes, scenes.classes, strict=True)):
        y[i, : len(c)], boxes[i, : len(c)] = c, b
    return {"x": scenes.images, "y": y, "boxes": boxes, "counts": counts}
