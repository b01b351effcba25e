"""Pre-processing: a camera frame, a sensor window or a tensor becomes the model's input tensor.

Each pre-processor is built once per model and reuses its buffers: after the first frame of a given size, a call
allocates nothing. The returned tensor is one of those buffers, valid until the next call (the runtimes copy it).
Integer inputs are quantized with the model's own scale and zero point: for images through a 256-entry lookup table
per channel that folds normalisation and quantization into one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from agent.errors import ContractError, InputError
from agent.inference.manifest import ImageInput, WindowInput
from agent.inference.runtimes.base import TensorSpec
from agent.types import Array, int_range

_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}
_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8), np.dtype(np.uint8))


@dataclass(frozen=True)
class FrameMap:
    """Maps normalised model-input coordinates back to source frame pixels: `x_frame = ax * x + bx`."""

    ax: float
    bx: float
    ay: float
    by: float
    frame_width: int
    frame_height: int

    def to_frame(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A normalised (x1, y1, x2, y2) box in frame pixels, clipped to the frame."""
        x1, y1, x2, y2 = box
        w, h = self.frame_width, self.frame_height
        return (
            min(max(self.ax * x1 + self.bx, 0.0), w),
            min(max(self.ay * y1 + self.by, 0.0), h),
            min(max(self.ax * x2 + self.bx, 0.0), w),
            min(max(self.ay * y2 + self.by, 0.0), h),
        )


def _expected_shape(spec: TensorSpec, wanted: tuple[int, ...], what: str) -> None:
    shape = spec.shape
    if len(shape) == len(wanted) - 1:
        shape = (1, *shape)
    ok = len(shape) == len(wanted) and all(s in (-1, w) for s, w in zip(shape, wanted, strict=True))
    if not ok:
        raise ContractError(
            f"the manifest describes the input as {what} {list(wanted)}, but the model's input '{spec.name}' has "
            f"shape {list(spec.shape)}"
        )
    if spec.dtype not in _SUPPORTED:
        raise ContractError(
            f"model input '{spec.name}' has type {spec.dtype.name}; supported: float32, float16, int8, uint8"
        )


