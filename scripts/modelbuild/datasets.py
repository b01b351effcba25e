"""Training data from datasets shipped inside installed packages (nothing is downloaded).

* handwritten digits: ``sklearn.datasets.load_digits`` (8x8 greyscale, values 0..16, ink is high);
* photographs: public-domain / CC0 samples bundled in the scikit-image wheel (``skimage.data``);
* BasicMotions: the UEA ``.ts`` files bundled in the sktime wheel (sktime itself is never imported).

Images are produced in SOURCE form (uint8, BGR, HxWx3) and sensor windows as float32 ``[T, C]`` in
physical units, i.e. what a camera or sensor hands to the agent before its own pre-processing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# skimage.data images whose docstrings state public domain or CC0 (checked for scikit-image 0.26);
# `text` is left out although public domain: its handwritten numbers would be unlabelled digits.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "brick", "grass", "gravel", "clock")
HELDOUT_PHOTOS = ("chelsea", "camera")
MOTION_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
MOTION_RATE_HZ = 10.0
FAULT_KINDS = ("stuck", "spikes", "noise_burst", "dropped", "gain")


@dataclass(frozen=True)
class DigitSplit:
    """sklearn digits split into train / held-out parts (8x8 float images 0..16 and int labels)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class MotionData:
    """BasicMotions recordings as float32 ``[N, T, C]`` arrays with int labels into ``labels``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    labels: list[str]


def load_digit_split(seed: int, test_fraction: float = 0.25) -> DigitSplit:
    """Load sklearn's digits and split them, stratified by class, into train and held-out parts."""
    digits = load_digits()
    tr_x, te_x, tr_y, te_y = train_test_split(
        digits.images.astype(np.float32),
        digits.target.astype(np.int64),
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target,
    )
    return DigitSplit(tr_x, tr_y, te_x, te_y)


