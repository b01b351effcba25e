"""The one small interface every inference runtime backend implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from agent.errors import ContractError
from agent.types import Array

Shapes = Mapping[str, tuple[int, ...]]
"""Pinned input shapes by input name: fixed values for a model's free (dynamic) dimensions."""


def check_pins(shapes: Shapes, model_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raises ContractError unless every pinned shape names a model input, has its rank, keeps its fixed
    dimensions and gives each free one a size >= 1. `model_shapes` holds -1 for a free dimension."""
    for name, pinned in shapes.items():
        if name not in model_shapes:
            known = ", ".join(f"'{n}'" for n in model_shapes)
            raise ContractError(f"a shape is pinned for input '{name}', but the model's inputs are {known}")
        shape = model_shapes[name]
        if len(pinned) != len(shape):
            raise ContractError(
                f"input '{name}' has {len(shape)} dimensions {_dims(shape)}; the pinned shape {list(pinned)} has "
                f"{len(pinned)}"
            )
        for axis, (fixed, want) in enumerate(zip(shape, pinned, strict=True)):
            if want < 1:
                raise ContractError(f"the pinned shape {list(pinned)} of input '{name}' has a size < 1")
            if fixed >= 0 and fixed != want:
                raise ContractError(
                    f"input '{name}' has shape {_dims(shape)}: dimension {axis} is fixed at {fixed}, the pinned "
                    f"shape {list(pinned)} says {want}"
                )


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join("?" if d < 0 else str(d) for d in shape) + "]"


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
