"""Helpers for the activation and rollout tests: a signed release repository made with `edge-fleet`, releases that
work and releases that break on the device in each way the gate, the shadow and the trial must catch, and the agent
config that runs them in seconds.

A release that breaks on the device is packed without `bundle pack` (whose own golden self-test would refuse it):
the bundle is edited, its manifest's file hashes made right again (so it is genuine and loads), and the archive made
with the release format's own `pack`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from broker import Broker
from conftest import MODELS, ROOT
from fleet_store import run_fleet

from agent.release.archive import pack

ROLES = ("root", "targets", "snapshot", "timestamp")
FLEET = "f1"
DEVICE_CLASS = "ci"
GOOD_BUDGET_MS = 2000.0
"""Far above the model's latency on any machine that runs the tests."""
BROKEN_BUDGET_MS = 0.01
"""Far below it: a release with this budget breaks it by 10x or more everywhere."""
FAST_TRIAL = {"trial_s": 2, "trial_min_items": 10}


def fleet_ok(*args: str | Path) -> str:
    result = run_fleet(*args)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def connection(broker: Broker, client_id: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port), "--fleet", FLEET, "--client-id", client_id]


class Repo:
    """A TUF repository of fleet f1 (one key per role), with its signing arguments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys, self.store = root / "keys", root / "repo"
        for role in ROLES:
            fleet_ok("keys", "new", role, "--out", self.keys)
        init: list[str | Path] = ["trust", "init", "--repo", self.store, "--root-threshold", "1"]
        for role in ROLES:
            init += [
                f"--{role}-key",
                self.keys / f"{role}.pub.json",
                "--sign",
                f"{role}={self.keys / f'{role}.key'}",
            ]
        fleet_ok(*init)

    @property
    def trust_root(self) -> Path:
        return self.store / "metadata" / "1.root.json"

    def publish(
        self,
        bundle: Path,
        *,
        groups: tuple[str, ...] = (),
        activation: dict[str, object] | None = None,
        checked: bool = True,
    ) -> None:
        """Packs `bundle` (with `bundle pack`, or raw when `checked` is False) and publishes it signed."""
        archive = self.root / f"{bundle.name}.tar"
        if checked:
            fleet_ok("bundle", "pack", bundle, "-o", archive)
        else:
            pack(bundle, archive)
        signing = [arg for role in ROLES[1:] for arg in ("--sign", f"{role}={self.keys / f'{role}.key'}")]
        extra: list[str] = []
        for group in groups:
            extra += ["--group", group]
        for key, value in (activation or {}).items():
            extra += ["--activation", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
        fleet_ok("release", "publish", archive, "--repo", self.store, "--fleet", FLEET, *extra, *signing)


def _rehash(bundle: Path, manifest: dict[str, object]) -> None:
    files = manifest.get("files")
    assert isinstance(files, dict)
    for name in files:
        data = (bundle / name).read_bytes()
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def release_bundle(
    where: Path,
    version: int,
    *,
    source: str = "digits-det-onnx",
    name: str = "digits-det",
    budget_ms: float = GOOD_BUDGET_MS,
    break_golden: bool = False,
) -> Path:
    """A copy of a bundled model as `name` v`version`, with a latency budget for the test device class; with
    `break_golden`, its golden expectations are off by far more than the tolerance (a runtime that computes
    differently here)."""
    bundle = where / f"{name}-v{version}-{'broken' if break_golden else 'ok'}-{budget_ms:g}"
    shutil.copytree(MODELS / source, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name, version
    manifest["latency_budgets"] = [{"device_class": DEVICE_CLASS, "p99_ms": budget_ms}]
    if break_golden:
        for case in manifest["golden"]["cases"]:
            path = bundle / case["expected"]
            with np.load(path) as stored:
                arrays = {key: stored[key] + 1.0 for key in stored.files}
            path.chmod(0o644)
            with path.open("wb") as handle:
                np.savez(handle, **arrays)
    _rehash(bundle, manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return bundle


def device_toml(broker: Broker, device: str, group: str, repo: Repo, extra: str = "") -> str:
    """An agent of fleet f1 on the broker, updates on (checked every second), the test device class."""
    return (
        f'[device]\nid = "{device}"\nfleet = "{FLEET}"\ngroup = "{group}"\n'
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        "[link.backoff]\ninitial_s = 0.2\nmax_s = 1.0\n"
        f'[ota]\nenabled = true\ntrust_root = "{repo.trust_root}"\ncheck_interval_s = 1\n'
        "[ota.activation]\ngate_runs = 5\n"
        f'[monitor.operational]\ndevice_class = "{DEVICE_CLASS}"\n{extra}'
    )


def desire(
    broker: Broker, model: str, version: int, *, group: str | None = None, device: str | None = None
) -> None:
    scope = ["--group", group] if group else ["--device", str(device)]
    fleet_ok(*connection(broker, "alice"), "desire", *scope, model, str(version))


def serving(data: dict) -> int | None:
    model = data.get("model") or {}
    return model.get("version")


def activation_of(data: dict) -> dict:
    return (data.get("update") or {}).get("activation") or {}


def serve_repo(broker: Broker, repo: Repo) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            *connection(broker, "repo-1"),
            "serve",
            "--store",
            str(repo.store),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