def quantize_lut(mean: np.ndarray, std: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Per-channel table: pixel value 0..255 -> the model's input value, as the raw bytes of the model's dtype."""
    pixels = np.arange(256, dtype=np.float64)[:, None]
    real = (pixels - mean[None, :]) / std[None, :]
    if spec.dtype.kind == "f":
        raise ValueError("lookup tables are for integer inputs")
    quant = spec.quantization
    scale, zero_point = (quant.scale, quant.zero_point) if quant else (1.0, 0)
    low, high = int_range(spec.dtype)
    q = np.clip(np.round(real / scale) + zero_point, low, high).astype(spec.dtype)
    table: Array = q.view(np.uint8).T.copy()  # (channels, 256)
    return table


class ImagePreprocessor:
    """BGR uint8 frame -> model input tensor (resize, colour order, normalise, quantize, layout)."""

    def __init__(self, contract: ImageInput, spec: TensorSpec) -> None:
        self.contract = contract
        self.spec = spec
        c, h, w = contract.channels, contract.height, contract.width
        nchw = contract.layout == "NCHW"
        _expected_shape(spec, (1, c, h, w) if nchw else (1, h, w, c), f"{contract.layout} image")
        self._nchw = nchw
        self._interp = _INTERPOLATION[contract.interpolation]
        self._out = np.zeros((1, c, h, w) if nchw else (1, h, w, c), dtype=spec.dtype)
        self._canvas = np.full((h, w, 3), contract.pad_value, dtype=np.uint8)
        self._color = np.empty((h, w, c), dtype=np.uint8) if contract.color != "BGR" else None
        mean = np.array(contract.mean * (c if len(contract.mean) == 1 else 1), dtype=np.float64)
        std = np.array(contract.std * (c if len(contract.std) == 1 else 1), dtype=np.float64)
        self._float = spec.dtype.kind == "f"
        if self._float:
            self._scale = (1.0 / std).astype(np.float32)
            self._offset = (-mean / std).astype(np.float32)
            self._work = np.empty((h, w, c), dtype=np.float32)
        else:
            table = quantize_lut(mean, std, spec)
            # Cheapest exact form of the table: none, a sign-bit flip, one table for all channels, or one each.
            same = bool((table == table[0]).all())
            identity = np.arange(256, dtype=np.uint8)
            if same and np.array_equal(table[0], identity):
                self._lut_mode = "identity"
            elif same and np.array_equal(table[0], identity ^ 0x80):
                self._lut_mode = "xor"
            else:
                self._lut_mode = "shared" if same else "per_channel"
            # cv2.LUT applies a 1-channel table to every byte, a 3-channel table channel by channel.
            self._lut = table[0].reshape(1, 256) if same else np.ascontiguousarray(table.T).reshape(1, 256, 3)
            self._lut_out = np.empty((h, w, c), dtype=np.uint8)
        self._geometry_key: tuple[int, int] | None = None
        self._scratch: np.ndarray | None = None

    def _geometry(self, fw: int, fh: int) -> tuple[FrameMap, tuple[slice, slice], tuple[int, int, int, int]]:
        """Crop of the frame, and where the resized crop goes in the canvas (x, y, w, h)."""
        w, h = self.contract.width, self.contract.height
        mode = self.contract.resize
        if mode == "stretch":
            return FrameMap(fw, 0.0, fh, 0.0, fw, fh), (slice(None), slice(None)), (0, 0, w, h)
        if mode == "center_crop":
            scale = max(w / fw, h / fh)
            cw, ch = min(fw, round(w / scale)), min(fh, round(h / scale))
            x0, y0 = (fw - cw) // 2, (fh - ch) // 2
            fmap = FrameMap(cw, x0, ch, y0, fw, fh)
            return fmap, (slice(y0, y0 + ch), slice(x0, x0 + cw)), (0, 0, w, h)
        scale = min(w / fw, h / fh)  # letterbox and pad: the aspect ratio kept
        nw, nh = min(w, max(1, round(fw * scale))), min(h, max(1, round(fh * scale)))
        px, py = ((w - nw) // 2, (h - nh) // 2) if mode == "letterbox" else (0, 0)
        fmap = FrameMap(w / scale, -px / scale, h / scale, -py / scale, fw, fh)
        return fmap, (slice(None), slice(None)), (px, py, nw, nh)

    def __call__(self, frame: Array) -> tuple[Array, FrameMap]:
        """The model input for one frame (a reused buffer) and the map back to frame coordinates."""
        frame = self._as_bgr(frame)
        fh, fw = frame.shape[:2]
        if self._geometry_key != (fw, fh):
            self._fmap, self._crop, self._place = self._geometry(fw, fh)
            self._geometry_key = (fw, fh)
            px, py, nw, nh = self._place
            self._canvas[:] = self.contract.pad_value
            self._scratch = (
                None
                if (nw, nh) == (self.contract.width, self.contract.height)
                else np.empty((nh, nw, 3), np.uint8)
            )
        src = frame[self._crop]
        if self._scratch is None:
            cv2.resize(
                src, (self.contract.width, self.contract.height), dst=self._canvas, interpolation=self._interp
            )
        else:
            px, py, nw, nh = self._place
            cv2.resize(src, (nw, nh), dst=self._scratch, interpolation=self._interp)
            self._canvas[py : py + nh, px : px + nw] = self._scratch
        image: Array = self._canvas
        if self._color is not None:
            code = cv2.COLOR_BGR2RGB if self.contract.color == "RGB" else cv2.COLOR_BGR2GRAY
            converted = cv2.cvtColor(image, code, dst=self._color)
            image = converted.reshape(self._color.shape)
        return self._finish(image), self._fmap

    def _finish(self, image: np.ndarray) -> Array:
        out = self._out
        values: Array
        if self._float:
            work = self._work
            np.multiply(image, self._scale, out=work)
            np.add(work, self._offset, out=work)
            values = work
        else:
            values = self._quantize(image).view(out.dtype)
        if self._nchw:
            np.copyto(out[0], values.transpose(2, 0, 1), casting="unsafe")
        else:
            np.copyto(out[0], values, casting="unsafe")
        return out

    def _quantize(self, image: Array) -> Array:
        mode, dst = self._lut_mode, self._lut_out
        if mode == "identity":
            return image
        if mode == "xor":
            np.bitwise_xor(image, 0x80, out=dst)
        elif mode == "shared":  # one table: treat the image as a single-channel (h, w*c) plane
            flat = dst.reshape(dst.shape[0], -1)
            cv2.LUT(image.reshape(flat.shape), self._lut, dst=flat)
        else:
            cv2.LUT(image, self._lut, dst=dst)
        return dst

    @staticmethod
    def _as_bgr(frame: Array) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            kind = frame.dtype.name if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputError(f"an image frame must be a uint8 array, got {kind}")
        if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if frame.ndim == 3 and frame.shape[2] == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
            raise InputError(f"an image frame must be HxWx3 (BGR), got shape {list(frame.shape)}")
        return frame


class WindowPreprocessor:
    """A [time, channel] window of sensor samples -> the model input tensor (normalise, quantize, layout)."""

    def __init__(self, contract: WindowInput, spec: TensorSpec) -> None:
        self.contract = contract
        self.spec = spec
        t, c = contract.length, len(contract.channels)
        nct = contract.layout == "NCT"
        _expected_shape(spec, (1, c, t) if nct else (1, t, c), f"{contract.layout} window")
        self._nct = nct
        mean = np.array(contract.mean * (c if len(contract.mean) == 1 else 1), dtype=np.float32)
        std = np.array(contract.std * (c if len(contract.std) == 1 else 1), dtype=np.float32)
        self._mean, self._inv_std = mean, (1.0 / std).astype(np.float32)
        self.normalized = np.empty((1, c, t) if nct else (1, t, c), dtype=np.float32)
        self._work = np.empty((t, c), dtype=np.float32)
        self._out = np.empty(self.normalized.shape, dtype=spec.dtype)
        # a [1, time] model input (one channel, as audio models take it) gets a view of that rank
        self._flat = len(spec.shape) == 2

    def __call__(self, window: Array) -> Array:
        """The model input for one window; `self.normalized` then holds the float normalised window (model layout)."""
        expected = (self.contract.length, len(self.contract.channels))
        if not isinstance(window, np.ndarray) or window.shape != expected:
            got = list(window.shape) if isinstance(window, np.ndarray) else type(window).__name__
            raise InputError(
                f"a sensor window must have shape [time={expected[0]}, channels={expected[1]}], got {got}"
            )
        if window.dtype.kind not in "iuf":
            raise InputError(f"a sensor window must be numeric, got {window.dtype.name}")
        work = self._work
        np.subtract(window, self._mean, out=work, casting="unsafe")
        np.multiply(work, self._inv_std, out=work)
        if not np.isfinite(work).all():
            raise InputError("the sensor window holds NaN or infinite values")
        np.copyto(self.normalized[0], work.T if self._nct else work)
        out = quantize_into(self.normalized, self.spec, self._out)
        return out.reshape(1, -1) if self._flat else out


def quantize_into(real: Array, spec: TensorSpec, out: Array) -> Array:
    """Writes `real` into `out` in the model's dtype, quantizing with the model's own parameters if integer."""
    if spec.dtype.kind == "f":
        np.copyto(out, real, casting="unsafe")
        return out
    quant = spec.quantization
    scale, zero_point = (quant.scale, quant.zero_point) if quant else (1.0, 0)
    low, high = int_range(spec.dtype)
    np.copyto(out, np.clip(np.rint(real / scale) + zero_point, low, high), casting="unsafe")
    return out


class TensorPreprocessor:
    """A tensor fed as given: the batch dimension is added when missing; cast or quantized to the model's dtype."""

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec

    def __call__(self, tensor: Array) -> Array:
        """The model input for one tensor."""
        spec = self.spec
        if not isinstance(tensor, np.ndarray) or tensor.dtype.kind not in "iufb":
            raise InputError(f"a tensor input must be a numeric array, got {type(tensor).__name__}")
        if tensor.ndim == len(spec.shape) - 1:
            tensor = tensor[None]
        shape_ok = tensor.ndim == len(spec.shape) and all(
            s in (-1, d) for s, d in zip(spec.shape, tensor.shape, strict=True)
        )
        if not shape_ok:
            raise InputError(f"the tensor has shape {list(tensor.shape)}, the model wants {list(spec.shape)}")
        if tensor.dtype == spec.dtype:
            return np.ascontiguousarray(tensor)
        if spec.dtype.kind in "iu" and tensor.dtype.kind == "f":
            return quantize_into(tensor, spec, np.empty(tensor.shape, dtype=spec.dtype))
        return tensor.astype(spec.dtype)
