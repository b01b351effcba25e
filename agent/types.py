"""Shared type aliases."""

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[Any]
"""Any numpy array: frames (uint8), windows (float32), model tensors (float32, int8, uint8...)."""

FloatArray: TypeAlias = npt.NDArray[np.float32]

__all__ = ["Array", "FloatArray", "int_range"]


def int_range(dtype: np.dtype[Any]) -> tuple[int, int]:
    """Smallest and largest value of an integer dtype."""
    info = np.iinfo(dtype.type)
    return int(info.min), int(info.max)
