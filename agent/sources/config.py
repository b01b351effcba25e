"""Source configuration: one pydantic model per source type, joined in a union on the `type` field.

Invariants: unknown keys are errors; every field has a description and units in its name; nothing here does I/O
(paths are checked when the source opens, relative paths resolve against the current directory at that moment);
`name` defaults to the type; cross-field rules (channel counts, stall timeouts that can tell a slow source from a
dead one) are checked here, so a config that validates cannot make a source fail for a reason known in advance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.backoff import BackoffConfig

IMU_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
# The bundled sample video next to the package (a source checkout); absolute so it works whatever the working directory.
DEFAULT_VIDEO = Path(__file__).resolve().parent.parent.parent / "models" / "samples" / "scenes.mp4"

PositiveRate = Annotated[float, Field(gt=0, le=100_000)]
Rate = Literal["native", "max"] | PositiveRate


class _SourceBase(BaseModel):
    """Fields every source has."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "",
        max_length=64,
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name in items, status and events. Default: the source type.",
    )
    stall_timeout_s: float = Field(
        5.0, gt=0, le=86_400, description="No item for this long counts as a stall (state `stalled`)."
    )
    restart_after_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="Reopen the source when no item came for this long; None: wait for it to come back.",
    )
    reconnect: BackoffConfig = Field(
        default_factory=BackoffConfig, description="Waits between attempts to reopen the source."
    )

    @model_validator(mode="after")
    def _common_rules(self) -> _SourceBase:
        if not self.name:
            self.name = str(getattr(self, "type", "source"))
        if self.restart_after_s is not None and self.restart_after_s < self.stall_timeout_s:
            raise ValueError(
                f"restart_after_s ({self.restart_after_s}) must not be below stall_timeout_s ({self.stall_timeout_s})"
            )
        return self


class _WindowBase(_SourceBase):
    """Fields of sources that deliver windows of sensor samples (float32, [window, channels])."""

    window: int = Field(50, ge=1, le=1_000_000, description="Samples per window.")
    hop: int = Field(
        25,
        ge=1,
        le=1_000_000,
        description="Samples between the starts of two windows; above `window`, the samples between windows are "
        "skipped (duty cycling).",
    )
    channels: list[str] = Field(
        default_factory=lambda: list(IMU_CHANNELS),
        description="Channel names, in the order of the window's columns.",
    )
    garbage_limit: int = Field(
        100,
        ge=1,
        description="Unusable samples in a row (unparsable, wrong column count, NaN/inf) after which the source "
        "reports an error and is reopened; fewer are counted and skipped.",
    )

    @model_validator(mode="after")
    def _check_channels(self) -> _WindowBase:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channel names repeat: {self.channels}")
        return self


# ---------------------------------------------------------------- cameras and streams


class V4L2Config(_SourceBase):
    """A USB or CSI camera through Video4Linux2 (OpenCV)."""

    type: Literal["v4l2"] = Field("v4l2", description="Source type.")
    device: str | int = Field(
        "/dev/video0",
        description="Device path (/dev/videoN, or a stable /dev/v4l/by-id/... link) or index N.",
    )
    width: int = Field(640, ge=16, le=8192, description="Frame width asked of the camera, pixels.")
    height: int = Field(480, ge=16, le=8192, description="Frame height asked of the camera, pixels.")
    fps: float = Field(30.0, gt=0, le=1000, description="Frame rate asked of the camera, frames per second.")
    fourcc: Literal["MJPG", "YUYV"] | None = Field(
        "MJPG",
        description="Pixel format asked of the camera: MJPG (compressed, high rates over USB 2) or YUYV; None: "
        "the driver's default.",
    )
    restart_after_s: float | None = Field(
        15.0, gt=0, le=86_400, description="Reopen the camera when no frame came for this long."
    )


class GStreamerConfig(_SourceBase):
    """A GStreamer pipeline ending in an appsink (Jetson CSI `nvarguscamerasrc`, Pi `libcamerasrc`)."""

    type: Literal["gstreamer"] = Field("gstreamer", description="Source type.")
    pipeline: str = Field(
        ...,
        min_length=1,
        description="gst-launch description. If it has no appsink, "
        "`! videoconvert ! video/x-raw,format=BGR ! appsink` is appended.",
    )
    backend: Literal["auto", "opencv", "gi"] = Field(
        "auto",
        description="auto: OpenCV when it is built with GStreamer (JetPack), else GStreamer's Python bindings (gi).",
    )
    open_timeout_s: float = Field(10.0, gt=0, le=600, description="Longest wait for the pipeline to start.")
    restart_after_s: float | None = Field(
        15.0, gt=0, le=86_400, description="Restart the pipeline when no frame came for this long."
    )


