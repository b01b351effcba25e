"""The model bundle manifest (`manifest.json`): what a model is, how to feed it and how to read its outputs.

Invariants enforced here, without I/O:
- every path in the manifest is relative, stays inside the bundle folder, and is listed in `files` with its sha256 and size;
- the runtime follows from the model file's type (`.tflite` -> LiteRT, `.onnx` -> ONNX Runtime);
- the output decoding matches the task;
- quantization parameters are never part of the manifest: they are read from the model itself.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

Task = Literal["classification", "detection", "anomaly", "raw", "segmentation", "keypoints"]
RuntimeName = Literal["litert", "onnxruntime"]
RUNTIME_BY_SUFFIX: dict[str, RuntimeName] = {".tflite": "litert", ".onnx": "onnxruntime"}

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_relative(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or "\\" in path or ".." in parts or path != str(PurePosixPath(path)):
        raise ValueError(f"'{path}' must be a plain relative path inside the bundle")
    return path


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} values, expected 1 or {channels} (one per channel)")
    return values


class ImageInput(_Strict):
    """An image input: frames are resized, colour-converted and normalised as `(pixel - mean) / std`."""

    kind: Literal["image"] = "image"
    layout: Literal["NHWC", "NCHW"] = Field("NHWC", description="Tensor layout of the model input.")
    color: Literal["RGB", "BGR", "GRAY"] = Field("RGB", description="Channel order the model was trained on.")
    width: int = Field(gt=0, le=8192, description="Model input width in pixels.")
    height: int = Field(gt=0, le=8192, description="Model input height in pixels.")
    resize: Literal["stretch", "letterbox", "center_crop", "pad"] = Field(
        "stretch",
        description="How a frame of another aspect ratio is fitted to the input size: stretch; letterbox (keep "
        "the aspect ratio, centred, padded around); pad (keep the aspect ratio, top-left, padded right and "
        "bottom, as text recognisers expect); center_crop.",
    )
    interpolation: Literal["linear", "area", "nearest"] = Field("linear", description="Resize interpolation.")
    mean: tuple[float, ...] = Field(
        (0.0,), description="Per-channel mean in 0..255 pixel units, model channel order."
    )
    std: tuple[float, ...] = Field(
        (1.0,), description="Per-channel std in 0..255 pixel units, model channel order."
    )
    pad_value: int = Field(114, ge=0, le=255, description="Padding pixel value of letterbox and pad.")

    @property
    def channels(self) -> int:
        """Number of colour channels the model takes."""
        return 1 if self.color == "GRAY" else 3

    @model_validator(mode="after")
    def _check_normalisation(self) -> ImageInput:
        _per_channel(self.mean, self.channels, "mean")
        std = _per_channel(self.std, self.channels, "std")
        if any(s <= 0 for s in std):
            raise ValueError("std values must be > 0")
        return self


class WindowInput(_Strict):
    """A window of multichannel sensor samples, normalised per channel as `(x - mean) / std`."""

    kind: Literal["window"] = "window"
    layout: Literal["NTC", "NCT"] = Field(
        "NTC", description="NTC: [1, time, channel]; NCT: [1, channel, time]."
    )
    length: int = Field(gt=0, le=1_000_000, description="Window length in samples.")
    channels: tuple[str, ...] = Field(min_length=1, description="Channel names, in model order.")
    mean: tuple[float, ...] = Field((0.0,), description="Per-channel mean in the sensor's units.")
    std: tuple[float, ...] = Field((1.0,), description="Per-channel std in the sensor's units.")

    @model_validator(mode="after")
    def _check_channels(self) -> WindowInput:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channel names must be unique")
        _per_channel(self.mean, len(self.channels), "mean")
        std = _per_channel(self.std, len(self.channels), "std")
        if any(s <= 0 for s in std):
            raise ValueError("std values must be > 0")
        return self


class TensorInput(_Strict):
    """Any tensor, fed as given (cast to the model's dtype; quantized with the model's parameters if integer)."""

    kind: Literal["tensor"] = "tensor"


InputContract = Annotated[ImageInput | WindowInput | TensorInput, Field(discriminator="kind")]


class ClassificationOutput(_Strict):
    """Top-k labels from a vector of class scores."""

    task: Literal["classification"] = Field("classification", exclude=True)
    output_index: int = Field(0, ge=0, description="Which model output holds the class scores.")
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        "none", description="Applied to the scores first."
    )
    top_k: int = Field(5, ge=1, le=1000)
    min_score: float = Field(0.0, ge=0.0, description="Labels scoring below this are not reported.")


class AnchorOptions(_Strict):
    """SSD anchor generation (the options of TensorFlow's and MediaPipe's SSD anchor generators)."""

    strides: tuple[int, ...] = Field(
        min_length=1, description="Feature map stride of each layer, e.g. [8, 16, 16, 16]."
    )
    min_scale: float = Field(gt=0, description="Anchor scale of the first layer, a share of the input.")
    max_scale: float = Field(gt=0, description="Anchor scale of the last layer.")
    aspect_ratios: tuple[float, ...] = Field((1.0,), min_length=1)
    interpolated_scale_aspect_ratio: float = Field(
        1.0, ge=0, description="> 0 adds an anchor of scale sqrt(this layer's x the next's) with this ratio."
    )
    offset_x: float = Field(0.5, ge=0, le=1, description="Anchor centre within its cell.")
    offset_y: float = Field(0.5, ge=0, le=1)
    fixed_anchor_size: bool = Field(
        True, description="Anchors of width and height 1 (box sizes then come from the regressors alone)."
    )
    reduce_boxes_in_lowest_layer: bool = False
    input_width: int | None = Field(None, gt=0, description="Default: the model input's width.")
    input_height: int | None = Field(None, gt=0, description="Default: the model input's height.")


class DetectionOutput(_Strict):
    """Boxes from a YOLO-style `N x (4 [+1] + classes)` tensor (NMS applied here) or the 4-output SSD layout."""

    task: Literal["detection"] = Field("detection", exclude=True)
    format: Literal["yolo", "ssd", "anchors"] = Field(
        description="yolo: one N x (4+classes) tensor; ssd: boxes/classes/scores/count; anchors: an SSD head "
        "without post-processing, regressors [N, 4 + 2 x keypoints] and scores [N, classes] over generated anchors."
    )
    box_format: Literal["cxcywh", "xyxy"] = Field(
        "cxcywh", description="yolo: how the 4 box values are laid out."
    )
    normalized: bool = Field(
        True, description="yolo: box values are 0..1 of the input size (else input pixels)."
    )
    objectness: bool = Field(
        False, description="yolo: a 5th column holds objectness, multiplied into class scores."
    )
    transposed: bool | None = Field(None, description="yolo: the tensor is (4+classes) x N; None detects it.")
    activation: Literal["none", "sigmoid"] = Field(
        "none", description="yolo and anchors: applied to the score columns."
    )
    class_offset: int = Field(0, description="ssd: added to class indices before the label lookup.")
    anchors: AnchorOptions | None = Field(None, description="anchors: how the anchors are generated.")
    box_scale: tuple[float, float, float, float] | None = Field(
        None,
        description="anchors: the x, y, w, h scales of the centre-size box coding (default: the input's width, "
        "height, width, height, as BlazeFace-style heads use; TensorFlow's SSD uses 10, 10, 5, 5).",
    )
    box_order: Literal["xywh", "yxhw"] = Field("xywh", description="anchors: order of the coded box values.")
    exponential_box_size: bool = Field(
        False, description="anchors: w, h are coded as logs (TensorFlow's SSD)."
    )
    keypoints: tuple[str, ...] = Field(
        (), description="anchors: names of the keypoints coded after the box, two values (x, y) each."
    )
    score_clip: float | None = Field(
        None, gt=0, description="anchors: logits clipped to +-this before the sigmoid."
    )
    nms: Literal["hard", "weighted"] = Field(
        "hard", description="anchors: hard NMS keeps the best box; weighted merges each cluster by score."
    )
    score_threshold: float = Field(0.5, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.45, gt=0.0, le=1.0, description="yolo: NMS overlap threshold.")
    max_detections: int = Field(100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _check_anchors(self) -> DetectionOutput:
        if self.format == "anchors" and self.anchors is None:
            raise ValueError("format 'anchors' needs `anchors` (the anchor generation options)")
        return self


class AnomalyOutput(_Strict):
    """An anomaly score: the model's own score output, or the reconstruction error of an autoencoder."""

    task: Literal["anomaly"] = Field("anomaly", exclude=True)
    mode: Literal["score", "reconstruction"] = Field(
        description="score: the output is the score; reconstruction: mean squared error of output vs normalised input."
    )
    output_index: int = Field(0, ge=0)
    threshold: float = Field(description="A score above this is an anomaly.")


