"""The model in service as the loop sees it: a loaded model bound to what the source delivers.

`bind_model` is the one check that a model can take a source's items (frames or windows, and which sensor channels, in
the model's order); the loop, the monitors and the model service all hold an `ActiveModel`, never a bare `Model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.errors import ModelError
from agent.inference import Model
from agent.sources.base import Item
from agent.types import Array


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model and, for sensor windows, the source columns in the model's channel order."""

    model: Model
    columns: tuple[int, ...] | None = None

    def adapt(self, item: Item) -> Array:
        """The item's data as the model takes it (window columns picked and ordered)."""
        if self.columns is None:
            return item.data
        return np.ascontiguousarray(item.data[:, self.columns])


def bind_model(model: Model, kind: str, source_channels: Sequence[str] | None) -> ActiveModel:
    """Checks that a model can take the source's items and maps window channels by name."""
    wanted = model.input_kind
    if wanted == "image" and kind != "frame":
        raise ModelError(f"model {model.name} takes images but the source delivers sensor windows")
    if wanted == "window":
        if kind != "window":
            raise ModelError(f"model {model.name} takes sensor windows but the source delivers frames")
        channels = tuple(getattr(model.manifest.input, "channels", ()))
        if source_channels is None:
            return ActiveModel(model)
        missing = [c for c in channels if c not in source_channels]
        if missing:
            raise ModelError(
                f"model {model.name} needs sensor channels {missing} that the source does not have "
                f"(source channels: {list(source_channels)})"
            )
        columns = tuple(list(source_channels).index(c) for c in channels)
        identity = columns == tuple(range(len(source_channels)))
        return ActiveModel(model, None if identity else columns)
    return ActiveModel(model)