class Picamera2Config(_SourceBase):
    """A Raspberry Pi camera through Picamera2 (libcamera)."""

    type: Literal["picamera2"] = Field("picamera2", description="Source type.")
    camera: int = Field(0, ge=0, le=16, description="Camera number (0: the first camera).")
    width: int = Field(640, ge=16, le=8192, description="Main stream width, pixels.")
    height: int = Field(480, ge=16, le=8192, description="Main stream height, pixels.")
    fps: float | None = Field(None, gt=0, le=1000, description="Frame rate; None: the camera's default.")
    restart_after_s: float | None = Field(
        15.0, gt=0, le=86_400, description="Reopen the camera when no frame came for this long."
    )


class StreamConfig(_SourceBase):
    """A network camera: RTSP or HTTP(S) MJPEG through OpenCV's FFmpeg."""

    type: Literal["stream"] = Field("stream", description="Source type.")
    url: str = Field(
        ..., description="rtsp://, rtsps://, http:// or https:// URL; credentials are hidden in reports."
    )
    transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP transport: tcp (survives lossy Wi-Fi) or udp (lower latency)."
    )
    open_timeout_s: float = Field(10.0, gt=0, le=600, description="Longest wait to connect, seconds.")
    read_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest wait for one frame before the stream counts as broken."
    )

    @model_validator(mode="after")
    def _check_url(self) -> StreamConfig:
        parts = urlsplit(self.url)
        if parts.scheme not in ("rtsp", "rtsps", "http", "https") or not parts.hostname:
            raise ValueError("url must be rtsp://, rtsps://, http:// or https:// with a host")
        return self


# ---------------------------------------------------------------- files


class VideoConfig(_SourceBase):
    """A video file, replayed at its own frame rate or as fast as possible."""

    type: Literal["video"] = Field("video", description="Source type.")
    path: Path = Field(
        DEFAULT_VIDEO, description="Video file; relative paths start at the current directory."
    )
    loop: bool = Field(False, description="Start again at the end instead of ending.")
    rate: Rate = Field(
        "native", description="native: the file's frame rate; max: as fast as possible; a number: frames/s."
    )


class ImagesConfig(_SourceBase):
    """A folder of images, in file-name order."""

    type: Literal["images"] = Field("images", description="Source type.")
    folder: Path = Field(..., description="Folder of .jpg/.png/.bmp/.webp/.tif images.")
    loop: bool = Field(False, description="Start again after the last image instead of ending.")
    fps: float = Field(5.0, gt=0, le=10_000, description="Images per second when rate is native.")
    rate: Rate = Field("native", description="native: `fps`; max: as fast as possible; a number: images/s.")

    @model_validator(mode="after")
    def _check_pace(self) -> ImagesConfig:
        per_s = self.fps if self.rate == "native" else self.rate
        if isinstance(per_s, float) and self.stall_timeout_s <= 1.0 / per_s:
            raise ValueError(f"stall_timeout_s must exceed the time between two images ({1.0 / per_s:g} s)")
        return self


# ---------------------------------------------------------------- sensors


class CsvConfig(_WindowBase):
    """Replay of a recorded CSV file (header row with column names)."""

    type: Literal["csv"] = Field("csv", description="Source type.")
    path: Path = Field(..., description="CSV file with a header row.")
    channels: list[str] = Field(
        default_factory=list,
        description="Columns to use, in window order; empty: every column except the timestamp.",
    )
    timestamp_column: str | None = Field(
        "t", description="Column with the sample time in seconds; None: samples are `sample_rate_hz` apart."
    )
    sample_rate_hz: float | None = Field(
        None, gt=0, le=1_000_000, description="Sample rate when the file has no timestamp column."
    )
    rate: Literal["native", "max"] = Field(
        "native", description="native: the recorded pace scaled by `speed`; max: as fast as possible."
    )
    speed: float = Field(
        1.0, gt=0, le=10_000, description="Replay speed factor for native pacing (2: twice)."
    )
    loop: bool = Field(False, description="Start again at the end instead of ending.")

    @model_validator(mode="after")
    def _check_clock(self) -> CsvConfig:
        if self.timestamp_column is None and self.rate == "native" and self.sample_rate_hz is None:
            raise ValueError("without a timestamp_column, native pacing needs sample_rate_hz")
        if self.timestamp_column is not None and self.timestamp_column in self.channels:
            raise ValueError(f"the timestamp column '{self.timestamp_column}' cannot also be a channel")
        return self


