"""SystemProbe: parsers on sample text, a fake /sys and /proc tree (Raspberry Pi and Jetson layouts), vcgencmd."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from agent.platform.system import (
    SystemProbe,
    cpu_percent,
    parse_cpu_times,
    parse_loadavg,
    parse_meminfo,
    parse_process_stat,
    parse_temperature,
    parse_throttled,
    pick_cpu_temperature,
)

PROC_STAT = """cpu  10132153 290696 3084719 46828483 16683 0 25195 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 0 0
intr 1462898 0 0
ctxt 2084
"""
SELF_STAT = (
    "4242 (edge (agent) x) S 1 4242 4242 0 -1 4194560 12000 0 3 0 250 50 0 0 20 0 7 0 1000 "
    "512000000 38000 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 2 0 0 0 0 0"
)
MEMINFO = "MemTotal:        3884116 kB\nMemFree:          181276 kB\nMemAvailable:    2263412 kB\nHugePages_Total:       0\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _pi_tree(root: Path, throttled: str = "50005\n") -> tuple[Path, Path]:
    sys_root, proc_root = root / "sys", root / "proc"
    _write(sys_root / "class/thermal/thermal_zone0/type", "cpu-thermal\n")
    _write(sys_root / "class/thermal/thermal_zone0/temp", "61234\n")
    for cpu in range(4):
        _write(
            sys_root / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq", f"{600000 + cpu * 100000}\n"
        )
        _write(sys_root / f"devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq", "1800000\n")
    _write(sys_root / "devices/platform/soc/soc:firmware/get_throttled", throttled)
    _write(proc_root / "stat", PROC_STAT)
    _write(proc_root / "self/stat", SELF_STAT)
    _write(proc_root / "self/statm", "125000 38000 4000 1 0 60000 0\n")
    _write(proc_root / "meminfo", MEMINFO)
    _write(proc_root / "loadavg", "1.52 0.98 0.61 3/412 9999\n")
    return sys_root, proc_root


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------------------- parsers


def test_throttled_word_from_vcgencmd_names_current_and_past_conditions() -> None:
    parsed = parse_throttled("throttled=0x50005\n")
    assert parsed is not None
    assert parsed["raw"] == "0x50005"
    assert parsed["now"] == ["under_voltage", "throttled"]
    assert parsed["occurred"] == ["under_voltage", "throttled"]
    assert parsed["flags"]["freq_capped"] is False and parsed["flags"]["throttled_occurred"] is True


def test_throttled_word_from_sysfs_is_bare_hex() -> None:
    parsed = parse_throttled("80008\n")
    assert (
        parsed is not None
        and parsed["now"] == ["soft_temp_limit"]
        and parsed["occurred"] == ["soft_temp_limit"]
    )
    healthy = parse_throttled("throttled=0x0")
    assert healthy is not None and healthy["now"] == [] and healthy["occurred"] == []


def test_throttled_garbage_gives_none() -> None:
    assert parse_throttled('error=1 error_msg="Command not registered"') is None
    assert parse_throttled("") is None


def test_process_stat_survives_a_command_name_with_spaces_and_parentheses() -> None:
    parsed = parse_process_stat(SELF_STAT)
    assert parsed is not None
    assert parsed.cpu_ticks == 300 and parsed.threads == 7 and parsed.rss_pages == 38000


def test_process_stat_of_this_very_process_parses() -> None:
    parsed = parse_process_stat(Path("/proc/self/stat").read_text())
    assert parsed is not None and parsed.threads >= 1 and parsed.rss_pages > 0


def test_cpu_times_and_percent_between_two_readings() -> None:
    before = parse_cpu_times(PROC_STAT)
    assert before is not None
    assert before.idle == 46828483 + 16683
    after = parse_cpu_times(
        PROC_STAT.replace("cpu  10132153", "cpu  10132253").replace("46828483", "46828783")
    )
    assert after is not None
    assert cpu_percent(before, after) == pytest.approx(25.0)
    assert cpu_percent(after, after) is None


def test_meminfo_values_are_bytes() -> None:
    info = parse_meminfo(MEMINFO)
    assert info["MemAvailable"] == 2263412 * 1024 and info["HugePages_Total"] == 0


def test_loadavg_and_bad_text() -> None:
    assert parse_loadavg("0.50 0.25 0.10 1/100 42") == (0.5, 0.25, 0.1)
    assert parse_loadavg("nonsense") is None


def test_temperatures_in_millidegrees_and_disabled_jetson_zones() -> None:
    assert parse_temperature("45123\n") == 45.1
    assert parse_temperature("52\n") == 52.0
    assert parse_temperature("-256000\n") is None  # a Jetson zone that is switched off
    assert parse_temperature("") is None


def test_cpu_zone_is_picked_by_type_else_the_hottest() -> None:
    assert pick_cpu_temperature({"CPU-therm": 48.5, "GPU-therm": 55.0, "SOC0-therm": 50.0}) == 48.5
    assert pick_cpu_temperature({"x86_pkg_temp": 60.0, "acpitz": 40.0}) == 60.0
    assert pick_cpu_temperature({"acpitz": 40.0, "iwlwifi_1": 45.0}) == 45.0
    assert pick_cpu_temperature({}) is None


# ---------------------------------------------------------------------------------------------------------- probe


def test_raspberry_pi_tree_gives_every_figure(tmp_path: Path) -> None:
    sys_root, proc_root = _pi_tree(tmp_path)
    clock = FakeClock()
    probe = SystemProbe(
        disk_path=tmp_path, sysfs_root=sys_root, procfs_root=proc_root, vcgencmd=None, clock=clock
    )
    first = probe.sample()
    assert first["process"]["cpu_pct"] is None and first["cpu"]["pct"] is None  # deltas need two samples
    assert first["process"]["rss_bytes"] == 38000 * os.sysconf("SC_PAGE_SIZE")
    assert first["process"]["threads"] == 7
    assert first["cpu"]["load"] == [1.52, 0.98, 0.61]
    assert first["cpu"]["freq_mhz"] == 900.0 and first["cpu"]["freq_max_mhz"] == 1800.0
    assert first["memory"]["available_bytes"] == 2263412 * 1024
    assert first["temperature"]["cpu_c"] == 61.2
    assert first["throttling"]["now"] == ["under_voltage", "throttled"]
    assert first["disk"]["free_bytes"] > 0 and first["disk"]["path"] == str(tmp_path)
    # two seconds later the process used 100 more ticks (1 s of CPU at 100 Hz) and the system was half busy
    ticks = os.sysconf("SC_CLK_TCK")
    _write(proc_root / "self/stat", SELF_STAT.replace(" 250 50 ", f" {250 + 2 * ticks // 2} 50 "))
    _write(
        proc_root / "stat",
        PROC_STAT.replace("cpu  10132153", "cpu  10132353").replace("46828483", "46828683"),
    )
    clock.now += 2.0
    second = probe.sample()
    assert second["process"]["cpu_pct"] == pytest.approx(50.0, abs=1.0)
    assert second["cpu"]["pct"] == pytest.approx(50.0)
    json.dumps(second, allow_nan=False)


def test_jetson_thermal_layout_ignores_the_pmic_zone(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    for index, (kind, milli) in enumerate(
        [("CPU-therm", "47500"), ("GPU-therm", "45000"), ("PMIC-Die", "100000"), ("CV0-therm", "-256000")]
    ):
        _write(sys_root / f"devices/virtual/thermal/thermal_zone{index}/type", kind + "\n")
        _write(sys_root / f"devices/virtual/thermal/thermal_zone{index}/temp", milli + "\n")
    probe = SystemProbe(sysfs_root=sys_root, procfs_root=tmp_path / "proc", vcgencmd=None)
    temperature = probe.temperature()
    assert temperature == {"cpu_c": 47.5, "max_c": 47.5, "zones": {"CPU-therm": 47.5, "GPU-therm": 45.0}}
    assert probe.throttling() is None


def test_an_empty_tree_gives_nones_not_exceptions(tmp_path: Path) -> None:
    probe = SystemProbe(
        disk_path=tmp_path / "missing",
        sysfs_root=tmp_path / "sys",
        procfs_root=tmp_path / "proc",
        vcgencmd=None,
    )
    sample = probe.sample()
    sample = probe.sample()
    assert sample["process"] == {"cpu_pct": None, "rss_bytes": None, "threads": None}
    assert (
        sample["cpu"]["pct"] is None and sample["cpu"]["load"] is None and sample["cpu"]["freq_mhz"] is None
    )
    assert sample["memory"]["total_bytes"] is None
    assert sample["temperature"] == {"cpu_c": None, "max_c": None, "zones": {}}
    assert sample["disk"]["free_bytes"] is None
    assert sample["throttling"] is None


def _fake_vcgencmd(folder: Path, body: str) -> tuple[Path, Path]:
    calls = folder / "calls"
    script = folder / "vcgencmd"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def test_vcgencmd_is_run_at_most_once_per_interval(tmp_path: Path) -> None:
    script, calls = _fake_vcgencmd(tmp_path, "echo throttled=0x20002")
    clock = FakeClock()
    probe = SystemProbe(
        sysfs_root=tmp_path / "sys",
        procfs_root=tmp_path / "proc",
        vcgencmd=str(script),
        clock=clock,
        throttle_interval_s=60.0,
    )
    for step in (0.0, 5.0, 30.0):
        clock.now = 1000.0 + step
        result = probe.throttling()
        assert result is not None and result["now"] == ["freq_capped"]
    assert calls.read_text().splitlines() == ["get_throttled"]
    clock.now = 1061.0
    probe.throttling()
    assert calls.read_text().splitlines() == ["get_throttled", "get_throttled"]


def test_a_failing_vcgencmd_is_logged_once_and_gives_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script, _ = _fake_vcgencmd(tmp_path, "echo 'VCHI initialization failed' >&2; exit 255")
    clock = FakeClock()
    probe = SystemProbe(
        sysfs_root=tmp_path / "sys", vcgencmd=str(script), clock=clock, throttle_interval_s=1.0
    )
    with caplog.at_level(logging.WARNING, logger="agent.platform"):
        for _ in range(3):
            assert probe.throttling() is None
            clock.now += 2.0
    warnings = [r for r in caplog.records if "vcgencmd" in r.getMessage()]
    assert len(warnings) == 1 and "VCHI initialization failed" in warnings[0].getMessage()


def test_the_firmware_sysfs_file_is_preferred_over_forking_vcgencmd(tmp_path: Path) -> None:
    sys_root, _ = _pi_tree(tmp_path, throttled="0\n")
    script, calls = _fake_vcgencmd(tmp_path, "echo throttled=0x5")
    probe = SystemProbe(sysfs_root=sys_root, vcgencmd=str(script))
    result = probe.throttling()
    assert result is not None and result["raw"] == "0x0"
    assert not calls.exists()


def test_the_real_host_can_be_sampled() -> None:
    probe = SystemProbe(disk_path=Path.cwd())
    probe.sample()
    sample = probe.sample()
    assert sample["process"]["rss_bytes"] > 10_000_000
    assert sample["memory"]["total_bytes"] > 0
    assert sample["disk"]["free_bytes"] > 0
    json.dumps(sample, allow_nan=False)
