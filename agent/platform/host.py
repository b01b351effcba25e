"""Facts about this boot and this process that the activation needs: the boot id, the unit's memory limit, memory use.

Linux paths; each reader returns None where the fact is not available (another OS, no cgroup v2, a container), never
raises.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 1024 * 1024


def boot_id(path: Path = BOOT_ID) -> str | None:
    """This boot's id (a new one after every reboot)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def memory_limit_mb(cgroup: Path = CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The memory limit of this process's cgroup v2 (systemd's `MemoryMax`), MiB; None when unlimited or unknown."""
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            folder = root / line[3:].lstrip("/")
            for candidate in (folder, *folder.parents):
                if candidate == root.parent:
                    break
                try:
                    value = (candidate / "memory.max").read_text().strip()
                except OSError:
                    continue
                if value != "max" and value.isdigit():
                    return int(value) / MIB
    return None


def rss_mb(pid: int | None = None) -> float | None:
    """The resident memory of a process (this one by default), MiB."""
    try:
        text = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) / 1024
    return None


__all__ = ["boot_id", "memory_limit_mb", "rss_mb"]