class RawOutput(_Strict):
    """No decoding: every output is reported as a named tensor with its shape and summary statistics."""

    task: Literal["raw"] = Field("raw", exclude=True)


class SegmentationOutput(_Strict):
    """A dense per-pixel output: class scores `[1, H, W, C]` / `[1, C, H, W]`, or one probability map (C = 1)."""

    task: Literal["segmentation"] = Field("segmentation", exclude=True)
    output_index: int = Field(0, ge=0, description="Which model output holds the map.")
    layout: Literal["auto", "NHWC", "NCHW"] = Field(
        "auto", description="Where the class axis is; auto: the last axis unless the second is smaller."
    )
    activation: Literal["none", "softmax", "sigmoid"] = Field(
        "none",
        description="Applied to the scores first (the confidence of a region is the mean of its pixels').",
    )
    threshold: float = Field(0.5, description="A one-channel map: a pixel is foreground at or above this.")
    background: int | None = Field(
        0, description="The class index of background (no regions reported for it); None: every class counts."
    )
    min_area: float = Field(
        0.001, ge=0, le=1, description="Regions smaller than this share of the map are dropped."
    )
    max_regions: int = Field(20, ge=1, le=1000)


class KeypointsOutput(_Strict):
    """Named landmarks: `[..., points x values]` coordinates and an optional presence score output."""

    task: Literal["keypoints"] = Field("keypoints", exclude=True)
    output_index: int = Field(0, ge=0, description="Which model output holds the coordinates.")
    names: tuple[str, ...] = Field(
        (), description="Landmark names, in model order; default kp0, kp1, ... for every point."
    )
    values_per_point: int = Field(
        2, ge=2, le=8, description="Values per point (x, y first; then z, visibility...)."
    )
    coordinates: Literal["input_pixels", "normalized"] = Field(
        "input_pixels", description="x, y in model-input pixels or 0..1 of the input."
    )
    presence_index: int | None = Field(
        None, ge=0, description="Which output holds the presence score, if any."
    )
    presence_activation: Literal["none", "sigmoid"] = Field("sigmoid")
    presence_threshold: float = Field(0.5, description="Below this the object is reported absent.")


