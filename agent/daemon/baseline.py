"""Site baselines on disk, and their calibration off the loop: one per model version, under {state_dir}/drift/.

A baseline is two files, written atomically (fsync): `<name>-v<version>.npz` (the learnt items' feature rows) and
`<name>-v<version>.json` (the calibrated thresholds, `agent.monitor.calibration.Calibration`). At a restart the
daemon reads them back, so a device does not relearn its site after every reboot; rows whose feature layout or
window settings no longer match are calibrated again (rows kept), a file that cannot be read is reported and ignored
(the monitor learns afresh). `reset-baseline` removes them.

Calibration runs on a short-lived thread (`Calibrator`): a few hundred milliseconds of numpy on a Pi, never on the
inference thread.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from agent.fsutil import write_atomic
from agent.monitor.calibration import Calibration, calibrate
from agent.monitor.drift import BaselineJob
from agent.monitor.features import FeatureSpec

log = logging.getLogger("agent.monitor")


@dataclass(frozen=True)
class Stored:
    """A baseline read back: its rows, and its thresholds where they fit."""

    inputs: np.ndarray
    outputs: np.ndarray
    calibration: Calibration | None


class BaselineStore:
    """Reads, writes and removes site baselines of one state directory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _stem(self, name: str, version: int) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return self.folder / f"{safe}-v{version}"

    def load(self, spec: FeatureSpec, name: str, version: int, input_every: int) -> Stored | None:
        """The stored baseline of a model version, or None (none stored, another layout or input step, unreadable).

        Whatever the file holds (torn, truncated, foreign, of the wrong shape) it is reported and ignored, never raised:
        a bad baseline file must not keep a model out of service.
        """
        stem = self._stem(name, version)
        try:
            with np.load(stem.with_suffix(".npz"), allow_pickle=False) as data:
                if str(data["fingerprint"]) != spec.fingerprint or int(data["input_step"]) != input_every:
                    return None
                inputs = np.asarray(data["inputs"], np.float64)
                outputs = np.asarray(data["outputs"], np.float64)
            if (
                inputs.ndim != 2
                or outputs.ndim != 2
                or inputs.shape[1] != spec.input_size
                or outputs.shape[1] != spec.output_size
            ):
                raise ValueError(f"rows of shape {inputs.shape} and {outputs.shape} do not fit the features")
        except FileNotFoundError:
            return None
        except Exception as problem:  # zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError, ...
            log.warning("the site baseline %s cannot be read (%s): learning a new one", stem.name, problem)
            return None
        calibration: Calibration | None = None
        try:
            calibration = Calibration.model_validate_json(stem.with_suffix(".json").read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValidationError) as problem:
            log.warning("the thresholds of %s cannot be read (%s): calibrating again", stem.name, problem)
        return Stored(inputs, outputs, calibration)

    def save(self, name: str, version: int, job: BaselineJob, calibration: Calibration) -> None:
        """Writes a baseline's rows and thresholds (atomically; raises OSError on a full or read-only disk)."""
        stem = self._stem(name, version)
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            inputs=job.inputs,
            outputs=job.outputs,
            fingerprint=np.array(job.spec.fingerprint),
            input_step=np.array(job.input_step),
        )
        write_atomic(stem.with_suffix(".npz"), buffer.getvalue(), mode=0o644)
        write_atomic(stem.with_suffix(".json"), calibration.model_dump_json(indent=1).encode(), mode=0o644)

    def remove(self, name: str, version: int) -> bool:
        """Removes a model version's baseline; True if there was one."""
        stem = self._stem(name, version)
        removed = False
        for path in (stem.with_suffix(".npz"), stem.with_suffix(".json")):
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed


def run_job(job: BaselineJob) -> Calibration:
    """Calibrates a learnt baseline (pure computation)."""
    return calibrate(
        job.spec,
        job.inputs,
        job.outputs,
        input_step=job.input_step,
        every_n=job.every_n,
        input_every=job.input_every,
        ert_items=job.ert_items,
    )


class Calibrator:
    """Calibrates one baseline on its own thread, then hands the result (or the problem) back."""

    def __init__(
        self,
        job: BaselineJob,
        done: Callable[[BaselineJob, Calibration], None],
        failed: Callable[[str], None],
    ) -> None:
        self._job, self._done, self._failed = job, done, failed
        self.thread = threading.Thread(target=self._run, name="drift-calibration", daemon=True)

    def start(self) -> None:
        """Starts the calibration."""
        self.thread.start()

    def _run(self) -> None:
        try:
            calibration = run_job(self._job)
        except (
            Exception
        ) as problem:  # a calibration that fails must not leave the monitor calibrating for ever
            log.exception("site baseline calibration failed")
            self._failed(f"the site baseline could not be calibrated: {type(problem).__name__}: {problem}")
            return
        try:
            self._done(self._job, calibration)
        except Exception:
            log.exception("installing the site baseline failed")
            self._failed("the site baseline could not be installed; learning a new one")
