"""Keras architectures and training loops.

Every architecture uses only layers that map one-to-one onto ONNX operators (stride-1 'same'
convolutions with bias and ReLU, 2x2 max pooling, global average pooling, dense layers, softmax /
sigmoid, reshape and a constant add), so ``onnx_export`` can rebuild them exactly from the weights.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

DET_GRID = 12
DET_STRIDE = 8
DET_CLASSES = 10


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _conv(filters: int, kernel: int = 3) -> layers.Conv2D:
    """A stride-1 'same' convolution with bias and ReLU."""
    return layers.Conv2D(filters, kernel, padding="same", activation="relu")


def build_digit_classifier(size: int = 32, classes: int = 10) -> keras.Model:
    """Small NHWC CNN digit classifier with a softmax output."""
    inputs = keras.Input((size, size, 3), name="image")
    x = _conv(16)(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(32)(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(64)(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(64)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="digits_cls")


def grid_offsets(grid: int = DET_GRID, channels: int = 4 + DET_CLASSES) -> np.ndarray:
    """Constant per-cell logits ``[grid, grid, channels]``: sigmoid(offset) is the cell centre for cx, cy.

    Adding these before the sigmoid lets every cell predict absolute, image-normalised box centres
    as a small correction around its own centre; the other channels get no offset.
    """
    centres = (np.arange(grid, dtype=np.float64) + 0.5) / grid
    logits = np.log(centres / (1.0 - centres))
    offsets = np.zeros((grid, grid, channels), np.float32)
    offsets[..., 0] = logits[None, :]
    offsets[..., 1] = logits[:, None]
    return offsets


@keras.saving.register_keras_serializable(package="modelbuild")
class GridOffset(layers.Layer):
    """Adds the constant ``grid_offsets()`` tensor to an NHWC feature map."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.offsets = grid_offsets()

    def call(self, x: Any) -> Any:
        """Return ``x + offsets`` (broadcast over the batch)."""
        return ops.add(x, ops.convert_to_tensor(self.offsets[None]))


def build_detector(size: int = 96) -> tuple[keras.Model, keras.Model]:
    """Anchor-free stride-8 detector: returns (training model giving logits, export model).

    Both share weights and output ``[N, 144, 14]``; the export model applies the sigmoid so each row
    is ``cx, cy, w, h, score_0..score_9`` in 0..1 (boxes normalised to the image).
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = _conv(16)(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(32)(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(48)(x)
    x = layers.MaxPooling2D(2)(x)
    x = _conv(64)(x)
    x = _conv(64)(x)
    head = layers.Conv2D(4 + DET_CLASSES, 1, name="head")
    x = head(x)
    logits_map = GridOffset(name="grid_offset")(x)
    rows = (DET_GRID * DET_GRID, 4 + DET_CLASSES)
    logits = layers.Reshape(rows, name="logits")(logits_map)
    probs = layers.Reshape(rows, name="rows")(layers.Activation("sigmoid", name="sigmoid")(logits_map))
    prior = 0.01  # initial class score, so that the rare positives do not start drowned in negatives
    head.bias.assign(np.r_[np.zeros(4), np.full(DET_CLASSES, np.log(prior / (1 - prior)))].astype(np.float32))
    return keras.Model(inputs, logits, name="digits_det_train"), keras.Model(inputs, probs, name="digits_det")


def detection_targets(boxes: list[np.ndarray], classes: list[np.ndarray]) -> np.ndarray:
    """Training targets ``[N, 144, 14]``: the cell holding an object's centre gets its normalised
    cx, cy, w, h and a one-hot class; every other cell is all zeros."""
    targets = np.zeros((len(boxes), DET_GRID * DET_GRID, 4 + DET_CLASSES), np.float32)
    for i, (scene_boxes, scene_classes) in enumerate(zip(boxes, classes, strict=True)):
        for (x1, y1, x2, y2), cls in zip(scene_boxes, scene_classes, strict=True):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cell = int(cy * DET_GRID) * DET_GRID + int(cx * DET_GRID)
            targets[i, cell, :4] = (cx, cy, x2 - x1, y2 - y1)
            targets[i, cell, 4 + int(cls)] = 1.0
    return targets


def detection_loss(y_true: Any, logits: Any) -> Any:
    """Detector training loss, normalised by the number of objects in the batch.

    Sums a focal loss on the class scores of all cells, a softmax cross-entropy over the class
    logits of the positive cells (it speeds up learning which digit it is) and a cross-entropy on
    the box outputs of the positive cells.
    """
    cls_true, cls_logits = y_true[..., 4:], logits[..., 4:]
    positive = ops.max(cls_true, axis=-1)
    n_pos = ops.maximum(ops.sum(positive), 1.0)
    prob = ops.sigmoid(cls_logits)
    p_t = prob * cls_true + (1.0 - prob) * (1.0 - cls_true)
    alpha_t = 0.5 * cls_true + 0.5 * (1.0 - cls_true)
    ce = ops.binary_crossentropy(cls_true, cls_logits, from_logits=True)
    cls_loss = ops.sum(alpha_t * ops.square(1.0 - p_t) * ce)
    softmax_ce = ops.categorical_crossentropy(cls_true, cls_logits, from_logits=True)
    identity_loss = ops.sum(softmax_ce * positive)
    box_ce = ops.binary_crossentropy(y_true[..., :4], logits[..., :4], from_logits=True)
    box_loss = ops.sum(box_ce * positive[..., None])
    return (cls_loss + identity_loss + 5.0 * box_loss) / n_pos


def build_motion_classifier(length: int, channels: int, classes: int) -> keras.Model:
    """1D CNN over NTC windows with a softmax output."""
    inputs = keras.Input((length, channels), name="window")
    x = layers.Conv1D(16, 5, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(32, 5, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="motion_cls")


def build_autoencoder(length: int, channels: int, bottleneck: int = 12) -> keras.Model:
    """Dense autoencoder over NTC windows; the output has the input's shape."""
    inputs = keras.Input((length, channels), name="window")
    x = layers.Flatten()(inputs)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dense(bottleneck, activation="relu")(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dense(length * channels)(x)
    outputs = layers.Reshape((length, channels))(x)
    return keras.Model(inputs, outputs, name="motion_ae")


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, loss: Any, epochs: int, batch_size: int,
        learning_rate: float) -> list[float]:
    """Train with Adam and a cosine-decayed learning rate; returns the per-epoch training loss."""
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return [float(v) for v in history.history["loss"]]
