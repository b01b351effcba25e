"""The one small interface every inference runtime backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.types import Array


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a tensor: `real = (q - zero_point) * scale`."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (-1 for a dynamic dimension), element type and quantization of a model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]
    quantization: Quantization | None = None

    def describe(self) -> str:
        """For example `input_1 int8[1,32,32,3] q(scale=0.00392, zp=-128)`."""
        dims = ",".join("?" if d < 0 else str(d) for d in self.shape)
        quant = ""
        if self.quantization is not None:
            quant = f" q(scale={self.quantization.scale:.6g}, zp={self.quantization.zero_point})"
        return f"{self.name} {self.dtype.name}[{dims}]{quant}"


class Backend(Protocol):
    """A loaded model in one runtime. `invoke` takes and returns the model's own (possibly quantized) tensors."""

    runtime: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    detail: str  # which accelerator or provider actually runs the model

    def invoke(self, inputs: Sequence[Array]) -> list[Array]:
        """Runs the model once on one tensor per input; returns one array per output."""
        ...

    def close(self) -> None:
        """Releases the runtime's resources."""
        ...
