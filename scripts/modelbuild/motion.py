"""BasicMotions models: `motion-cls` (INT8 TFLite 1D CNN) and `motion-ae` (QDQ ONNX autoencoder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets, keras_models, onnx_export, runtime
from .metrics import accuracy, anomaly_report, anomaly_scores, top1_agreement
from .specs import Spec, make_spec, rounded, save_npz, write_spec

LENGTH = 50
THRESHOLD_PERCENTILE = 99.5
THRESHOLD_MARGIN = 2.0


@dataclass(frozen=True)
class MotionResult:
    """What the sample writer needs: the data, and the contract the classifier was built with."""

    data: datasets.MotionData
    contract: runtime.Contract


def build(stage: Path, rng: np.random.Generator) -> tuple[list[Spec], MotionResult]:
    """Build both motion bundles; returns their specs and the data used."""
    data = datasets.load_basic_motions()
    flat = data.train_x.reshape(-1, data.train_x.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    samples_src, _ = datasets.random_windows(rng, data.train_x, data.train_y, 256, LENGTH)
    samples = save_npz(stage / "motion.samples.npz", x=samples_src)
    cls_spec, contract = _build_classifier(stage, data, mean, std, samples_src, samples, rng)
    ae_spec = _build_autoencoder(stage, data, mean, std, samples_src, samples, rng)
    return [cls_spec, ae_spec], MotionResult(data, contract)


def _augment(windows: np.ndarray, rng: np.random.Generator, std: np.ndarray) -> np.ndarray:
    """Mild augmentation: per-channel gain of +-10 % and sensor noise of 5 % of the channel std."""
    gain = rng.uniform(0.9, 1.1, size=(len(windows), 1, windows.shape[2]))
    noise = rng.normal(0.0, 0.05, size=windows.shape) * std
    return np.asarray(windows * gain + noise, np.float32)


def _build_classifier(
    stage: Path,
    data: datasets.MotionData,
    mean: np.ndarray,
    std: np.ndarray,
    samples_src: np.ndarray,
    samples: str,
    rng: np.random.Generator,
) -> tuple[Spec, runtime.Contract]:
    """Train the activity classifier on random crops, convert to TFLite float / INT8 and compare."""
    contract = runtime.window_contract(LENGTH, datasets.MOTION_CHANNELS, mean, std, "NTC")
    train_x, train_y = datasets.random_windows(rng, data.train_x, data.train_y, 4000, LENGTH)
    eval_x, eval_y = datasets.strided_windows(data.test_x, data.test_y, LENGTH, 10)
    model = keras_models.build_motion_classifier(LENGTH, len(datasets.MOTION_CHANNELS), len(data.labels))
    losses = keras_models.fit(
        model,
        runtime.preprocess_windows(_augment(train_x, rng, std), contract),
        train_y,
        "sparse_categorical_crossentropy",
        epochs=15,
        batch_size=64,
        learning_rate=3e-3,
    )
    (stage / "motion-cls.float.tflite").write_bytes(runtime.keras_to_tflite(model, None))
    calibration = runtime.preprocess_windows(samples_src, contract)
    (stage / "motion-cls.int8.tflite").write_bytes(runtime.keras_to_tflite(model, calibration))

    x_eval = runtime.preprocess_windows(eval_x, contract)
    keras_probs = model.predict(x_eval, verbose=0)
    float_probs = runtime.TfliteRunner(stage / "motion-cls.float.tflite")(x_eval)[0]
    int8_probs = runtime.TfliteRunner(stage / "motion-cls.int8.tflite")(x_eval)[0]
    metrics = {
        "train_loss": losses[-1],
        "keras_accuracy": accuracy(keras_probs, eval_y),
        "float_accuracy": accuracy(float_probs, eval_y),
        "int8_accuracy": accuracy(int8_probs, eval_y),
        "top1_agreement": top1_agreement(float_probs, int8_probs),
        "max_abs_prob_diff": float(np.abs(float_probs - int8_probs).max()),
        "eval_windows": len(eval_x),
        "eval_recordings": len(data.test_x),
    }
    spec = make_spec(
        bundle="motion-cls-tflite",
        name="motion-cls",
        task="classification",
        model_file="motion-cls.int8.tflite",
        float_model_file="motion-cls.float.tflite",
        labels=data.labels,
        input_contract=contract,
        output={"top_k": 2, "activation": "none"},
        samples=samples,
        evaluation=save_npz(stage / "motion-cls.eval.npz", x=eval_x, y=eval_y),
        metrics=rounded(metrics),
    )
    write_spec(stage, spec)
    return spec, contract


def faulty_eval_set(
    data: datasets.MotionData, std: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out clean windows (y=0) followed by the same windows with one injected fault each (y=1),
    the fault kinds taken in turn; returns (windows, labels, fault kind per window or "none")."""
    clean, _ = datasets.strided_windows(data.test_x, data.test_y, LENGTH, 25)
    kinds = [datasets.FAULT_KINDS[i % len(datasets.FAULT_KINDS)] for i in range(len(clean))]
    faulty = np.stack([datasets.inject_fault(w, k, rng, std) for w, k in zip(clean, kinds, strict=True)])
    x = np.concatenate([clean, faulty]).astype(np.float32)
    y = np.r_[np.zeros(len(clean), np.int64), np.ones(len(faulty), np.int64)]
    return x, y, np.array(["none"] * len(clean) + kinds)