def digit_alpha(digit8: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale an 8x8 digit (0..16) with bilinear interpolation to an ink opacity map in 0..1."""
    return np.clip(cv2.resize(digit8 / 16.0, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def grey_to_bgr(grey: np.ndarray) -> np.ndarray:
    """Replicate uint8 greyscale images ``[..., H, W]`` into three identical BGR channels."""
    return np.repeat(grey[..., None], 3, axis=-1)


def render_digits(digits8: np.ndarray, size: int) -> np.ndarray:
    """Render 8x8 digits as plain white-on-black uint8 BGR images of ``size`` x ``size`` pixels."""
    grey = [np.round(digit_alpha(d, size, size) * 255.0).astype(np.uint8) for d in digits8]
    return grey_to_bgr(np.stack(grey))


def augment_digits(digits8: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Render 8x8 digits with light augmentation: scale, aspect, shift, brightness, contrast, noise.

    Returns uint8 BGR images (grey replicated to three channels), bright ink on a darker background.
    """
    out = np.empty((len(digits8), size, size), np.uint8)
    for i, digit in enumerate(digits8):
        alpha = digit_alpha(digit, size, size)
        scale = rng.uniform(0.75, 1.1)
        aspect = rng.uniform(0.85, 1.15)
        shift = rng.uniform(-0.1, 0.1, size=2) * size
        centre = (size - 1) / 2.0
        matrix = np.array(
            [
                [scale * aspect, 0.0, centre * (1 - scale * aspect) + shift[0]],
                [0.0, scale, centre * (1 - scale) + shift[1]],
            ],
            np.float32,
        )
        alpha = cv2.warpAffine(alpha, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
        background = rng.uniform(0.0, 60.0)
        ink = rng.uniform(170.0, 255.0)
        noise = rng.normal(0.0, rng.uniform(0.0, 8.0), size=(size, size))
        out[i] = np.clip(background + (ink - background) * alpha + noise, 0, 255).astype(np.uint8)
    return grey_to_bgr(out)


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """Load the named ``skimage.data`` photographs as uint8 BGR arrays (grey ones replicated)."""
    import skimage.data

    photos = []
    for name in names:
        image = getattr(skimage.data, name)()
        bgr = grey_to_bgr(image) if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
        photos.append(np.ascontiguousarray(bgr))
    return photos


def random_background(
    rng: np.random.Generator, photos: list[np.ndarray], width: int, height: int
) -> np.ndarray:
    """Take a random crop (random scale, possibly mirrored) of a random photo, resized to width x height."""
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    crop_h = int(rng.uniform(0.25, 1.0) * min(ph, pw * height / width))
    crop_w = int(crop_h * width / height)
    y0 = rng.integers(0, ph - crop_h + 1)
    x0 = rng.integers(0, pw - crop_w + 1)
    crop = photo[y0 : y0 + crop_h, x0 : x0 + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    image = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    image = image * rng.uniform(0.7, 1.2) + rng.uniform(-25.0, 25.0)
    return np.clip(image, 0, 255)


def paste_digit(
    image: np.ndarray, digit8: np.ndarray, box_px: tuple[int, int, int, int], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Alpha-blend a digit into ``image`` (float BGR, in place) over the pixel box (x, y, w, h).

    The ink colour is bright or dark, whichever contrasts with the local background. Returns the
    tight pixel bounding box ``(x1, y1, x2, y2)`` (exclusive end) of the visible ink.
    """
    x, y, w, h = box_px
    alpha = digit_alpha(digit8, w, h) * rng.uniform(0.8, 1.0)
    patch = image[y : y + h, x : x + w]
    local = float(patch.mean())
    bright = rng.uniform(190.0, 255.0, size=3)
    dark = rng.uniform(0.0, 60.0, size=3)
    colour = bright if abs(bright.mean() - local) > abs(dark.mean() - local) else dark
    patch[:] = patch * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    rows = np.flatnonzero(alpha.max(axis=1) > 0.25)
    cols = np.flatnonzero(alpha.max(axis=0) > 0.25)
    return x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1


def make_scene(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    digits8: np.ndarray,
    labels: np.ndarray,
    width: int,
    height: int,
    max_digits: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compose one detection scene: 1 to ``max_digits`` non-overlapping digits pasted on a photo crop.

    Digit sizes are relative to the image (about 16-32 px once stretched to 96x96), so scenes of any
    size look alike to the detector after the agent's resize. Returns (uint8 BGR image,
    boxes ``[n, 4]`` normalised x1, y1, x2, y2, int classes ``[n]``).
    """
    image = random_background(rng, photos, width, height)
    patches: list[tuple[int, int, int, int]] = []
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    for _ in range(rng.integers(1, max_digits + 1)):
        for _attempt in range(20):
            rel_h = rng.uniform(17.0, 32.0) / 96.0
            rel_w = min(rel_h * rng.uniform(0.8, 1.25), 32.0 / 96.0)
            w, h = max(int(rel_w * width), 8), max(int(rel_h * height), 8)
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            if all(x + w <= px or px + pw <= x or y + h <= py or py + ph <= y for px, py, pw, ph in patches):
                index = int(rng.integers(len(digits8)))
                x1, y1, x2, y2 = paste_digit(image, digits8[index], (x, y, w, h), rng)
                patches.append((x, y, w, h))
                boxes.append((x1 / width, y1 / height, x2 / width, y2 / height))
                classes.append(int(labels[index]))
                break
    noisy = image + rng.normal(0.0, rng.uniform(0.0, 6.0), size=image.shape)
    scene = np.clip(noisy, 0, 255).astype(np.uint8)
    return scene, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


def make_scenes(
    rng: np.random.Generator,
    photos: list[np.ndarray],
    digits8: np.ndarray,
    labels: np.ndarray,
    count: int,
    width: int,
    height: int,
    max_digits: int = 3,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Compose ``count`` scenes; returns (uint8 BGR ``[count, H, W, 3]``, per-scene boxes, per-scene classes)."""
    scenes = [make_scene(rng, photos, digits8, labels, width, height, max_digits) for _ in range(count)]
    return np.stack([s[0] for s in scenes]), [s[1] for s in scenes], [s[2] for s in scenes]


def basic_motions_dir() -> Path:
    """Locate the BasicMotions ``.ts`` files inside the installed sktime package (without importing it)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or spec.origin is None:
        raise RuntimeError("BasicMotions ships in the sktime wheel: pip install --no-deps sktime")
    return Path(spec.origin).parent / "datasets" / "data" / "BasicMotions"


def parse_ts(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Parse an equal-length multivariate UEA ``.ts`` file.

    Returns (float32 ``[N, T, C]``, the per-recording label strings, the label names declared in the
    ``@classLabel`` header, in order).
    """
    series: list[np.ndarray] = []
    labels: list[str] = []
    declared: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            words = line.split()
            if words[0].lower() == "@classlabel" and len(words) > 2 and words[1].lower() == "true":
                declared = words[2:]
            continue
        *channels, label = line.split(":")
        series.append(np.array([[float(v) for v in ch.split(",")] for ch in channels], np.float32).T)
        labels.append(label.strip())
    return np.stack(series), labels, declared


def load_basic_motions() -> MotionData:
    """Load BasicMotions train/test recordings (``[40, 100, 6]`` each) with lower-case label names."""
    folder = basic_motions_dir()
    train_x, train_labels, declared = parse_ts(folder / "BasicMotions_TRAIN.ts")
    test_x, test_labels, _ = parse_ts(folder / "BasicMotions_TEST.ts")
    index = {name: i for i, name in enumerate(declared)}
    return MotionData(
        train_x,
        np.array([index[s] for s in train_labels]),
        test_x,
        np.array([index[s] for s in test_labels]),
        [name.lower() for name in declared],
    )


def random_windows(
    rng: np.random.Generator, recordings: np.ndarray, labels: np.ndarray, count: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``count`` random windows of ``length`` samples out of random recordings."""
    which = rng.integers(0, len(recordings), size=count)
    starts = rng.integers(0, recordings.shape[1] - length + 1, size=count)
    windows = np.stack([recordings[r, s : s + length] for r, s in zip(which, starts, strict=True)])
    return windows, labels[which]


def strided_windows(
    recordings: np.ndarray, labels: np.ndarray, length: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut every recording into windows at offsets 0, stride, 2*stride, ... (deterministic)."""
    starts = range(0, recordings.shape[1] - length + 1, stride)
    windows = [rec[s : s + length] for rec in recordings for s in starts]
    return np.stack(windows), np.repeat(labels, len(starts))


def inject_fault(
    window: np.ndarray, kind: str, rng: np.random.Generator, channel_std: np.ndarray
) -> np.ndarray:
    """Return a copy of a ``[T, C]`` window with one sensor fault of the given kind injected.

    Kinds: ``stuck`` (a channel freezes at its current value), ``spikes`` (a few large single-sample
    outliers), ``noise_burst`` (a stretch of strong noise on some channels), ``dropped`` (a channel
    reads zero), ``gain`` (a channel's gain jumps by a factor of 3-5 or drops by 4-5).
    """
    out: np.ndarray = window.copy()
    t_len, n_ch = out.shape
    ch = int(rng.integers(n_ch))
    start = int(rng.integers(0, t_len // 2))
    if kind == "stuck":
        out[start:, ch] = out[start, ch]
    elif kind == "spikes":
        where = rng.choice(t_len, size=int(rng.integers(2, 5)), replace=False)
        out[where, ch] += (
            rng.choice([-1.0, 1.0], size=len(where)) * rng.uniform(6, 10, len(where)) * channel_std[ch]
        )
    elif kind == "noise_burst":
        chans = rng.choice(n_ch, size=int(rng.integers(1, 4)), replace=False)
        stop = start + int(rng.integers(10, 21))
        burst = rng.normal(0.0, 1.0, size=(min(stop, t_len) - start, len(chans)))
        out[start:stop, chans] += burst * rng.uniform(2, 4) * channel_std[chans]
    elif kind == "dropped":
        out[:, ch] = 0.0
    elif kind == "gain":
        out[start:, ch] *= rng.uniform(3, 5) if rng.random() < 0.5 else rng.uniform(0.2, 0.25)
    else:
        raise ValueError(f"unknown fault kind {kind!r}")
    return out
