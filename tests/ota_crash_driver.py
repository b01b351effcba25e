"""Crash-safety driver for tests/test_ota_crash.py: SIGKILL an update at seeded random points, restart, check the disk.

    python tests/ota_crash_driver.py REPO_DIR WORK_DIR TRIALS SEED

REPO_DIR holds a repository with digits-cls v1 and v2. This process imports everything once, then forks every run of
the updater (fork is cheap, and this process has no threads of its own). Each run counts the file-system operations
it makes (open, write, fsync, rename, chmod, mkdir, unlink, ...); a run told to die at operation k sends itself
SIGKILL just before it, so a kill can land between any two of them: during the refresh of the metadata, the
download, the verification or the install.

Per trial, from a device that has v1 installed and is told to install v2:
1. a child runs the check and is killed at a point drawn from one phase (round robin);
2. this process looks at the disk: every version folder under models/ must be a whole, verified bundle (v1, or v1
   and v2), and it notes the blocks of the partial archive that are already verified on disk;
3. a second child runs the check again to completion (the restart);
4. this process checks that the restart asked for none of the noted blocks, and that the device ends with v1 and v2
   both whole, nothing hidden left in models/, nothing but state.json in ota/.
One JSON line per trial on stdout; a final line {"done": N}.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ota_support import NAME, LocalRepo, device_config, rmtree

import agent.ota.updater as updater_module
from agent.errors import ModelError
from agent.inference.bundle import load_bundle
from agent.ota import CheckStatus, ModelUpdater
from agent.ota.checks import DeviceFacts
from agent.release.formats import BlockIndex, Desired

FACTS = DeviceFacts(runtimes=frozenset({"litert", "onnxruntime"}), free_disk_bytes=1 << 36)
COUNTED = [
    "open",
    "fsync",
    "replace",
    "rename",
    "pwrite",
    "ftruncate",
    "mkdir",
    "rmdir",
    "unlink",
    "remove",
    "chmod",
    "symlink",
    "close",
]
PHASES = ["refresh", "download", "verify", "install"]

_kill_at: int | None = None
_ops = 0
_marks: list[tuple[int, str]] = []
_real_kill = os.kill


def _counted(function: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _ops
        _ops += 1
        if _kill_at is not None and _ops >= _kill_at:
            _real_kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)

    return wrapper


def _instrument() -> None:
    for name in COUNTED:
        setattr(os, name, _counted(getattr(os, name)))
    io.open = _counted(io.open)  # pathlib's Path.open
    real_save = updater_module.save_record

    def save(path: Path, record: Any) -> None:
        _marks.append((_ops, record.state.value))
        real_save(path, record)

    updater_module.save_record = save


def _run_child(state_dir: Path, repo_dir: Path, version: int, kill_at: int | None, out: Path) -> int:
    """Forks a child that runs one check and writes what it saw to `out`; returns its wait status."""
    pid = os.fork()
    if pid == 0:
        global _kill_at, _ops
        code = 1
        try:
            repo = LocalRepo(repo_dir)
            config = device_config(
                state_dir.parent / "root.json", request_blocks=2, window_blocks=4, checkpoint_blocks=2
            )
            updater = ModelUpdater(
                config, state_dir, repo, lambda e: None, fleet="fleet-a", group="group-1", facts=lambda: FACTS
            )
            _marks.clear()
            _ops = 0  # counted from here: the copies this process made before the fork do not count
            _kill_at = kill_at
            started = _ops
            outcome = updater.check(Desired(model=NAME, version=version))
            _kill_at = None
            result = {
                "status": outcome.status.value,
                "reason": outcome.reason,
                "ops": _ops - started,
                "marks": [(at - started, state) for at, state in _marks],
                "asked": sorted(repo.block_requests),
            }
            out.write_text(json.dumps(result))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _verified_blocks(part: Path, index: BlockIndex) -> set[int]:
    if not part.exists():
        return set()
    data = part.read_bytes()
    return {
        i
        for i, b in enumerate(index.blocks)
        if hashlib.sha256(data[b.offset : b.offset + b.size]).hexdigest() == b.sha256
    }


def _bundles_whole(models: Path) -> list[int]:
    """The version folders under models/NAME/, each checked whole (hashes against its manifest); raises if not."""
    versions = []
    folder = models / NAME
    for entry in sorted(folder.iterdir()) if folder.exists() else []:
        if entry.name.isdigit():
            load_bundle(entry, verify=True)  # ModelError if partial
            versions.append(int(entry.name))
    return versions


def _phase_ranges(marks: list[tuple[int, str]], ops: int) -> dict[str, tuple[int, int]]:
    at: dict[str, int] = {}
    for op, state in marks:
        at.setdefault(state, op)  # where each state was first saved
    return {
        "refresh": (1, at["downloading"]),
        "download": (at["downloading"] + 1, at["verifying"]),
        "verify": (at["verifying"] + 1, at["verifying"] + 6),
        "install": (at["verifying"] + 7, ops),
    }


def main() -> int:
    repo_dir, work, trials, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    _instrument()
    index_v2 = next(
        BlockIndex.model_validate_json(p.read_bytes())
        for p in (repo_dir / "targets" / "bundles" / NAME).glob("*.2.blocks.json")
    )
    digest = index_v2.archive_sha256
    template = work / "template" / "state"
    template.mkdir(parents=True)
    shutil.copy(repo_dir / "metadata" / "1.root.json", template.parent / "root.json")
    out = work / "result.json"
    if (
        _run_child(template, repo_dir, 1, None, out) != 0
        or json.loads(out.read_text())["status"] != "installed"
    ):
        print(
            json.dumps({"error": "could not install v1", "detail": out.read_text() if out.exists() else ""})
        )
        return 1
    calibration = work / "calibration" / "state"
    shutil.copytree(template.parent, calibration.parent, symlinks=True)
    _run_child(calibration, repo_dir, 2, None, out)
    clean = json.loads(out.read_text())
    if clean["status"] != "installed":
        print(json.dumps({"error": "v2 does not install without a kill", "detail": clean}))
        return 1
    ranges = _phase_ranges([tuple(m) for m in clean["marks"]], clean["ops"])  # type: ignore[misc]
    print(json.dumps({"calibration": clean["ops"], "ranges": ranges}), flush=True)
    rng = random.Random(seed)
    for trial in range(trials):
        started = time.monotonic()
        phase = PHASES[trial % len(PHASES)]
        low, high = ranges[phase]
        kill_at = rng.randint(low, max(low, high))
        state = work / f"trial{trial}" / "state"
        shutil.copytree(template.parent, state.parent, symlinks=True)
        out.unlink(missing_ok=True)
        status = _run_child(state, repo_dir, 2, kill_at, out)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        problems: list[str] = []
        try:
            after_kill = _bundles_whole(state / "models")
        except ModelError as problem:
            after_kill = []
            problems.append(f"a partial bundle in models/ after the kill: {problem}")
        if 1 not in after_kill:
            problems.append("the old bundle is gone after the kill")
        verified = _verified_blocks(state / "ota" / f"{digest}.part", index_v2)
        out.unlink(missing_ok=True)
        _run_child(state, repo_dir, 2, None, out)
        restart = json.loads(out.read_text()) if out.exists() else {"status": "crashed", "asked": []}
        refetched = sorted(verified & set(restart["asked"]))
        if refetched:
            problems.append(f"verified blocks fetched again: {refetched}")
        if restart["status"] not in (CheckStatus.INSTALLED.value, CheckStatus.UP_TO_DATE.value):
            problems.append(f"the restart ended {restart['status']}: {restart.get('reason')}")
        try:
            final = _bundles_whole(state / "models")
        except ModelError as problem:
            final = []
            problems.append(f"a partial bundle after the restart: {problem}")
        if final != [1, 2]:
            problems.append(f"after the restart models/ holds {final}")
        hidden = [str(p.relative_to(state)) for p in (state / "models").rglob(".*")]
        if hidden:
            problems.append(f"left behind: {hidden}")
        ota = sorted(p.name for p in (state / "ota").iterdir())
        if ota != ["state.json"]:
            problems.append(f"ota/ holds {ota}")
        print(
            json.dumps(
                {
                    "trial": trial,
                    "phase": phase,
                    "kill_at": kill_at,
                    "killed": killed,
                    "models_after_kill": after_kill,
                    "verified_on_disk": len(verified),
                    "asked_after_restart": len(restart["asked"]),
                    "problems": problems,
                    "seconds": round(time.monotonic() - started, 3),
                }
            ),
            flush=True,
        )
        rmtree(state.parent)
    print(json.dumps({"done": trials}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