def corrupt(windows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generic corruptions for denoising training, on normalised ``[N, T, C]`` windows: 20 % get a
    noise burst on one channel, 20 % a few impulses, 20 % a stretch of one channel replaced by a
    constant, the rest are left clean."""
    out: np.ndarray = windows.copy()
    t_len, n_ch = windows.shape[1:]
    for window in out:
        draw = rng.random()
        channel = int(rng.integers(n_ch))
        start, span = int(rng.integers(0, t_len - 5)), int(rng.integers(5, 30))
        segment = window[start : start + span, channel]
        if draw < 0.2:
            segment += rng.normal(0.0, rng.uniform(0.5, 3.0), size=len(segment))
        elif draw < 0.4:
            where = rng.choice(t_len, size=int(rng.integers(1, 4)), replace=False)
            window[where, channel] += rng.choice([-1.0, 1.0], size=len(where)) * rng.uniform(
                3, 10, len(where)
            )
        elif draw < 0.6:
            segment[:] = rng.normal()
    return out


def _build_autoencoder(
    stage: Path,
    data: datasets.MotionData,
    mean: np.ndarray,
    std: np.ndarray,
    samples_src: np.ndarray,
    samples: str,
    rng: np.random.Generator,
) -> Spec:
    """Train the denoising autoencoder, export float / QDQ ONNX (NCT), set the threshold from every
    window of the training recordings, evaluate held-out windows with and without injected faults."""
    contract = runtime.window_contract(LENGTH, datasets.MOTION_CHANNELS, mean, std, "NCT")
    ntc = runtime.window_contract(LENGTH, datasets.MOTION_CHANNELS, mean, std, "NTC")
    train_x, _ = datasets.random_windows(rng, data.train_x, data.train_y, 4000, LENGTH)
    clean = runtime.preprocess_windows(_augment(train_x, rng, std), ntc)
    model = keras_models.build_autoencoder(LENGTH, len(datasets.MOTION_CHANNELS))
    losses = keras_models.fit(
        model, corrupt(clean, rng), clean, "mse", epochs=25, batch_size=64, learning_rate=2e-3
    )

    eval_x, eval_y, kinds = faulty_eval_set(data, std, rng)
    onnx_model = onnx_export.keras_to_onnx(model, "window", "reconstruction", channels_first_output=True)
    diff = onnx_export.max_abs_diff(
        onnx_model,
        model,
        runtime.preprocess_windows(eval_x, ntc),
        lambda x: x.transpose(0, 2, 1).copy(),
        lambda y: y.transpose(0, 2, 1),
    )
    if diff >= 1e-4:
        raise RuntimeError(f"motion-ae ONNX graph differs from Keras by {diff}")
    runtime.save_onnx(onnx_model, stage / "motion-ae.float.onnx")
    runtime.quantize_onnx(
        stage / "motion-ae.float.onnx",
        stage / "motion-ae.int8.onnx",
        runtime.preprocess_windows(samples_src, contract),
    )

    runners = {
        "float": runtime.OnnxRunner(stage / "motion-ae.float.onnx"),
        "int8": runtime.OnnxRunner(stage / "motion-ae.int8.onnx"),
    }
    train_windows, _ = datasets.strided_windows(data.train_x, data.train_y, LENGTH, 1)
    x_train = runtime.preprocess_windows(train_windows, contract)
    x_eval = runtime.preprocess_windows(eval_x, contract)
    train_scores = {k: anomaly_scores(x_train, run(x_train)[0]) for k, run in runners.items()}
    eval_scores = {k: anomaly_scores(x_eval, run(x_eval)[0]) for k, run in runners.items()}
    # The deployed model is the INT8 one, so its own scores on the training windows set the threshold.
    threshold = float(np.percentile(train_scores["int8"], THRESHOLD_PERCENTILE) * THRESHOLD_MARGIN)
    metrics: dict[str, float] = {
        "train_loss": losses[-1],
        "onnx_vs_keras_max_abs_diff": diff,
        "threshold": threshold,
        "threshold_percentile": THRESHOLD_PERCENTILE,
        "threshold_margin": THRESHOLD_MARGIN,
        "train_windows": len(train_windows),
    }
    for key, scores in eval_scores.items():
        metrics.update({f"{key}_{m}": v for m, v in anomaly_report(scores, eval_y, threshold).items()})
        metrics[f"{key}_train_windows_flagged"] = float(np.mean(train_scores[key] > threshold))
        for kind in datasets.FAULT_KINDS:
            metrics[f"{key}_detection_rate_{kind}"] = float(np.mean(scores[kinds == kind] > threshold))
    metrics["score_correlation"] = float(np.corrcoef(eval_scores["float"], eval_scores["int8"])[0, 1])
    metrics["eval_windows"] = len(eval_x)
    spec = make_spec(
        bundle="motion-ae-onnx",
        name="motion-ae",
        task="anomaly",
        model_file="motion-ae.int8.onnx",
        float_model_file="motion-ae.float.onnx",
        labels=None,
        input_contract=contract,
        output={"mode": "reconstruction", "threshold": float(f"{threshold:.6g}")},
        samples=samples,
        evaluation=save_npz(stage / "motion-ae.eval.npz", x=eval_x, y=eval_y, fault=kinds),
        metrics=rounded(metrics),
    )
    write_spec(stage, spec)
    return spec
