"""Keras architectures and training loops.

Every architecture uses only layers that map one-to-one onto ONNX operators (stride-1 'same'
convolutions with bias and ReLU, 2x2 max pooling, global average pooling, dense layers, softmax /
sigmoid, reshape and a constant add), so ``onnx_export`` can rebuild them exactly from the weights.
The detector trains with batch normalisation, which is folded into its convolutions for export.
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
DET_WIDTHS = (8, 24, 64, 96, 96)  # conv widths; the first DET_POOLS are each followed by 2x2 pooling
DET_POOLS = 3
DET_BN_FROM = 2
LOGIT_BOUND = 6.0
POSITIVE_WEIGHT = 3.0


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
class GridOffset(layers.Layer):  # type: ignore[misc]  # keras ships no type information
    """Adds the constant ``grid_offsets()`` tensor to an NHWC feature map."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.offsets = grid_offsets()

    def call(self, x: Any) -> Any:
        """Return ``x + offsets`` (broadcast over the batch)."""
        return ops.add(x, ops.convert_to_tensor(self.offsets[None]))


def _detector_graph(size: int, batch_norm: bool) -> tuple[Any, Any, layers.Conv2D]:
    """Detector layers up to the per-cell logits map; returns (inputs, logits map, head layer).

    With ``batch_norm`` the blocks from ``DET_BN_FROM`` on are conv-BN-ReLU (faster training; BN at
    full resolution costs too much CPU time), otherwise every block is a biased conv with ReLU.
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for i, filters in enumerate(DET_WIDTHS):
        if batch_norm and i >= DET_BN_FROM:
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.ReLU()(layers.BatchNormalization()(x))
        else:
            x = _conv(filters)(x)
        if i < DET_POOLS:
            x = layers.MaxPooling2D(2)(x)
    head = layers.Conv2D(4 + DET_CLASSES, 1, name="head")
    return inputs, GridOffset(name="grid_offset")(head(x)), head


def build_detector_trainer(size: int = 96) -> keras.Model:
    """Anchor-free stride-8 detector for training: outputs logits rows ``[N, 144, 14]``."""
    inputs, logits_map, head = _detector_graph(size, batch_norm=True)
    prior = 0.01  # initial class score, so that the rare positives do not start drowned in negatives
    head.bias.assign(np.r_[np.zeros(4), np.full(DET_CLASSES, np.log(prior / (1 - prior)))].astype(np.float32))
    rows = layers.Reshape((DET_GRID * DET_GRID, 4 + DET_CLASSES), name="logits")(logits_map)
    return keras.Model(inputs, rows, name="digits_det_train")


def export_detector(trainer: keras.Model, size: int = 96) -> keras.Model:
    """The deployable detector: the trainer's weights with batch norm folded into the convolutions,
    and a sigmoid, so each output row is ``cx, cy, w, h, score_0..score_9`` in 0..1."""
    inputs, logits_map, _ = _detector_graph(size, batch_norm=False)
    probs = layers.Activation("sigmoid", name="sigmoid")(logits_map)
    model = keras.Model(
        inputs, layers.Reshape((DET_GRID * DET_GRID, 4 + DET_CLASSES), name="rows")(probs), name="digits_det"
    )
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    for conv, weights in zip(convs, _folded_conv_weights(trainer), strict=True):
        conv.set_weights(weights)
    return model


def _folded_conv_weights(model: keras.Model) -> list[list[np.ndarray]]:
    """Kernel and bias of every Conv2D of a chain model, folding in a directly following BatchNormalization."""
    chain = model.layers
    folded = []
    for layer, following in zip(chain, [*chain[1:], None], strict=True):
        if not isinstance(layer, layers.Conv2D):
            continue
        kernel = np.asarray(layer.kernel)
        bias = np.asarray(layer.bias) if layer.use_bias else np.zeros(kernel.shape[-1], np.float32)
        if isinstance(following, layers.BatchNormalization):
            gamma, beta, mean, var = (np.asarray(w) for w in following.get_weights())
            scale = gamma / np.sqrt(var + following.epsilon)
            kernel, bias = kernel * scale, (bias - mean) * scale + beta
        folded.append([kernel.astype(np.float32), bias.astype(np.float32)])
    return folded


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
    """Detector training loss on logits ``[N, 144, 14]`` against ``detection_targets`` rows,
    normalised by the number of objects in the batch.

    Sums a binary cross-entropy on the class scores of all cells (positives weighted by
    ``POSITIVE_WEIGHT`` against the ~400 times more numerous negatives), a softmax cross-entropy over the
    class logits of the positive cells (it speeds up learning which digit it is), a cross-entropy
    on the box outputs of the positive cells and a penalty on logits beyond +-``LOGIT_BOUND``.
    """
    cls_true, cls_logits = y_true[..., 4:], logits[..., 4:]
    positive = ops.max(cls_true, axis=-1)
    n_pos = ops.maximum(ops.sum(positive), 1.0)
    score_ce = ops.binary_crossentropy(cls_true, cls_logits, from_logits=True)
    score_loss = ops.sum(score_ce * (1.0 + (POSITIVE_WEIGHT - 1.0) * cls_true))
    identity_ce = ops.categorical_crossentropy(cls_true, cls_logits, from_logits=True)
    identity_loss = ops.sum(identity_ce * positive)
    box_ce = ops.binary_crossentropy(y_true[..., :4], logits[..., :4], from_logits=True)
    box_loss = ops.sum(box_ce * positive[..., None])
    # Keep logits within +-LOGIT_BOUND: unbounded negatives would stretch the INT8 range of the
    # pre-sigmoid tensor, which the box outputs share, and cost box precision after quantization.
    bound_loss = ops.sum(ops.square(ops.relu(ops.abs(logits) - LOGIT_BOUND)))
    return (score_loss + identity_loss + 5.0 * box_loss + bound_loss) / n_pos


def build_motion_classifier(length: int, channels: int, classes: int) -> keras.Model:
    """1D CNN over NTC windows with a softmax output."""
    inputs = keras.Input((length, channels), name="window")
    x = layers.Conv1D(16, 5, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling1D(2)(x)
    x = layers.Conv1D(32, 5, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    outputs = layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="motion_cls")


def build_autoencoder(length: int, channels: int, width: int = 32, kernel: int = 5) -> keras.Model:
    """Convolutional (denoising) autoencoder over NTC windows; the output has the input's shape.

    Three stride-1 'same' Conv1D layers (receptive field 13 samples); trained to map corrupted
    windows to clean ones, it reproduces normal motion but not glitches, which then show up in
    the reconstruction error.
    """
    inputs = keras.Input((length, channels), name="window")
    x = layers.Conv1D(width, kernel, padding="same", activation="relu")(inputs)
    x = layers.Conv1D(width, kernel, padding="same", activation="relu")(x)
    outputs = layers.Conv1D(channels, kernel, padding="same")(x)
    return keras.Model(inputs, outputs, name="motion_ae")


def fit(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    loss: Any,
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> list[float]:
    """Train with Adam and a cosine-decayed learning rate; returns the per-epoch training loss."""
    steps = epochs * int(np.ceil(len(x) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    return [float(v) for v in history.history["loss"]]
