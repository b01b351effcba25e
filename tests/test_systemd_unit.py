"""The systemd unit passes `systemd-analyze verify` without a warning, and the sysusers file makes the user."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "edge-agent.service"
SYSUSERS = SYSTEMD / "edge-agent.sysusers"
EXEC_START = "ExecStart=/opt/edge-agent/bin/edge-agent run"


def _settings() -> dict[str, dict[str, list[str]]]:
    """Every key of the unit with all its values (systemd keys repeat, which configparser cannot hold)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed",
)
def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1
    # the agent is not installed under /opt here: point the copy at a program that exists, keep everything else
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(EXEC_START, f"ExecStart={shutil.which('true')} run"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0 and lines == [], "\n".join(lines)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed",
)
def test_verify_would_report_a_broken_key(tmp_path: Path) -> None:
    """The check above is not vacuous: verify prints unknown keys and bad values (and still exits 0)."""
    copy = tmp_path / "edge-agent.service"
    text = UNIT.read_text().replace(EXEC_START, f"ExecStart={shutil.which('true')} run")
    copy.write_text(text.replace("Restart=on-failure", "Restart=sometimes\nWatchdogSecs=30"))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert "WatchdogSecs" in output and "sometimes" in output


def test_unit_has_the_service_contract_the_daemon_relies_on() -> None:
    service = _settings()["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert single["Type"] == "notify" and single["NotifyAccess"] == "main"
    assert single["WatchdogSec"] == "30" and single["Restart"] == "on-failure" and single["RestartSec"] == "5"
    assert single["ExecReload"] == "/bin/kill -HUP $MAINPID" and single["TimeoutStopSec"] == "10"
    assert single["User"] == "edge-agent" and single["DynamicUser"] == "no"
    assert (
        single["StateDirectory"]
        == single["ConfigurationDirectory"]
        == single["RuntimeDirectory"]
        == "edge-agent"
    )
    assert single["LoadCredential"] == "mqtt-password:/etc/edge-agent/mqtt-password"
    assert single["ProtectSystem"] == "strict" and single["DevicePolicy"] == "closed"
    assert single["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6 AF_NETLINK"
    assert "char-video4linux rw" in service["DeviceAllow"] and "char-ttyUSB rw" in service["DeviceAllow"]
    assert "char-alsa rw" in service["DeviceAllow"]  # microphones: /dev/snd/* (the `alsa` source's arecord)
    assert set(single["SupplementaryGroups"].split()) == {"video", "dialout", "audio"}
    unit = _settings()["Unit"]
    assert (
        "StartLimitIntervalSec" in unit and "StartLimitBurst" in unit
    )  # they belong in [Unit] since systemd 229


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None and not os.environ.get("CI"),
    reason="systemd-sysusers is not installed",
)
def test_sysusers_creates_the_user_in_video_dialout_and_audio(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\naudio:x:29:\nvideo:x:44:\n")
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",") for line in (etc / "group").read_text().splitlines()
    }
    assert users["edge-agent"][5] == "/var/lib/edge-agent"
    assert users["edge-agent"][6].endswith("nologin")
    assert "edge-agent" in groups["video"] and "edge-agent" in groups["dialout"]
    assert "edge-agent" in groups["audio"]
    assert "edge-agent" in groups
