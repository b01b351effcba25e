"""Host health: CPU, memory, temperature, clock frequency, disk space and Raspberry Pi throttling.

Invariants:
- parsing is done by pure functions on text (`parse_*`), readers only fetch the text; the roots (`/sys`, `/proc`) are
  injectable so that tests point them at a fake tree;
- a missing or unreadable file, or text that does not parse, gives None for that figure, never an exception;
- `sample()` is cheap (a handful of small reads) except the Raspberry Pi throttling state: it is read from the
  firmware's sysfs file when the kernel has one, else from `vcgencmd get_throttled`, a fork that runs at most once per
  `throttle_interval_s` with a short timeout (the last answer is reused in between);
- CPU percentages are deltas between two samples: the first sample reports None. Process CPU is in percent of one core
  (200 = two cores busy), system CPU in percent of all cores.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.platform")

THROTTLE_BITS = {
    0: "under_voltage",
    1: "freq_capped",
    2: "throttled",
    3: "soft_temp_limit",
    16: "under_voltage_occurred",
    17: "freq_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}
"""Bits of the Raspberry Pi firmware's throttling word (`vcgencmd get_throttled`)."""

IGNORED_ZONES = ("pmic-die",)
"""Thermal zones that do not measure a temperature (Jetson's PMIC-Die reads a constant 100 °C)."""

THROTTLE_FILES = (
    "devices/platform/soc/soc:firmware/get_throttled",
    "devices/platform/soc*/soc*:firmware/get_throttled",
)


# ---------------------------------------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative jiffies of all CPUs: total and idle (idle + iowait)."""

    total: int
    idle: int


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/self/stat tells about this process."""

    cpu_ticks: int
    threads: int
    rss_pages: int


def parse_cpu_times(text: str) -> CpuTimes | None:
    """The aggregate `cpu` line of /proc/stat."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:9]]
            except ValueError:
                return None
            if len(values) < 4:
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            return CpuTimes(sum(values), idle)
    return None


def parse_process_stat(text: str) -> ProcessStat | None:
    """utime + stime, thread count and RSS of /proc/PID/stat (the command name may hold spaces and parentheses)."""
    _, _, rest = text.rpartition(")")
    fields = rest.split()
    try:
        return ProcessStat(int(fields[11]) + int(fields[12]), int(fields[17]), int(fields[21]))
    except (IndexError, ValueError):
        return None


def parse_statm_rss(text: str, page_size: int) -> int | None:
    """Resident set size in bytes from /proc/PID/statm."""
    fields = text.split()
    try:
        return int(fields[1]) * page_size
    except (IndexError, ValueError):
        return None


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes by key (values given in kB are converted)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if not parts:
            continue
        try:
            number = int(parts[0])
        except ValueError:
            continue
        out[key.strip()] = number * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else number
    return out


def parse_loadavg(text: str) -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages of /proc/loadavg."""
    try:
        one, five, fifteen = (float(v) for v in text.split()[:3])
    except ValueError:
        return None
    return one, five, fifteen


def parse_temperature(text: str) -> float | None:
    """°C from a thermal zone's `temp` (millidegrees; plain degrees accepted); None when out of any real range."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    celsius = value / 1000.0 if abs(value) >= 1000 else value
    return round(celsius, 1) if -50.0 <= celsius <= 200.0 else None


def pick_cpu_temperature(zones: dict[str, float]) -> float | None:
    """The hottest CPU zone (type naming the CPU, or x86_pkg_temp), else the hottest zone of any type."""
    cpu = [t for name, t in zones.items() if "cpu" in name.lower() or name.lower().startswith("x86_pkg_temp")]
    pool = cpu or list(zones.values())
    return max(pool) if pool else None


def parse_throttled(text: str) -> dict[str, Any] | None:
    """The throttling word (`throttled=0x50005`, or the sysfs file's bare hex) as named flags."""
    value = text.strip().rpartition("=")[2].strip()
    try:
        word = int(value, 16)
    except ValueError:
        return None
    flags = {name: bool(word >> bit & 1) for bit, name in THROTTLE_BITS.items()}
    return {
        "raw": hex(word),
        "flags": flags,
        "now": [name for bit, name in THROTTLE_BITS.items() if bit < 16 and flags[name]],
        "occurred": [
            name.removesuffix("_occurred") for bit, name in THROTTLE_BITS.items() if bit >= 16 and flags[name]
        ],
    }


