"""Reading inputs from files for the CLI, golden tests and bundle drafting: images, `.npy` tensors, CSV recordings."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from agent.errors import InputError
from agent.inference.manifest import ImageInput, InputContract, WindowInput
from agent.types import Array, FloatArray

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff"}


def read_image(path: Path) -> Array:
    """A BGR uint8 image from an image file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from error
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise InputError(f"{path}: not a decodable image")
    decoded: Array = image
    return decoded


def read_npy(path: Path) -> Array:
    """An array from a `.npy` file (no pickles)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable .npy array: {error}") from error
    if not isinstance(array, np.ndarray):
        raise InputError(f"{path}: holds no single array")
    return array


def read_csv(path: Path, columns: tuple[str, ...] | None = None) -> FloatArray:
    """A [rows, columns] float32 matrix from a CSV file with a header; `columns` picks and orders columns by name."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read: {error}") from error
    if len(rows) < 2:
        raise InputError(f"{path}: a CSV recording needs a header line and at least one row")
    header = [name.strip() for name in rows[0]]
    if columns is None:
        picked = list(range(len(header)))
    else:
        missing = [name for name in columns if name not in header]
        if missing:
            raise InputError(f"{path}: CSV lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
        picked = [header.index(name) for name in columns]
    try:
        data = np.array([[float(row[i]) for i in picked] for row in rows[1:] if row], dtype=np.float32)
    except (ValueError, IndexError) as error:
        raise InputError(f"{path}: non-numeric or short row in CSV: {error}") from error
    return data


def sliding_windows(samples: np.ndarray, length: int, hop: int) -> list[np.ndarray]:
    """Windows of `length` rows every `hop` rows."""
    if samples.shape[0] < length:
        raise InputError(f"the recording has {samples.shape[0]} samples, shorter than the window of {length}")
    return [samples[start : start + length] for start in range(0, samples.shape[0] - length + 1, hop)]


def load_inputs(path: Path, contract: InputContract, hop: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The model inputs a file holds, each with a name: one image, one or more windows, or one or more tensors."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    if suffix in IMAGE_SUFFIXES:
        if not isinstance(contract, ImageInput):
            raise InputError(f"{path.name}: an image, but the model takes a {contract.kind} input")
        return [(path.name, read_image(path))]
    if suffix == ".csv":
        if isinstance(contract, WindowInput):
            samples = read_csv(path, contract.channels)
            windows = sliding_windows(samples, contract.length, hop or contract.length)
            return [(f"{path.name}[{i * (hop or contract.length)}:]", w) for i, w in enumerate(windows)]
        return [(path.name, read_csv(path))]
    if suffix == ".npy":
        array = read_npy(path)
        batched = (isinstance(contract, WindowInput) and array.ndim == 3) or (
            isinstance(contract, ImageInput) and array.ndim == 4
        )
        if batched:
            return [(f"{path.name}[{i}]", item) for i, item in enumerate(array)]
        return [(path.name, array)]
    raise InputError(f"{path.name}: unsupported input type '{suffix}': use an image, .npy or .csv file")


def synthetic_input(contract: InputContract, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A deterministic stand-in input: a 640x480 camera-like frame, a noisy window, or a random tensor."""
    rng = np.random.default_rng(seed)
    if isinstance(contract, ImageInput):
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], axis=-1)
        noise = rng.integers(0, 32, size=base.shape)
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    if isinstance(contract, WindowInput):
        count = len(contract.channels)
        mean = np.resize(np.array(contract.mean, np.float32), count)
        std = np.resize(np.array(contract.std, np.float32), count)
        return (rng.standard_normal((contract.length, count)).astype(np.float32) * std + mean).astype(
            np.float32
        )
    dims = tuple(d if d > 0 else 1 for d in shape)
    return rng.standard_normal(dims).astype(np.float32)
