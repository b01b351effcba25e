"""Shared fixtures: the bundled models, writable bundle copies, and the CLI run as a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.inference.bundle import file_entry

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = MODELS / "samples"
FLOATS = MODELS / "float"
DATA = Path(__file__).resolve().parent / "data"
BUNDLES = sorted(p.parent.name for p in MODELS.glob("*/manifest.json"))


@pytest.fixture
def bundle_copy(tmp_path: Path):
    """Returns a function that copies a bundled model into tmp_path, to be altered by the test."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(MODELS / name, target)
        return target

    return copy


def edit_manifest(bundle: Path, rehash: tuple[str, ...] = (), **changes: Any) -> None:
    """Changes top-level manifest keys (dicts are merged) and re-records the hashes of the named files."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data[key] = (
            {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
        )
    for name in rehash:
        data["files"][name] = file_entry(bundle / name).model_dump()
    path.write_text(json.dumps(data, indent=2))


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs `python -m agent ARGS` as a subprocess, as a person would run `edge-agent`."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    if check and result.returncode != 0:
        raise AssertionError(f"edge-agent {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def assert_clean_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """A non-zero exit, `edge-agent: error:` lines on stderr that contain the fragments, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edge-agent: error: ")]
    assert errors, result.stderr
    for fragment in fragments:
        assert any(fragment in line for line in errors), result.stderr
