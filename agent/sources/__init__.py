"""Frame and sensor sources: cameras, streams, files, sensors, a synthetic sensor and audio, behind one small protocol.

`open_source(config)` makes the source a config names; a `SourceRunner` runs it on its own thread, reconnects it,
and hands each item to a callback. See `base.py` for the contract and `runner.py` for the states.
"""

from agent.backoff import BackoffConfig
from agent.sources.base import EndOfStream, Item, ItemKind, Source, SourceState
from agent.sources.config import (
    AlsaConfig,
    CsvConfig,
    FaultConfig,
    GStreamerConfig,
    ImagesConfig,
    JsonlConfig,
    Picamera2Config,
    SerialConfig,
    SourceConfig,
    StreamConfig,
    SyntheticConfig,
    V4L2Config,
    VideoConfig,
    WavConfig,
    default_source_config,
)
from agent.sources.registry import SOURCES, open_source
from agent.sources.runner import SourceRunner, SourceStatus

__all__ = [
    "SOURCES",
    "AlsaConfig",
    "BackoffConfig",
    "CsvConfig",
    "EndOfStream",
    "FaultConfig",
    "GStreamerConfig",
    "ImagesConfig",
    "Item",
    "ItemKind",
    "JsonlConfig",
    "Picamera2Config",
    "SerialConfig",
    "Source",
    "SourceConfig",
    "SourceRunner",
    "SourceState",
    "SourceStatus",
    "StreamConfig",
    "SyntheticConfig",
    "V4L2Config",
    "VideoConfig",
    "WavConfig",
    "default_source_config",
    "open_source",
]
