"""Crash safety: an update SIGKILLed at seeded random points of refresh, download, verify and install, then restarted.

After every kill the device has the old bundle, or the old and the new, each whole and verified (never a partial one
in models/); the restart asks for no block that was already verified on disk, and completes the install. The trials
run in `tests/ota_crash_driver.py`, which forks each run of the updater from one prepared process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from ota_support import RepoBuilder, make_bundle, random_bytes

TRIALS = 60
SEED = 20240101


def test_sigkill_at_random_points_of_an_update_leaves_the_old_or_the_new_verified_bundle_and_resumes(
    tmp_path: Path,
):
    builder = RepoBuilder(tmp_path / "repo")
    pad = random_bytes(1_000_000, seed=1)
    builder.add_release(make_bundle(tmp_path, 1, pad=pad))
    builder.add_release(make_bundle(tmp_path, 2, pad=pad[:500_000] + random_bytes(500_000, seed=2)))
    builder.publish()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "ota_crash_driver.py"),
            str(builder.folder),
            str(tmp_path / "work"),
            str(TRIALS),
            str(SEED),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=ROOT,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines and lines[-1] == {"done": TRIALS}, (
        done.stdout[-3000:],
        done.stderr[-3000:],
    )
    trials = [line for line in lines if "trial" in line]
    failures = [t for t in trials if t["problems"]]
    assert not failures, json.dumps(failures[:5], indent=1)
    killed = [t for t in trials if t["killed"]]
    assert len(killed) >= 50, f"only {len(killed)} of {len(trials)} runs were killed"
    by_phase = {
        phase: [t for t in killed if t["phase"] == phase]
        for phase in ("refresh", "download", "verify", "install")
    }
    assert all(len(runs) >= 10 for runs in by_phase.values()), {p: len(r) for p, r in by_phase.items()}
    # Kills mid-download left verified blocks on disk that the restart did not ask for again ...
    assert any(t["verified_on_disk"] > 0 and t["asked_after_restart"] > 0 for t in by_phase["download"])
    # ... and kills during the install left either the old bundle alone or both, whole.
    assert {tuple(t["models_after_kill"]) for t in by_phase["install"]} <= {(1,), (1, 2)}
