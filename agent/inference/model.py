"""A loaded model: bundle + runtime backend + pre-processing + decoding, checked against each other at load time.

The hot path is `infer` (or its parts `prepare`, `invoke`, `decode` for per-stage timing). Nothing in it does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import ContractError
from agent.inference.bundle import Bundle, load_bundle
from agent.inference.decode import DecodeContext, Result, make_decoder
from agent.inference.manifest import AnomalyOutput, ImageInput, WindowInput
from agent.inference.options import RuntimeOptions
from agent.inference.preprocess import FrameMap, ImagePreprocessor, TensorPreprocessor, WindowPreprocessor
from agent.inference.runtimes import Backend, TensorSpec, open_backend
from agent.types import Array, FloatArray


@dataclass(frozen=True)
class Prepared:
    """A model input tensor ready to invoke, with what decoding needs to know about where it came from."""

    tensor: Array
    frame_map: FrameMap | None = None
    normalized: FloatArray | None = None
    """For sensor windows: the float normalised window (what a reconstruction score compares the output with)."""


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each stage of one inference."""

    preprocess_s: float
    invoke_s: float
    decode_s: float


def _dequantizer(spec: TensorSpec) -> tuple[float, float] | None:
    if spec.dtype.kind in "iu" and spec.quantization is not None:
        return spec.quantization.scale, float(spec.quantization.zero_point)
    return None