OutputContract = Annotated[
    ClassificationOutput | DetectionOutput | AnomalyOutput | RawOutput | SegmentationOutput | KeypointsOutput,
    Field(discriminator="task"),
]


class ModelInput(_Strict):
    """One input of a model with several: the data input (fed by the input contract), a constant, or a state fed
    from a named output of the previous call."""

    name: str = Field(min_length=1, description="The model's input tensor name.")
    role: Literal["data", "constant", "state"]
    value: float | tuple[float, ...] | None = Field(
        None, description="constant: the value (a scalar broadcast to the input's shape, or every element)."
    )
    from_output: str | None = Field(
        None, description="state: the output whose value feeds this input next call."
    )
    initial: float = Field(0.0, description="state: the value it starts from and is reset to.")

    @model_validator(mode="after")
    def _check_role(self) -> ModelInput:
        if self.role == "constant" and self.value is None:
            raise ValueError(f"constant input '{self.name}' needs a `value`")
        if self.role == "state" and not self.from_output:
            raise ValueError(f"state input '{self.name}' needs `from_output`, the output that feeds it")
        if self.role != "state" and self.from_output is not None:
            raise ValueError(f"only a state input takes `from_output` ('{self.name}' is {self.role})")
        return self


class LatencyBudget(_Strict):
    """The latency a model must meet on one class of device."""

    device_class: str = Field(min_length=1, description="For example `rpi5`, `jetson-orin-nano`, `x86_64`.")
    p99_ms: float = Field(gt=0, description="Invoke latency p99 budget in milliseconds.")


