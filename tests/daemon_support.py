"""Helpers for daemon tests: a config file in a short temp dir, the daemon as a real subprocess, status over its socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class DaemonDir:
    """A short folder (unix socket paths are limited to 108 bytes) with agent.toml, state and the control socket."""

    def __init__(self, toml: str = "") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ea-", dir="/tmp"))
        self.state = self.root / "state"
        self.socket = self.root / "control.sock"
        self.config = self.root / "agent.toml"
        self.write(toml)

    def write(self, toml: str) -> None:
        """Writes agent.toml: the given body after the state dir and socket lines."""
        self.config.write_text(
            f'state_dir = "{self.state}"\n{toml.strip()}\n[control]\nsocket = "{self.socket}"\n'
            if "[control]" not in toml
            else f'state_dir = "{self.state}"\n{toml.strip()}\n'
        )

    def cleanup(self) -> None:
        """Removes the folder."""
        shutil.rmtree(self.root, ignore_errors=True)


def start_daemon(folder: DaemonDir, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`edge-agent run --config ...` as a real process."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(folder.config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def status(folder: DaemonDir) -> dict[str, Any] | None:
    """The daemon's status over its control socket, or None while it does not answer."""
    from agent.daemon.control import ControlUnavailable, request

    try:
        data: dict[str, Any] = request(folder.socket, "status", timeout_s=2.0)
    except ControlUnavailable:
        return None
    return data


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Polls until `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(
    folder: DaemonDir, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
) -> dict[str, Any]:
    """Polls the status until `predicate(status)` holds."""

    def check() -> dict[str, Any] | None:
        data = status(folder)
        return data if data is not None and predicate(data) else None

    result: dict[str, Any] = wait_for(check, timeout_s, what)
    return result


def stop(process: subprocess.Popen[str], timeout_s: float = 10.0) -> tuple[int, str, float]:
    """SIGTERM; returns the exit status, the output and how long the stop took."""
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return -9, output, time.monotonic() - started
    return process.returncode, output, time.monotonic() - started


def processed(data: dict[str, Any]) -> int:
    """Items the loop handled."""
    return int(data["metrics"].get("counters", {}).get("processed", 0))  # no metrics while no model serves


def events_of(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Recent events of one type."""
    return [e for e in data["events"] if e["type"] == kind]


__all__ = [
    "DaemonDir",
    "events_of",
    "json",
    "processed",
    "start_daemon",
    "status",
    "stop",
    "wait_for",
    "wait_status",
]


@dataclass(frozen=True)
class JsonlRun:
    """What `run_with_jsonl` saw: every result record the daemon wrote, and the files under its state folder."""

    records: list[dict[str, Any]]
    snapshots: list[bytes]


def run_with_jsonl(toml: str, seconds: float) -> JsonlRun:
    """`edge-agent run --duration SECONDS` on a fresh folder with `toml` plus a jsonl sink, to its own exit (status
    0 asserted); returns the result records in order and the bytes of the event snapshots it kept."""
    folder = DaemonDir()
    try:
        results = folder.root / "results.jsonl"
        folder.write(f'{toml.strip()}\n[sinks.jsonl]\nenabled = true\npath = "{results}"\n')
        process = start_daemon(folder, "--duration", str(seconds))
        try:
            output, _ = process.communicate(timeout=60)
        finally:
            stop(process)
        assert process.returncode == 0, output
        records = [json.loads(line) for line in results.read_text().splitlines()]
        shots = [p.read_bytes() for p in sorted((folder.state / "snapshots").glob("*.jpg"))]
        return JsonlRun(records, shots)
    finally:
        folder.cleanup()