class Model:
    """A bundle loaded in its runtime, ready to run on frames, windows or tensors."""

    def __init__(
        self, bundle: Bundle, options: RuntimeOptions | None = None, backend: Backend | None = None
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend or open_backend(
            bundle.model_path, options, self.manifest.runtime, self.manifest.input_shapes
        )
        self._invoke = self.backend.invoke
        try:
            self._check_contract()
        except ContractError:
            self.backend.close()
            raise

    def _check_contract(self) -> None:
        backend, manifest = self.backend, self.manifest
        self._feeds: list[Array | None] = []
        self._states: list[tuple[int, int, Array]] = []  # (feed position, output index, initial value)
        self._data_at = 0
        if manifest.inputs:
            self._plan_inputs()
        elif len(backend.inputs) != 1:
            names = ", ".join(f"'{s.name}'" for s in backend.inputs)
            raise ContractError(
                f"the model has {len(backend.inputs)} inputs ({names}): name each in the manifest's `inputs` "
                "(one data input, constants, states fed from outputs)"
            )
        spec = backend.inputs[self._data_at]
        contract = manifest.input
        self._image: ImagePreprocessor | None = None
        self._window: WindowPreprocessor | None = None
        self._tensor: TensorPreprocessor | None = None
        if isinstance(contract, ImageInput):
            self._image = ImagePreprocessor(contract, spec)
        elif isinstance(contract, WindowInput):
            self._window = WindowPreprocessor(contract, spec)
        else:
            self._tensor = TensorPreprocessor(spec)
        self._decoder = make_decoder(manifest, (spec,), backend.outputs, self.bundle.labels)
        output = manifest.output
        self._needs_input = isinstance(output, AnomalyOutput) and output.mode == "reconstruction"
        self._dequant = [_dequantizer(s) for s in backend.outputs]
        self._input_dequant = _dequantizer(spec)

    @classmethod
    def load(cls, folder: Path | str, options: RuntimeOptions | None = None, verify: bool = True) -> Model:
        """Loads and checks a bundle folder."""
        return cls(load_bundle(folder, verify=verify), options)

    @property
    def name(self) -> str:
        """Model name from the manifest."""
        return self.manifest.name

    @property
    def version(self) -> int:
        """Model version from the manifest."""
        return self.manifest.version

    @property
    def input_kind(self) -> str:
        """`image`, `window` or `tensor`: what `prepare` takes."""
        return self.manifest.input.kind

    def prepare(self, data: Array) -> Prepared:
        """Pre-processes a BGR frame, a [time, channel] window or a tensor into the model input."""
        if self._image is not None:
            tensor, frame_map = self._image(data)
            return Prepared(tensor, frame_map)
        if self._window is not None:
            return Prepared(self._window(data), normalized=self._window.normalized)
        assert self._tensor is not None
        return Prepared(self._tensor(data))

    def _plan_inputs(self) -> None:
        """Checks `inputs` against the model and lays out the feed: constants made once, states at their initial."""
        backend = self.backend
        by_name = {spec.name: (index, spec) for index, spec in enumerate(backend.inputs)}
        outputs = {spec.name: (index, spec) for index, spec in enumerate(backend.outputs)}
        declared = {item.name for item in self.manifest.inputs}
        if declared != set(by_name):
            missing = sorted(set(by_name) - declared)
            unknown = sorted(declared - set(by_name))
            raise ContractError(
                "the manifest's `inputs` must name every model input exactly: "
                + "; ".join(
                    part
                    for part in (
                        f"not named: {', '.join(missing)}" if missing else "",
                        f"not in the model: {', '.join(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        self._feeds = [None] * len(backend.inputs)
        for item in self.manifest.inputs:
            index, spec = by_name[item.name]
            if item.role == "data":
                self._data_at = index
                continue
            if min(spec.shape, default=1) < 1:
                raise ContractError(
                    f"input '{item.name}' has a free size {list(spec.shape)}: pin it in `input_shapes`"
                )
            if item.role == "constant":
                assert item.value is not None
                values = np.asarray(item.value, dtype=np.float64)
                try:
                    constant = np.broadcast_to(values, spec.shape).astype(spec.dtype)
                except ValueError as error:
                    raise ContractError(
                        f"constant input '{item.name}': {values.size} value(s) do not fit its shape "
                        f"{list(spec.shape)}"
                    ) from error
                self._feeds[index] = np.ascontiguousarray(constant)
                continue
            assert item.from_output is not None
            if item.from_output not in outputs:
                known = ", ".join(outputs)
                raise ContractError(
                    f"state input '{item.name}' is fed from '{item.from_output}', not an output ({known})"
                )
            out_index, out_spec = outputs[item.from_output]
            if min(out_spec.shape, default=1) >= 1 and tuple(out_spec.shape) != tuple(spec.shape):
                raise ContractError(
                    f"state input '{item.name}' {list(spec.shape)} differs from output '{out_spec.name}' "
                    f"{list(out_spec.shape)}"
                )
            initial = np.full(spec.shape, item.initial, dtype=spec.dtype)
            self._states.append((index, out_index, initial))
            self._feeds[index] = initial.copy()

    @property
    def data_spec(self) -> TensorSpec:
        """The model input the input contract feeds."""
        return self.backend.inputs[self._data_at]

    @property
    def stateful(self) -> bool:
        """Whether the model carries a state from one call to the next."""
        return bool(self._states)

    def reset_state(self) -> None:
        """Puts every state input back to its initial value (a new stream, a gap, a restarted source)."""
        for position, _, initial in self._states:
            self._feeds[position] = initial.copy()

    def invoke(self, tensor: Array) -> list[Array]:
        """Runs the model on a prepared input; returns its raw (possibly quantized) outputs. A model with several
        inputs is fed its constants and states beside it, and its states are taken from this call's outputs."""
        if not self._feeds:
            return self._invoke((tensor,))
        feeds = self._feeds
        feeds[self._data_at] = tensor
        outputs = self._invoke(feeds)  # type: ignore[arg-type]  # every slot is filled
        for position, out_index, _ in self._states:
            # both runtimes hand back fresh arrays each call (ORT's outputs, LiteRT's get_tensor copies): no copy
            feeds[position] = outputs[out_index]
        return outputs

    def dequantize(self, outputs: list[Array]) -> list[FloatArray]:
        """Outputs as float32, dequantized with the model's own scale and zero point."""
        real = []
        for array, params in zip(outputs, self._dequant, strict=True):
            if params is None:
                real.append(np.asarray(array, dtype=np.float32))
            else:
                scale, zero_point = params
                real.append((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale))
        return real

    def decode(self, outputs: list[Array], prepared: Prepared) -> Result:
        """Dequantizes and decodes raw outputs into a result."""
        context = DecodeContext(frame_map=prepared.frame_map)
        if self._needs_input:
            context.normalized_input = (
                prepared.normalized if prepared.normalized is not None else self._real_input(prepared.tensor)
            )
        return self._decoder(self.dequantize(outputs), context)

    def _real_input(self, tensor: Array) -> FloatArray:
        if self._window is not None:
            return self._window.normalized
        if self._input_dequant is None:
            return np.asarray(tensor, dtype=np.float32)
        scale, zero_point = self._input_dequant
        real: FloatArray = (tensor.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
        return real

    def infer(self, data: Array) -> Result:
        """Pre-process, invoke and decode one input."""
        prepared = self.prepare(data)
        return self.decode(self.invoke(prepared.tensor), prepared)

    def infer_timed(self, data: Array) -> tuple[Result, Timings]:
        """`infer` with the time each stage took."""
        t0 = time.perf_counter()
        prepared = self.prepare(data)
        t1 = time.perf_counter()
        raw = self.invoke(prepared.tensor)
        t2 = time.perf_counter()
        result = self.decode(raw, prepared)
        t3 = time.perf_counter()
        return result, Timings(t1 - t0, t2 - t1, t3 - t2)

    def close(self) -> None:
        """Releases the runtime."""
        self.backend.close()