class GoldenCase(_Strict):
    """One golden test vector: a source input and the dequantized outputs it must produce."""

    input: str = Field(description="Image (.png/.jpg), window (.npy/.csv) or tensor (.npy) file.")
    expected: str = Field(description="`.npz` with `output_0`, `output_1`, ...: dequantized float32 outputs.")
    note: str = Field("", description="What the case shows, for example the expected top-1 label.")

    @field_validator("input", "expected")
    @classmethod
    def _check_paths(cls, value: str) -> str:
        return _check_relative(value)


class OutputTolerance(_Strict):
    """How far one output may move in the golden self-test: `atol + rtol * range`, `range` being the spread of
    that output's values over the samples the bundle was made from (so a narrow output gets a narrow limit)."""

    name: str = Field("", description="The output tensor's name (for reports).")
    atol: float = Field(ge=0, description="Absolute part: the quantization step's share, or a float floor.")
    rtol: float = Field(ge=0, le=1, description="Relative part, a share of this output's own range.")
    range: float = Field(ge=0, description="max - min of this output over the samples.")

    @property
    def allowed(self) -> float:
        """The largest absolute deviation allowed on this output."""
        return self.atol + self.rtol * self.range


class Golden(_Strict):
    """The golden self-test run before a model is activated."""

    tolerance: float | None = Field(
        None,
        gt=0,
        description="One absolute limit for every output (bundles made before per-output limits); `outputs` "
        "takes precedence.",
    )
    outputs: tuple[OutputTolerance, ...] = Field(
        (), description="One limit per model output, in output order."
    )
    cases: tuple[GoldenCase, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_limits(self) -> Golden:
        if self.tolerance is None and not self.outputs:
            raise ValueError("give per-output limits (`outputs`) or one `tolerance`")
        if self.outputs and min(o.allowed for o in self.outputs) <= 0:
            raise ValueError("every output's limit (atol + rtol * range) must be > 0")
        return self

    def allowed(self, index: int) -> float:
        """The limit on output `index`."""
        if self.outputs:
            if index >= len(self.outputs):
                raise ValueError(f"the golden limits name {len(self.outputs)} outputs, the model gives more")
            return self.outputs[index].allowed
        assert self.tolerance is not None
        return self.tolerance


class FileEntry(_Strict):
    """The integrity record of one bundle file."""

    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _check_sha(cls, value: str) -> str:
        if not _SHA256_RE.match(value):
            raise ValueError("must be 64 lower-case hex digits")
        return value


class Manifest(_Strict):
    """The whole manifest of a model bundle."""

    schema_: Literal[1] = Field(1, alias="schema", description="Manifest schema version.")
    name: str = Field(description="Model name: lower-case letters, digits, '.', '_' and '-'.")
    version: int = Field(ge=1, description="Release version; increases with every release of this name.")
    description: str = ""
    task: Task
    model: str = Field(description="The model file: `.tflite` (LiteRT) or `.onnx` (ONNX Runtime).")
    labels: str | None = Field(None, description="Optional labels file, one label per line.")
    reference: str | None = Field(None, description="Optional drift reference statistics (reference.json).")
    input: InputContract
    input_shapes: dict[str, tuple[int, ...]] = Field(
        default_factory=dict,
        description="Pinned shapes by input name for models with free (dynamic) dimensions, applied at load "
        'without rewriting the model file, for example {"x": [1, 3, 48, 192]}.',
    )
    inputs: tuple[ModelInput, ...] = Field(
        (), description="Every input of a model with several: one `data` input, constants and states."
    )
    state_reset_s: float = Field(
        2.0,
        gt=0,
        description="A stateful model's state is reset when this much capture time passes between two items "
        "(or the source restarts).",
    )
    output: OutputContract
    latency_budgets: tuple[LatencyBudget, ...] = ()
    golden: Golden | None = None
    files: dict[str, FileEntry] = Field(
        description="sha256 and size of every file in the bundle but the manifest."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _tag_output_with_task(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("output"), dict) and "task" in data:
            data = {**data, "output": {**data["output"], "task": data["task"]}}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                "must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str) -> str:
        _check_relative(value)
        suffix = PurePosixPath(value).suffix.lower()
        if suffix not in RUNTIME_BY_SUFFIX:
            known = ", ".join(sorted(RUNTIME_BY_SUFFIX))
            raise ValueError(f"unknown runtime for model file '{value}': expected a file ending in {known}")
        return value

    @field_validator("labels", "reference")
    @classmethod
    def _check_optional_path(cls, value: str | None) -> str | None:
        return None if value is None else _check_relative(value)

    @field_validator("input_shapes")
    @classmethod
    def _check_shapes(cls, value: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        for name, shape in value.items():
            if not name:
                raise ValueError("an input name is empty")
            if not shape or any(size < 1 for size in shape):
                raise ValueError(f"the shape pinned for input '{name}' must be sizes >= 1, got {list(shape)}")
        return value

    @field_validator("files")
    @classmethod
    def _check_files(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for path in value:
            _check_relative(path)
            if path == MANIFEST_NAME:
                raise ValueError("the manifest cannot list itself")
        return value

    @model_validator(mode="after")
    def _check_references(self) -> Manifest:
        for path in self.referenced_files():
            if path not in self.files:
                raise ValueError(f"'{path}' is used by the manifest but not listed in `files`")
        if self.inputs:
            roles = [i.role for i in self.inputs]
            if roles.count("data") != 1:
                raise ValueError(
                    f"`inputs` names {roles.count('data')} data inputs; exactly one is fed by `input`"
                )
            names = [i.name for i in self.inputs]
            if len(set(names)) != len(names):
                raise ValueError("`inputs` names an input twice")
        if self.task in ("detection", "segmentation", "keypoints") and self.input.kind != "image":
            raise ValueError(f"a {self.task} model needs an image input")
        return self

    @property
    def runtime(self) -> RuntimeName:
        """The runtime that runs this model, from the model file's type."""
        return RUNTIME_BY_SUFFIX[PurePosixPath(self.model).suffix.lower()]

    def referenced_files(self) -> list[str]:
        """Every file the manifest points at (model, labels, reference, golden vectors)."""
        paths = [self.model]
        paths += [p for p in (self.labels, self.reference) if p is not None]
        if self.golden is not None:
            for case in self.golden.cases:
                paths += [case.input, case.expected]
        return paths

    def to_json_dict(self) -> dict[str, Any]:
        """The manifest as written to manifest.json."""
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=False)
        # Fields that older agents do not know stay off the file when unused, so their bundles still load there.
        if not data["input_shapes"]:
            del data["input_shapes"]
        if not data["inputs"]:
            del data["inputs"], data["state_reset_s"]
        golden = data.get("golden")
        if golden is not None:
            for key in ("outputs", "tolerance"):
                if not golden[key]:
                    del golden[key]
        return data
