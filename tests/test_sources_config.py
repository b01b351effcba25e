"""Source configuration: the union on `type`, defaults, and the mistakes it refuses before anything opens."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.sources import SOURCES, SourceConfig, open_source
from agent.sources import config as source_config

ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceConfig)


def parse(data: dict[str, Any]) -> Any:
    return ADAPTER.validate_python(data)


MINIMAL = {
    "v4l2": {},
    "gstreamer": {"pipeline": "libcamerasrc"},
    "picamera2": {},
    "stream": {"url": "rtsp://cam.local/stream1"},
    "video": {},
    "images": {"folder": "shots"},
    "csv": {"path": "walk.csv"},
    "serial": {},
    "jsonl": {},
    "synthetic": {},
    "wav": {"path": "tone.wav"},
    "alsa": {},
}


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_every_type_has_usable_defaults_and_a_registered_source(kind: str) -> None:
    config = parse({"type": kind, **MINIMAL[kind]})
    assert config.type == kind and config.name == kind
    assert config.reconnect.initial_s <= config.reconnect.max_s
    source = open_source(config)  # no I/O: nothing is opened here
    assert source.name == kind and source.kind in ("frame", "window")
    assert set(SOURCES) == set(MINIMAL)


def test_every_field_of_every_source_model_is_described() -> None:
    models = [
        v
        for v in vars(source_config).values()
        if isinstance(v, type) and issubclass(v, BaseModel) and v.__module__ == source_config.__name__
    ]
    assert len(models) >= 12
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
        assert model.model_config.get("extra") == "forbid", model.__name__


def test_source_config_from_toml() -> None:
    text = """
    type = "synthetic"
    name = "imu0"
    rate_hz = 100
    channels = ["ax", "ay"]
    amplitude = [1.0, 0.5]
    window = 100
    hop = 50
    [reconnect]
    initial_s = 1
    [[faults]]
    kind = "spike"
    channels = ["ax"]
    at_s = [3.0, 6.5]
    magnitude = 8.0
    """
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    config = parse(toml.loads(text))
    assert config.name == "imu0" and config.rate_hz == 100.0 and config.faults[0].at_s == [3.0, 6.5]
    assert config.reconnect.initial_s == 1.0 and config.reconnect.max_s == 30.0
    assert config.per_channel("amplitude") == [1.0, 0.5] and config.per_channel("offset") == [0.0, 0.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "webcam"}, "does not match any of the expected tags"),
        ({"type": "video", "pth": "x.avi"}, "Extra inputs are not permitted"),
        (
            {"type": "video", "reconnect": {"initial_s": 10, "max_s": 1}},
            "max_s .* must not be below initial_s",
        ),
        (
            {"type": "video", "stall_timeout_s": 10, "restart_after_s": 5},
            "restart_after_s .* must not be below",
        ),
        ({"type": "video", "rate": "fast"}, "rate"),
        ({"type": "video", "rate": -1}, "greater than 0"),
        ({"type": "stream", "url": "file:///etc/passwd"}, "rtsp://, rtsps://, http:// or https://"),
        ({"type": "stream", "url": "rtsp://"}, "with a host"),
        ({"type": "stream", "url": "rtsp://cam", "transport": "sctp"}, "transport"),
        ({"type": "v4l2", "fourcc": "H264"}, "fourcc"),
        ({"type": "images", "folder": "x", "fps": 0.1}, "stall_timeout_s must exceed"),
        ({"type": "csv", "path": "x.csv", "timestamp_column": None}, "needs sample_rate_hz"),
        ({"type": "csv", "path": "x.csv", "channels": ["t", "a"]}, "cannot also be a channel"),
        ({"type": "serial", "channels": ["a", "a"]}, "channel names repeat"),
        ({"type": "serial", "hop": 0}, "greater than or equal to 1"),
        ({"type": "jsonl", "name": "bad name!"}, "should match pattern"),
    ],
)
def test_config_mistakes_are_refused_with_a_reason(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse(data)


def test_hop_larger_than_window_is_allowed_for_duty_cycling() -> None:
    config = parse({"type": "serial", "window": 10, "hop": 100})
    assert (config.window, config.hop) == (10, 100)


def test_paths_stay_relative_until_the_source_opens() -> None:
    config = parse({"type": "video", "path": "clips/door.avi"})
    assert config.path == Path("clips/door.avi")
