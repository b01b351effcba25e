"""Unchanged and shifted streams from the data this repository ships, for the drift tests and bench_monitoring.py.

- `camera`: a fixed camera looking at one bundled scene (`models/samples/scene_*.png`: handwritten digits on real
  photographs): per frame, fresh sensor noise (sigma 3 grey levels), an auto-exposure flicker (gain AR(1), phi 0.9,
  sd 2 %) and a camera shake of up to 2 px (AR(1)), so consecutive frames are correlated as a real camera's are.
- `sensor`: windows of 50 samples x 6 channels (hop 25) from the bundled BasicMotions recordings of one activity,
  played in a loop from a random offset, with a per-loop gain (sd 3 %) and sensor noise (2 % of each channel's std).
- `digits`: a stream of held-out handwritten digits (`models/float/digits-cls-*.eval.npz`, 32x32), each shown for
  3 frames with fresh noise, classes equally likely; `part` 0 and 1 draw from disjoint halves of the set, so a
  baseline learnt on one part is measured on digits it never saw.

Shifts (each size stated in `SHIFTS`) apply from a given item on. A stream is an iterator of numpy items; the seed
fixes everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "models" / "samples"
WINDOW, HOP = 50, 25
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _lighting(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.convertScaleAbs(frame, alpha=0.7)


def _blur(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(frame, (0, 0), 1.5)


def _noise(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = np.empty(frame.shape, np.int16)
    cv2.randn(noise, (0, 0, 0), (12, 12, 12))
    return cv2.add(frame, noise, dtype=cv2.CV_8U)


def _rotation(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = frame.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), 10, 1.0)
    return cv2.warpAffine(frame, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def _covered(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.convertScaleAbs(cv2.GaussianBlur(frame, (0, 0), 8), alpha=0.15)


def _bias(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = window.copy()
    out[:, 0] += 0.5 * _STD[0]
    return out


def _vibration(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = window.copy()
    t = np.arange(len(window)) / 10.0
    out[:, 2] += 0.5 * _STD[2] * np.sin(2 * math.pi * 4.0 * t + rng.uniform(0, 2 * math.pi))
    return out


def _stuck(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = window.copy()
    out[:, 5] = out[0, 5]
    return out


SHIFTS: dict[str, tuple[str, Shift, str]] = {
    "lighting": ("camera", _lighting, "every pixel x 0.7 (an exposure step of -0.5 EV)"),
    "blur": ("camera", _blur, "Gaussian blur, sigma 1.5 px (a lens out of focus)"),
    "noise": (
        "camera",
        _noise,
        "added Gaussian noise, sigma 12 grey levels (a failing sensor, low light gain)",
    ),
    "rotation": ("camera", _rotation, "the view rotated by 10 degrees (a bumped mount)"),
    "covered-lens": (
        "camera",
        _covered,
        "blur sigma 8 px and 15 % of the light (a hand or tape over the lens)",
    ),
    "sensor-bias": ("sensor", _bias, "acc_x offset by +0.5 of its standard deviation"),
    "vibration": ("sensor", _vibration, "a 4 Hz vibration on acc_z, amplitude 0.5 of its standard deviation"),
    "stuck-sensor": ("sensor", _stuck, "gyr_z stuck at its first value"),
    "class-prior": ("digits", lambda x, rng: x, "70 % of the digits are 3s (a class prior shift)"),
}

_STD = np.array([7.07, 6.79, 3.55, 2.11, 1.82, 3.52])


def camera(seed: int, scene: int = 1, shift: Shift | None = None, shift_at: int = 0) -> Iterator[np.ndarray]:
    """Frames of a fixed camera on one bundled scene, for ever; `shift` applies from item `shift_at` on."""
    rng = np.random.default_rng(seed)
    cv2.setRNGSeed(seed)
    image = cv2.imread(str(SAMPLES / f"scene_{scene}.png"))
    if image is None:
        raise FileNotFoundError(SAMPLES / f"scene_{scene}.png")
    height, width = image.shape[:2]
    big = cv2.resize(image, (width + 8, height + 8), interpolation=cv2.INTER_AREA)
    gain, dx, dy = 0.0, 0.0, 0.0
    noise = np.empty(image.shape, np.int16)
    index = 0
    while True:
        gain = 0.9 * gain + rng.normal(0, 0.02 * math.sqrt(1 - 0.81))
        dx = 0.9 * dx + rng.normal(0, 0.45)
        dy = 0.9 * dy + rng.normal(0, 0.45)
        x, y = round(4 + np.clip(dx, -2, 2)), round(4 + np.clip(dy, -2, 2))
        frame = cv2.convertScaleAbs(big[y : y + height, x : x + width], alpha=1.0 + gain)
        cv2.randn(noise, (0, 0, 0), (3, 3, 3))
        frame = cv2.add(frame, noise, dtype=cv2.CV_8U)
        if shift is not None and index >= shift_at:
            frame = shift(frame, rng)
        yield frame
        index += 1


def recording(activity: str) -> np.ndarray:
    """A bundled BasicMotions recording: samples x 6 channels."""
    data = np.loadtxt(SAMPLES / f"motion_{activity}.csv", delimiter=",", skiprows=1)
    return data[:, 1:].astype(np.float64)


def sensor(
    seed: int, activity: str = "walking", shift: Shift | None = None, shift_at: int = 0
) -> Iterator[np.ndarray]:
    """Windows (50 x 6, hop 25) of one activity's recording played in a loop with per-loop gain and noise."""
    rng = np.random.default_rng(seed)
    base = recording(activity)
    noise_sd = 0.02 * base.std(axis=0)
    buffer = np.zeros((0, base.shape[1]))
    index = 0
    while True:
        while len(buffer) < WINDOW:
            start = int(rng.integers(0, len(base)))
            loop = np.roll(base, -start, axis=0) * rng.normal(1.0, 0.03)
            loop = loop + rng.normal(0, 1, loop.shape) * noise_sd
            buffer = np.concatenate([buffer, loop])
        window = buffer[:WINDOW].astype(np.float32)
        buffer = buffer[HOP:]
        if shift is not None and index >= shift_at:
            window = shift(window.astype(np.float64), rng).astype(np.float32)
        yield window
        index += 1


