"""Whether a genuine release is meant for this device and fits it: pure decisions on the signed `custom` field.

TUF has already said the release is genuine (signatures, thresholds, versions, expiry); this says whether it is for
*this* device (Uptane's split): the right name and version, this fleet and group, an agent new enough, a runtime and
execution providers it has, the input it feeds, and the memory and disk it needs. No I/O: the device's facts are
gathered by `agent.ota.probe` and passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.ota.errors import UpdateRefused
from agent.release.formats import Desired, ReleaseCustom

MIB = 1024 * 1024


@dataclass(frozen=True)
class DeviceFacts:
    """What the device offers a release; None where it is not known (that check is then skipped)."""

    runtimes: frozenset[str]
    """Runtimes that import here: `litert`, `onnxruntime`."""
    providers: frozenset[str] = frozenset()
    """ONNX Runtime execution providers available here."""
    input_kind: str | None = None
    """What the device's source gives: `image` or `window`."""
    ram_mb: int | None = None
    """Physical memory, MiB."""
    free_disk_bytes: int | None = None
    """Free space in the state directory, bytes."""


@dataclass(frozen=True)
class Limits:
    """The device's own limits on a release (from `OtaConfig`)."""

    max_archive_bytes: int
    reserve_disk_bytes: int


def version_tuple(text: str) -> tuple[int, ...]:
    """`1.2.3` -> (1, 2, 3, 0); the leading digits of each part count (`0.1.0.dev1` -> (0, 1, 0, 0))."""
    parts = []
    for part in text.split(".")[:4]:
        match = re.match(r"\d+", part)
        parts.append(int(match.group()) if match else 0)
    return tuple(parts + [0] * (4 - len(parts)))


def disk_needed(custom: ReleaseCustom, archive_length: int) -> int:
    """Bytes an install takes: the stated need, else the partial archive, the unpacked bundle and the index."""
    computed = 2 * archive_length + custom.block_index.length
    return max(custom.capabilities.disk_mb * MIB, computed)


def check_release(
    custom: ReleaseCustom,
    archive_length: int,
    *,
    desired: Desired,
    fleet: str,
    group: str | None,
    agent_version: str,
    facts: DeviceFacts,
    limits: Limits,
) -> None:
    """Raises UpdateRefused with the first reason the release is not for this device or does not fit it."""
    if (custom.name, custom.version) != (desired.model, desired.version):
        raise UpdateRefused(
            "mismatch",
            f"the signed target for {desired.model} v{desired.version} describes {custom.name} v{custom.version}",
        )
    if custom.fleet != fleet:
        raise UpdateRefused(
            "other-fleet", f"the release is for fleet {custom.fleet}, this device is in {fleet}"
        )
    if custom.groups and group not in custom.groups:
        raise UpdateRefused(
            "other-group",
            f"the release is for groups {', '.join(custom.groups)}; this device is in {group or 'no group'}",
        )
    if version_tuple(custom.min_agent_version) > version_tuple(agent_version):
        raise UpdateRefused(
            "agent-too-old",
            f"the release needs edge-agent {custom.min_agent_version}, this is {agent_version}",
        )
    _check_capabilities(custom, facts)
    if archive_length > limits.max_archive_bytes:
        raise UpdateRefused(
            "too-large", f"the archive is {archive_length} bytes, over the {limits.max_archive_bytes} allowed"
        )
    if facts.free_disk_bytes is not None:
        need = disk_needed(custom, archive_length)
        if facts.free_disk_bytes - limits.reserve_disk_bytes < need:
            raise UpdateRefused(
                "disk",
                f"the install needs {need // MIB + 1} MiB and {limits.reserve_disk_bytes // MIB} MiB must stay "
                f"free; {facts.free_disk_bytes // MIB} MiB are",
            )


def _check_capabilities(custom: ReleaseCustom, facts: DeviceFacts) -> None:
    needs = custom.capabilities
    if needs.runtime not in facts.runtimes:
        have = ", ".join(sorted(facts.runtimes)) or "none"
        raise UpdateRefused("runtime", f"the release needs runtime {needs.runtime}; this device has {have}")
    missing = [p for p in needs.providers if p not in facts.providers]
    if missing:
        raise UpdateRefused(
            "providers", f"the release needs execution providers {', '.join(missing)}, not available here"
        )
    if facts.input_kind is not None and needs.input_kind != facts.input_kind:
        raise UpdateRefused(
            "input-kind",
            f"the release takes {needs.input_kind} input, this device's source gives {facts.input_kind}",
        )
    if facts.ram_mb is not None and needs.ram_mb > facts.ram_mb:
        raise UpdateRefused(
            "ram", f"the release needs {needs.ram_mb} MiB of memory, this device has {facts.ram_mb}"
        )


__all__ = ["DeviceFacts", "Limits", "check_release", "disk_needed", "version_tuple"]
