"""Pre-processing against a plain float reference implementation, buffer reuse, and refused inputs."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from agent.errors import ContractError, InputError
from agent.inference.manifest import ImageInput, WindowInput
from agent.inference.preprocess import ImagePreprocessor, WindowPreprocessor
from agent.inference.runtimes.base import Quantization, TensorSpec


def spec(shape: tuple[int, ...], dtype: type, scale: float = 0.0, zp: int = 0) -> TensorSpec:
    quant = Quantization(scale, zp) if scale else None
    return TensorSpec("input", shape, np.dtype(dtype), quant)


def reference_image(frame: np.ndarray, contract: ImageInput, out_spec: TensorSpec) -> np.ndarray:
    """Straightforward float implementation: stretch resize, colour, normalise, quantize, layout."""
    resized = cv2.resize(frame, (contract.width, contract.height), interpolation=cv2.INTER_LINEAR)
    if contract.color == "RGB":
        resized = resized[..., ::-1]
    mean = np.resize(np.array(contract.mean), 3)
    std = np.resize(np.array(contract.std), 3)
    real = (resized.astype(np.float64) - mean) / std
    if out_spec.dtype.kind in "iu":
        q = out_spec.quantization
        assert q is not None
        info = np.iinfo(out_spec.dtype)
        real = np.clip(np.round(real / q.scale) + q.zero_point, info.min, info.max)
    tensor = real.astype(out_spec.dtype)[None]
    return tensor.transpose(0, 3, 1, 2) if contract.layout == "NCHW" else tensor


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("layout", "dtype", "scale", "zp", "mean", "std"),
    [
        ("NHWC", np.int8, 1 / 255, -128, (0.0,), (255.0,)),
        ("NHWC", np.uint8, 1 / 255, 0, (0.0,), (255.0,)),
        ("NHWC", np.int8, 2 / 255, 0, (127.5,), (127.5,)),
        ("NCHW", np.int8, 0.0187, 3, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
        ("NCHW", np.float32, 0.0, 0, (127.5,), (127.5,)),
        ("NHWC", np.float32, 0.0, 0, (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
    ],
)
def test_frame_to_tensor_matches_float_reference(frame, layout, dtype, scale, zp, mean, std):
    contract = ImageInput(layout=layout, color="RGB", width=224, height=224, mean=mean, std=std)
    shape = (1, 3, 224, 224) if layout == "NCHW" else (1, 224, 224, 3)
    tensor_spec = spec(shape, dtype, scale, zp)
    got, _ = ImagePreprocessor(contract, tensor_spec)(frame)
    want = reference_image(frame, contract, tensor_spec)
    assert got.shape == want.shape and got.dtype == want.dtype
    if dtype is np.float32:
        np.testing.assert_allclose(got, want, atol=1e-4)
    else:
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # only round-half differences


def test_preprocessing_a_frame_allocates_nothing_after_the_first(frame):
    contract = ImageInput(width=224, height=224, mean=(0.0,), std=(255.0,))
    pre = ImagePreprocessor(contract, spec((1, 224, 224, 3), np.int8, 1 / 255, -128))
    first, _ = pre(frame)
    pre(frame)
    tracemalloc.start()
    for _ in range(20):
        again, _ = pre(frame)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert again is first  # the same buffer every call
    assert peak < 64 * 1024  # no frame-sized allocation (a 224x224x3 tensor alone is 150 KB)


def test_letterbox_keeps_aspect_ratio_and_maps_boxes_back(frame):
    contract = ImageInput(width=96, height=96, resize="letterbox", pad_value=0, mean=(0.0,), std=(1.0,))
    tensor, fmap = ImagePreprocessor(contract, spec((1, 96, 96, 3), np.float32))(frame)
    # 640x480 -> 96x72, padded by 12 rows top and bottom
    assert np.all(tensor[0, :12] == 0) and np.all(tensor[0, 84:] == 0)
    assert tensor[0, 12:84].std() > 10
    # the full content area maps back to the full frame
    box = fmap.to_frame((0.0, 12 / 96, 1.0, 84 / 96))
    np.testing.assert_allclose(box, (0, 0, 640, 480), atol=1e-6)


def test_center_crop_maps_box_back_to_the_cropped_region(frame):
    contract = ImageInput(width=100, height=100, resize="center_crop")
    _, fmap = ImagePreprocessor(contract, spec((1, 100, 100, 3), np.float32))(frame)
    np.testing.assert_allclose(fmap.to_frame((0, 0, 1, 1)), (80, 0, 560, 480))


def test_gray_model_gets_one_channel(frame):
    contract = ImageInput(color="GRAY", layout="NCHW", width=28, height=28, mean=(0.0,), std=(255.0,))
    tensor, _ = ImagePreprocessor(contract, spec((1, 1, 28, 28), np.uint8, 1 / 255, 0))(frame)
    gray = cv2.cvtColor(cv2.resize(frame, (28, 28)), cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(tensor[0, 0], gray)


def test_gray_and_bgra_frames_are_accepted():
    contract = ImageInput(width=32, height=32)
    pre = ImagePreprocessor(contract, spec((1, 32, 32, 3), np.float32))
    assert pre(np.zeros((40, 50), np.uint8))[0].shape == (1, 32, 32, 3)
    assert pre(np.zeros((40, 50, 4), np.uint8))[0].shape == (1, 32, 32, 3)


def test_manifest_size_that_differs_from_the_model_is_refused():
    contract = ImageInput(width=64, height=64)
    with pytest.raises(ContractError, match=r"shape \[1, 32, 32, 3\]"):
        ImagePreprocessor(contract, spec((1, 32, 32, 3), np.float32))


def test_float_frame_is_refused_with_a_clear_error():
    pre = ImagePreprocessor(ImageInput(width=8, height=8), spec((1, 8, 8, 3), np.float32))
    with pytest.raises(InputError, match="uint8"):
        pre(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InputError, match="HxWx3"):
        pre(np.zeros((8, 8, 5), np.uint8))


def test_window_is_normalised_quantized_and_laid_out():
    contract = WindowInput(layout="NCT", length=4, channels=("a", "b"), mean=(1.0, 10.0), std=(2.0, 5.0))
    pre = WindowPreprocessor(contract, spec((1, 2, 4), np.int8, 0.05, 2))
    window = np.array([[1, 10], [3, 15], [5, 20], [-1, 5]], np.float32)
    tensor = pre(window)
    normalised = np.array([[0, 1, 2, -1], [0, 1, 2, -1]], np.float32)
    np.testing.assert_allclose(pre.normalized[0], normalised)
    np.testing.assert_array_equal(tensor[0], np.round(normalised / 0.05) + 2)


def test_window_of_wrong_shape_or_with_nan_is_refused():
    contract = WindowInput(length=4, channels=("a", "b"))
    pre = WindowPreprocessor(contract, spec((1, 4, 2), np.float32))
    with pytest.raises(InputError, match=r"time=4, channels=2"):
        pre(np.zeros((5, 2), np.float32))
    bad = np.zeros((4, 2), np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pre(bad)