def digit_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits shipped for the agreement test: images (N, 32, 32, 3) uint8 and labels."""
    with np.load(ROOT / "models" / "float" / "digits-cls-tflite.eval.npz") as data:
        images, labels = data["x"], data["y"]
    if images.dtype != np.uint8:
        images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return images, labels.astype(int)


def digits(seed: int, part: int = 0, prior_shift_at: int | None = None) -> Iterator[np.ndarray]:
    """Held-out digits from one half of the set, each for 3 frames with fresh noise; optionally 70 % 3s later on."""
    rng = np.random.default_rng(seed)
    images, labels = digit_set()
    order = np.random.default_rng(1234).permutation(len(images))
    pool = order[part::2]
    by_class = [pool[labels[pool] == digit] for digit in range(10)]
    index = 0
    while True:
        shifted = prior_shift_at is not None and index >= prior_shift_at
        digit = 3 if shifted and rng.random() < 0.7 else int(rng.integers(0, 10))
        pick = int(rng.choice(by_class[digit]))
        for _ in range(3):
            noise = rng.normal(0, 4, images[pick].shape)
            yield np.clip(images[pick] + noise, 0, 255).astype(np.uint8)
            index += 1


def write_site_video(
    path: Path, normal: int, changed: int, shift: str, fps: float = 30.0, seed: int = 0
) -> Path:
    """An mp4v video of the fixed camera: `normal` unchanged frames, then `changed` frames with a camera shift."""
    kind, function, _ = SHIFTS[shift]
    if kind != "camera":
        raise ValueError(f"{shift} is not a camera shift")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (320, 240))
    if not writer.isOpened():
        raise OSError(f"cannot write {path}")
    stream = camera(seed, shift=function, shift_at=normal)
    for _ in range(normal + changed):
        writer.write(next(stream))
    writer.release()
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="writes a fixed-camera video that changes part way (the demo's)"
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--normal", type=int, default=450, help="unchanged frames first")
    parser.add_argument("--changed", type=int, default=300, help="then frames with the shift")
    parser.add_argument(
        "--shift", default="covered-lens", choices=[k for k, v in SHIFTS.items() if v[0] == "camera"]
    )
    parser.add_argument("--fps", type=float, default=30.0)
    options = parser.parse_args()
    write_site_video(options.out, options.normal, options.changed, options.shift, options.fps)
    print(
        f"{options.out}: {options.normal} unchanged frames, then {options.changed} with {SHIFTS[options.shift][2]}"
    )
