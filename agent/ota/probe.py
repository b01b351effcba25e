"""The device's facts a release is checked against: runtimes, execution providers, memory, free disk (I/O)."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from agent.errors import AgentError
from agent.inference.runtimes import runtime_status
from agent.ota.checks import DeviceFacts


@functools.lru_cache(maxsize=1)
def available_runtimes() -> frozenset[str]:
    """Runtimes whose package imports here (imported lazily, once per process)."""
    return frozenset(name for name, status in runtime_status().items() if status.startswith("ok"))


@functools.lru_cache(maxsize=1)
def available_providers() -> frozenset[str]:
    """ONNX Runtime's execution providers here (none when it is missing)."""
    try:
        from agent.inference.runtimes.onnx import import_onnxruntime

        return frozenset(str(p) for p in import_onnxruntime().get_available_providers())
    except (AgentError, ImportError, AttributeError):
        return frozenset()


def ram_mb() -> int | None:
    """Physical memory in MiB, when the platform says."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(path: Path) -> int | None:
    """Free bytes on the file system of `path` (its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def probe(state_dir: Path, input_kind: str | None = None) -> DeviceFacts:
    """The facts of this device for releases installed under `state_dir`."""
    return DeviceFacts(
        runtimes=available_runtimes(),
        providers=available_providers(),
        input_kind=input_kind,
        ram_mb=ram_mb(),
        free_disk_bytes=free_disk(state_dir),
    )


__all__ = ["available_providers", "available_runtimes", "free_disk", "probe", "ram_mb"]