class SerialConfig(_WindowBase):
    """A sensor on a serial port: one sample per line, numbers separated by commas or spaces."""

    type: Literal["serial"] = Field("serial", description="Source type.")
    port: str = Field(
        "/dev/ttyUSB0", description="Serial device (a stable /dev/serial/by-id/... link is best)."
    )
    baud_rate: int = Field(115_200, ge=50, le=10_000_000, description="Line speed, bits per second.")
    stall_timeout_s: float = Field(
        10.0, gt=0, le=86_400, description="No window for this long counts as a stall."
    )


class JsonlConfig(_WindowBase):
    """JSON lines, `{"t": ..., "acc_x": ..., ...}` or `[t, v1, v2, ...]`, from a unix socket or standard input."""

    type: Literal["jsonl"] = Field("jsonl", description="Source type.")
    socket: Path | None = Field(
        None,
        description="Unix stream socket the source listens on (producers connect to it); None: standard input.",
    )
    socket_mode: int = Field(0o660, ge=0, le=0o777, description="Permissions of the socket file.")
    stall_timeout_s: float = Field(
        10.0, gt=0, le=86_400, description="No window for this long counts as a stall."
    )


FaultKind = Literal["spike", "stuck", "dropout"]


class FaultConfig(BaseModel):
    """One kind of fault the synthetic sensor injects, at given times, at random, or both."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind = Field(..., description="spike: a value added; stuck: value held; dropout: NaN.")
    channels: list[str] = Field(default_factory=list, description="Channels it hits; empty: every channel.")
    at_s: list[float] = Field(
        default_factory=list, description="Times it starts, seconds of sample time since the source opened."
    )
    probability: float = Field(
        0.0, ge=0, le=1, description="Chance that it starts at any one sample (per channel)."
    )
    magnitude: float = Field(10.0, description="spike: the value added to the sample.")
    duration_s: float = Field(
        1.0, gt=0, le=86_400, description="stuck, dropout: how long it lasts, seconds of sample time."
    )

    @model_validator(mode="after")
    def _check_any(self) -> FaultConfig:
        if not self.at_s and self.probability == 0:
            raise ValueError("a fault needs at_s times or a probability above 0")
        if any(t < 0 for t in self.at_s):
            raise ValueError("fault times (at_s) must not be negative")
        return self


PerChannel = float | list[float]


class SyntheticConfig(_WindowBase):
    """Generated multichannel sensor samples: sine + offset + gaussian noise per channel, with injected faults."""

    type: Literal["synthetic"] = Field("synthetic", description="Source type.")
    rate_hz: float = Field(50.0, gt=0, le=1_000_000, description="Samples per second.")
    rate: Literal["native", "max"] = Field(
        "native", description="native: in real time at rate_hz; max: as fast as possible."
    )
    amplitude: PerChannel = Field(1.0, description="Sine amplitude: one value, or one per channel.")
    frequency_hz: PerChannel = Field(1.0, description="Sine frequency in Hz: one value, or one per channel.")
    offset: PerChannel = Field(0.0, description="Constant added: one value, or one per channel.")
    noise_std: PerChannel = Field(
        0.05, description="Gaussian noise standard deviation: one value, or one per channel."
    )
    seed: int | None = Field(
        0, description="Random seed (noise and random faults); None: different each run."
    )
    faults: list[FaultConfig] = Field(default_factory=list, description="Faults to inject.")

    @model_validator(mode="after")
    def _check_shapes(self) -> SyntheticConfig:
        count = len(self.channels)
        if count == 0:
            raise ValueError("a synthetic sensor needs at least one channel")
        for field in ("amplitude", "frequency_hz", "offset", "noise_std"):
            value = getattr(self, field)
            if isinstance(value, list) and len(value) != count:
                raise ValueError(f"{field} has {len(value)} values for {count} channels")
        if any(v < 0 for v in self.per_channel("noise_std")):
            raise ValueError("noise_std must not be negative")
        for fault in self.faults:
            unknown = [c for c in fault.channels if c not in self.channels]
            if unknown:
                raise ValueError(f"fault channels {unknown} are not among channels {self.channels}")
        if self.rate == "native" and self.stall_timeout_s <= self.hop / self.rate_hz:
            raise ValueError(
                f"stall_timeout_s must exceed the time between two windows (hop / rate_hz = {self.hop / self.rate_hz:g} s)"
            )
        return self

    def per_channel(self, field: str) -> list[float]:
        """A per-channel parameter as one float per channel."""
        value = getattr(self, field)
        return [float(v) for v in value] if isinstance(value, list) else [float(value)] * len(self.channels)


# ---------------------------------------------------------------- audio


AUDIO_WINDOW = 16_000
"""Default window and hop of the audio sources: one second at 16 kHz, the usual keyword-spotting input."""


class _AudioBase(_SourceBase):
    """Fields of the audio sources: windows of PCM samples as float32 in [-1, 1], [window, channels]."""

    window: int = Field(AUDIO_WINDOW, ge=1, le=10_000_000, description="Samples per window (per channel).")
    hop: int = Field(
        AUDIO_WINDOW,
        ge=1,
        le=10_000_000,
        description="Samples between the starts of two windows. Default: `window` (windows side by side); "
        "above `window`, the samples between windows are skipped (duty cycling).",
    )
    channels: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Channel names, in the order of the window's columns.",
    )

    @model_validator(mode="before")
    @classmethod
    def _hop_defaults_to_window(cls, data: Any) -> Any:
        if isinstance(data, dict) and "window" in data and "hop" not in data:
            return {**data, "hop": data["window"]}
        return data

    @model_validator(mode="after")
    def _check_channel_names(self) -> _AudioBase:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channel names repeat: {self.channels}")
        return self


class WavConfig(_AudioBase):
    """Replay of a WAV file (PCM 8/16/24/32-bit integer or 32/64-bit float), read in chunks."""

    type: Literal["wav"] = Field("wav", description="Source type.")
    path: Path = Field(..., description="WAV file; relative paths start at the current directory.")
    channels: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Channel names, in the file's channel order; empty: ch0, ch1, ... as many as the file has "
        "(a count that differs from the file's is an error when the source opens).",
    )
    sample_rate: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Sample rate the file must have, Hz (a file with another rate is refused); None: any.",
    )
    rate: Rate = Field(
        "native",
        description="native: real time at the file's sample rate; max: as fast as possible; a number: windows/s.",
    )
    loop: bool = Field(False, description="Start again at the end instead of ending (the signal continues).")
    garbage_limit: int = Field(
        100,
        ge=1,
        description="Float files only: samples with a NaN or infinite value in a row after which the source "
        "reports an error and is reopened; fewer are counted and skipped.",
    )

    @model_validator(mode="after")
    def _check_pace(self) -> WavConfig:
        # native pacing without `sample_rate`: the interval is known only when the file opens (a warning there)
        interval: tuple[str, float] | None = None
        if isinstance(self.rate, float):
            interval = ("1 / rate", 1.0 / self.rate)
        elif self.rate == "native" and self.sample_rate is not None:
            interval = ("hop / sample_rate", self.hop / self.sample_rate)
        if interval is not None and self.stall_timeout_s <= interval[1]:
            raise ValueError(
                f"stall_timeout_s must exceed the time between two windows ({interval[0]} = {interval[1]:g} s)"
            )
        return self


class AlsaConfig(_AudioBase):
    """A live microphone through ALSA: `arecord` (alsa-utils) run as a child process, raw S16_LE over a pipe."""

    type: Literal["alsa"] = Field("alsa", description="Source type.")
    device: str = Field(
        "default",
        min_length=1,
        max_length=200,
        pattern=r"^[^\s-]\S*$",
        description="ALSA capture device, as `arecord -D` takes it: default, hw:1,0, plughw:CARD=Mic,DEV=0 "
        "(`arecord -L` lists them).",
    )
    sample_rate: int = Field(16_000, ge=1_000, le=768_000, description="Sample rate asked of the device, Hz.")
    channels: list[str] = Field(
        default_factory=lambda: ["ch0"],
        min_length=1,
        max_length=32,
        description="Channel names, in the device's channel order; their count is the channel count asked of "
        "the device.",
    )
    open_timeout_s: float = Field(
        5.0, gt=0, le=600, description="Longest wait for the first samples after starting arecord."
    )

    @model_validator(mode="after")
    def _check_pace(self) -> AlsaConfig:
        interval = self.hop / self.sample_rate
        if self.stall_timeout_s <= interval:
            raise ValueError(
                f"stall_timeout_s must exceed the time between two windows (hop / sample_rate = {interval:g} s)"
            )
        return self


SourceConfig = Annotated[
    V4L2Config
    | GStreamerConfig
    | Picamera2Config
    | StreamConfig
    | VideoConfig
    | ImagesConfig
    | CsvConfig
    | SerialConfig
    | JsonlConfig
    | SyntheticConfig
    | WavConfig
    | AlsaConfig,
    Field(discriminator="type"),
]
"""Any source's config; `type` picks the model."""

WindowSourceConfig = CsvConfig | SerialConfig | JsonlConfig | SyntheticConfig | WavConfig | AlsaConfig


def default_source_config() -> SourceConfig:
    """The source used when the config names none: the bundled sample video, looped."""
    return VideoConfig(path=DEFAULT_VIDEO, loop=True)
