"""Train, convert and stage the example models bundled with edge-agent.

``stage_all(stage_dir)`` trains every model on data shipped inside installed packages (sklearn
digits, scikit-image photographs, BasicMotions from the sktime wheel), converts each to INT8
TFLite and/or QDQ ONNX next to a float model of the same architecture, measures float vs INT8
quality and writes one ``<bundle>.spec.json`` per bundle. ``write_fixtures`` writes the custom-op
test models. Needs the build extras (tensorflow-cpu, onnx, scikit-learn, scikit-image, sktime's data).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .fixtures import write_fixtures
from .specs import Spec

__all__ = ["SEED", "stage_all", "write_fixtures"]

SEED = 20240611


def stage_all(stage_dir: Path, samples_dir: Path | None = None) -> list[Spec]:
    """Build every bundle's files into ``stage_dir`` and return their specs (also written as
    ``<bundle>.spec.json``). Deterministic for a given machine: fixed seeds and TF op determinism.

    With ``samples_dir``, also (re)writes the committed sample inputs there (``models/samples``).
    """
    import numpy as np

    from . import datasets, detector, digits_cls, keras_models, motion, samples

    stage_dir.mkdir(parents=True, exist_ok=True)
    keras_models.set_seed(SEED)
    split = datasets.load_digit_split(SEED)
    specs = digits_cls.build(stage_dir, split, np.random.default_rng(SEED))
    specs += detector.build(stage_dir, split, np.random.default_rng(SEED + 1))
    motion_specs, motion_result = motion.build(stage_dir, np.random.default_rng(SEED + 2))
    specs += motion_specs
    if samples_dir is not None:
        samples.write_samples(samples_dir, stage_dir, split, motion_result, np.random.default_rng(SEED + 3))
    return specs