def cpu_percent(before: CpuTimes, after: CpuTimes) -> float | None:
    """Busy share of all CPUs between two readings, percent."""
    total = after.total - before.total
    if total <= 0:
        return None
    busy = total - (after.idle - before.idle)
    return round(100.0 * min(max(busy / total, 0.0), 1.0), 1)


# ---------------------------------------------------------------------------------------------------------- readers


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except (OSError, ValueError):
        return None


class SystemProbe:
    """Reads host health figures; see the module docstring for what each costs."""

    def __init__(
        self,
        disk_path: Path | str | None = None,
        sysfs_root: Path | str = "/sys",
        procfs_root: Path | str = "/proc",
        vcgencmd: str | None = "vcgencmd",
        throttle_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.disk_path = Path(disk_path) if disk_path is not None else None
        self.sys = Path(sysfs_root)
        self.proc = Path(procfs_root)
        self.throttle_interval_s = throttle_interval_s
        self._clock = clock
        self._vcgencmd = vcgencmd
        self._page_size = _sysconf("SC_PAGE_SIZE", 4096)
        self._ticks = _sysconf("SC_CLK_TCK", 100)
        self._cpu_before: CpuTimes | None = None
        self._proc_before: tuple[float, int] | None = None
        self._throttle: dict[str, Any] | None = None
        self._throttle_at: float | None = None
        self._throttle_source: Path | str | bool | None = False  # False: not resolved yet
        self._freq_files: list[Path] | None = None
        self._zone_dirs: list[Path] | None = None
        self._warned: set[str] = set()

    def sample(self) -> dict[str, Any]:
        """Every figure, JSON-ready; None where the host does not tell."""
        now = self._clock()
        return {
            "process": self.process(now),
            "cpu": self.cpu(),
            "memory": self.memory(),
            "temperature": self.temperature(),
            "disk": self.disk(),
            "throttling": self.throttling(now),
        }

    def process(self, now: float | None = None) -> dict[str, Any]:
        """This process: CPU % of one core since the previous sample, RSS bytes, threads."""
        now = self._clock() if now is None else now
        stat_text = _read(self.proc / "self" / "stat")
        stat = parse_process_stat(stat_text) if stat_text is not None else None
        statm = _read(self.proc / "self" / "statm")
        rss = parse_statm_rss(statm, self._page_size) if statm is not None else None
        if rss is None and stat is not None:
            rss = stat.rss_pages * self._page_size
        cpu = None
        if stat is not None:
            if self._proc_before is not None and now > self._proc_before[0]:
                seconds = (stat.cpu_ticks - self._proc_before[1]) / self._ticks
                cpu = round(max(seconds, 0.0) / (now - self._proc_before[0]) * 100.0, 1)
            self._proc_before = (now, stat.cpu_ticks)
        return {"cpu_pct": cpu, "rss_bytes": rss, "threads": stat.threads if stat else None}

    def cpu(self) -> dict[str, Any]:
        """System CPU % since the previous sample, core count, load averages, clock frequencies."""
        text = _read(self.proc / "stat")
        times = parse_cpu_times(text) if text is not None else None
        percent = None
        if times is not None:
            if self._cpu_before is not None:
                percent = cpu_percent(self._cpu_before, times)
            self._cpu_before = times
        load_text = _read(self.proc / "loadavg")
        load = parse_loadavg(load_text) if load_text is not None else None
        current, top = self._frequencies()
        return {
            "pct": percent,
            "count": os.cpu_count(),
            "load": list(load) if load is not None else None,
            "freq_mhz": current,
            "freq_max_mhz": top,
        }

    def _frequencies(self) -> tuple[float | None, float | None]:
        if self._freq_files is None:
            self._freq_files = sorted(self.sys.glob("devices/system/cpu/cpu[0-9]*/cpufreq"))
        current: list[float] = []
        top: list[float] = []
        for folder in self._freq_files:
            for name, into in (("scaling_cur_freq", current), ("cpuinfo_max_freq", top)):
                text = _read(folder / name)
                if text is not None and text.strip().isdigit():
                    into.append(int(text) / 1000.0)
        return (max(current) if current else None), (max(top) if top else None)

    def memory(self) -> dict[str, Any]:
        """Total and available memory, bytes."""
        text = _read(self.proc / "meminfo")
        info = parse_meminfo(text) if text is not None else {}
        total, available = info.get("MemTotal"), info.get("MemAvailable")
        return {
            "total_bytes": total,
            "available_bytes": available,
            "available_pct": round(100.0 * available / total, 1) if total and available is not None else None,
        }

    def temperature(self) -> dict[str, Any]:
        """Thermal zones by type (°C), the CPU temperature and the hottest zone."""
        if self._zone_dirs is None:
            found = sorted(self.sys.glob("class/thermal/thermal_zone*")) or sorted(
                self.sys.glob("devices/virtual/thermal/thermal_zone*")
            )
            self._zone_dirs = found
        zones: dict[str, float] = {}
        for folder in self._zone_dirs:
            kind = (_read(folder / "type") or folder.name).strip() or folder.name
            if kind.lower() in IGNORED_ZONES:
                continue
            text = _read(folder / "temp")
            value = parse_temperature(text) if text is not None else None
            if value is None:
                continue
            key, index = kind, 2
            while key in zones:
                key, index = f"{kind}#{index}", index + 1
            zones[key] = value
        return {
            "cpu_c": pick_cpu_temperature(zones),
            "max_c": max(zones.values()) if zones else None,
            "zones": zones,
        }

    def disk(self) -> dict[str, Any] | None:
        """Free and total bytes of the file system holding `disk_path`."""
        if self.disk_path is None:
            return None
        try:
            stats = os.statvfs(self.disk_path)
        except OSError:
            return {"path": str(self.disk_path), "free_bytes": None, "total_bytes": None, "free_pct": None}
        free, total = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
        return {
            "path": str(self.disk_path),
            "free_bytes": free,
            "total_bytes": total,
            "free_pct": round(100.0 * free / total, 1) if total else None,
        }

    def throttling(self, now: float | None = None) -> dict[str, Any] | None:
        """The Raspberry Pi throttling flags, or None on other hosts."""
        source = self._resolve_throttle_source()
        if source is None:
            return None
        if isinstance(source, Path):
            text = _read(source)
            return parse_throttled(text) if text is not None else None
        now = self._clock() if now is None else now
        if self._throttle_at is not None and now - self._throttle_at < self.throttle_interval_s:
            return self._throttle
        self._throttle_at = now
        self._throttle = self._run_vcgencmd(source)
        return self._throttle

    def _resolve_throttle_source(self) -> Path | str | None:
        if self._throttle_source is False:
            files = [p for pattern in THROTTLE_FILES for p in sorted(self.sys.glob(pattern))]
            if files:
                self._throttle_source = files[0]
            else:
                self._throttle_source = shutil.which(self._vcgencmd) if self._vcgencmd else None
        source = self._throttle_source
        return None if isinstance(source, bool) else source

    def _run_vcgencmd(self, command: str) -> dict[str, Any] | None:
        try:
            done = subprocess.run(
                [command, "get_throttled"], capture_output=True, text=True, timeout=2.0, check=False
            )
        except (OSError, subprocess.SubprocessError) as problem:
            self._warn_once("vcgencmd", f"vcgencmd get_throttled failed: {problem}")
            return None
        parsed = parse_throttled(done.stdout) if done.returncode == 0 else None
        if parsed is None:
            reason = (done.stderr or done.stdout).strip()[:200]
            self._warn_once(
                "vcgencmd", f"vcgencmd get_throttled gave no answer (exit {done.returncode}): {reason}"
            )
        return parsed

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _sysconf(name: str, default: int) -> int:
    try:
        value = os.sysconf(name)
    except (ValueError, OSError, AttributeError):
        return default
    return value if value > 0 else default
