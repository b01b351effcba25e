"""The source types, registered by the name in their config's `type` field.

Invariants: each type lives in its own module, imported only when a source of that type is made; making a source
does no I/O (the runner opens it on its own thread), so a missing device or library shows as the source's `failed`
state with its reason, never as a crash at start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from agent.errors import SourceError
from agent.sources.base import Source
from agent.sources.config import SourceConfig


@dataclass(frozen=True)
class SourceEntry:
    """Where a source type is implemented."""

    module: str
    cls: str


SOURCES: dict[str, SourceEntry] = {
    "v4l2": SourceEntry("agent.sources.v4l2", "V4L2Source"),
    "gstreamer": SourceEntry("agent.sources.gstreamer", "GStreamerSource"),
    "picamera2": SourceEntry("agent.sources.picamera", "Picamera2Source"),
    "stream": SourceEntry("agent.sources.stream", "StreamSource"),
    "video": SourceEntry("agent.sources.files", "VideoSource"),
    "images": SourceEntry("agent.sources.files", "ImageFolderSource"),
    "csv": SourceEntry("agent.sources.csv_replay", "CsvReplaySource"),
    "serial": SourceEntry("agent.sources.serial_port", "SerialSource"),
    "jsonl": SourceEntry("agent.sources.jsonl", "JsonlSource"),
    "synthetic": SourceEntry("agent.sources.synthetic", "SyntheticSource"),
    "wav": SourceEntry("agent.sources.wav", "WavSource"),
    "alsa": SourceEntry("agent.sources.alsa", "AlsaSource"),
}


def open_source(config: SourceConfig) -> Source:
    """The source for a config, not yet opened (a SourceRunner opens it)."""
    entry = SOURCES.get(config.type)
    if entry is None:
        raise SourceError(f"unknown source type '{config.type}': known types are {', '.join(SOURCES)}")
    module = importlib.import_module(entry.module)
    source: Source = getattr(module, entry.cls)(config)
    return source
