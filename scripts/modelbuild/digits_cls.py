"""`digits-cls`: handwritten digit classifier, as an INT8 TFLite bundle and a QDQ ONNX bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import datasets, keras_models, onnx_export, runtime
from .metrics import accuracy, top1_agreement
from .specs import Spec, make_spec, rounded, save_npz, write_spec

SIZE = 32
LABELS = [str(d) for d in range(10)]
OUTPUT = {"top_k": 3, "activation": "none"}


def build(stage: Path, split: datasets.DigitSplit, rng: np.random.Generator) -> list[Spec]:
    """Train the classifier, convert it to both runtimes, measure float vs INT8, write files and specs."""
    copies = 5
    train_src = np.concatenate(
        [datasets.render_digits(split.train_x, SIZE)]
        + [datasets.augment_digits(split.train_x, rng, SIZE) for _ in range(copies)]
    )
    train_y = np.tile(split.train_y, copies + 1)
    eval_src = datasets.render_digits(split.test_x, SIZE)
    eval_aug = datasets.augment_digits(split.test_x, rng, SIZE)
    samples_src = train_src[rng.choice(len(train_src), size=256, replace=False)]

    nhwc = runtime.image_contract(SIZE, SIZE, "NHWC")
    nchw = runtime.image_contract(SIZE, SIZE, "NCHW")
    model = keras_models.build_digit_classifier(SIZE, len(LABELS))
    losses = keras_models.fit(
        model,
        runtime.preprocess_images(train_src, nhwc),
        train_y,
        "sparse_categorical_crossentropy",
        epochs=6,
        batch_size=64,
        learning_rate=3e-3,
    )

    samples = save_npz(stage / "digits-cls.samples.npz", x=samples_src)
    evaluation = save_npz(stage / "digits-cls.eval.npz", x=eval_src, y=split.test_y)
    x_eval = runtime.preprocess_images(eval_src, nhwc)
    x_aug = runtime.preprocess_images(eval_aug, nhwc)
    keras_probs = model.predict(x_eval, verbose=0)
    base = {
        "train_loss": losses[-1],
        "keras_accuracy": accuracy(keras_probs, split.test_y),
        "keras_accuracy_augmented": accuracy(model.predict(x_aug, verbose=0), split.test_y),
        "eval_samples": len(eval_src),
    }

    calibration = runtime.preprocess_images(samples_src, nhwc)
    (stage / "digits-cls.float.tflite").write_bytes(runtime.keras_to_tflite(model, None))
    (stage / "digits-cls.int8.tflite").write_bytes(runtime.keras_to_tflite(model, calibration))
    tflite_metrics = _compare(
        runtime.TfliteRunner(stage / "digits-cls.float.tflite"),
        runtime.TfliteRunner(stage / "digits-cls.int8.tflite"),
        x_eval,
        x_aug,
        split.test_y,
    )

    onnx_model = onnx_export.keras_to_onnx(model, "image", "probs")
    diff = onnx_export.max_abs_diff(onnx_model, model, x_eval, lambda x: x.transpose(0, 3, 1, 2).copy())
    if diff >= 1e-4:
        raise RuntimeError(f"digits-cls ONNX graph differs from Keras by {diff}")
    runtime.save_onnx(onnx_model, stage / "digits-cls.float.onnx")
    runtime.quantize_onnx(
        stage / "digits-cls.float.onnx",
        stage / "digits-cls.int8.onnx",
        runtime.preprocess_images(samples_src, nchw),
    )
    onnx_metrics = _compare(
        runtime.OnnxRunner(stage / "digits-cls.float.onnx"),
        runtime.OnnxRunner(stage / "digits-cls.int8.onnx"),
        runtime.preprocess_images(eval_src, nchw),
        runtime.preprocess_images(eval_aug, nchw),
        split.test_y,
    )

    specs = [
        make_spec(
            bundle="digits-cls-tflite",
            name="digits-cls",
            task="classification",
            model_file="digits-cls.int8.tflite",
            float_model_file="digits-cls.float.tflite",
            labels=LABELS,
            input_contract=nhwc,
            output=OUTPUT,
            samples=samples,
            evaluation=evaluation,
            metrics=rounded({**base, **tflite_metrics}),
        ),
        make_spec(
            bundle="digits-cls-onnx",
            name="digits-cls",
            task="classification",
            model_file="digits-cls.int8.onnx",
            float_model_file="digits-cls.float.onnx",
            labels=LABELS,
            input_contract=nchw,
            output=OUTPUT,
            samples=samples,
            evaluation=evaluation,
            metrics=rounded({**base, **onnx_metrics, "onnx_vs_keras_max_abs_diff": diff}),
        ),
    ]
    for spec in specs:
        write_spec(stage, spec)
    return specs


def _compare(
    float_model: runtime.TfliteRunner | runtime.OnnxRunner,
    int8_model: runtime.TfliteRunner | runtime.OnnxRunner,
    x_eval: np.ndarray,
    x_aug: np.ndarray,
    labels: np.ndarray,
) -> dict[str, float]:
    """Accuracy of a float and an INT8 model on the held-out digits (plain and augmented renders)
    and how often their top-1 answers agree."""
    float_probs, int8_probs = float_model(x_eval)[0], int8_model(x_eval)[0]
    float_aug, int8_aug = float_model(x_aug)[0], int8_model(x_aug)[0]
    return {
        "float_accuracy": accuracy(float_probs, labels),
        "int8_accuracy": accuracy(int8_probs, labels),
        "top1_agreement": top1_agreement(float_probs, int8_probs),
        "float_accuracy_augmented": accuracy(float_aug, labels),
        "int8_accuracy_augmented": accuracy(int8_aug, labels),
        "top1_agreement_augmented": top1_agreement(float_aug, int8_aug),
        "max_abs_prob_diff": float(np.abs(float_probs - int8_probs).max()),
    }
