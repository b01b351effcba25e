"""Hard examples kept for retraining: each sample is the item's data (a frame as JPEG, a window or tensor as `.npy`)
and one JSON metadata line, in one folder under a byte budget.

Invariants:
- a sample's files are `{id}.jpg|.npy` then `{id}.json`, written in that order, each atomically (temp file, fsync,
  rename, fsync of the folder); the metadata file completes a sample, so a power cut between the two leaves an
  orphan data file that the next start removes. The id is `{number:08d}_{UTC time}_{trigger}` (the budget's
  number orders them, never the clock);
- a sample stays until the operator confirms it (`remove`, after checking the hash it names) or the budget evicts it:
  over `max_bytes`, the oldest go first whether confirmed or not, and every such loss is counted in `evicted`. A
  restart keeps them all (the folder is scanned once);
- the store knows no wire format: the metadata bytes come from the caller (the daemon's capture, which writes a
  `SampleMeta`); a failure (full disk, unwritable folder, an item that will not encode) is counted and logged once
  per kind and `save` returns None: it never raises. `save` fsyncs: call it off the inference thread. Thread-safe.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agent.errors import InputError
from agent.pipeline.budget import BudgetFolder, Entry
from agent.pipeline.snapshots import encode_jpeg
from agent.types import Array

log = logging.getLogger("agent.samples")

TRIGGERS = ("drift", "anomaly", "low-confidence")
_ID = re.compile(r"^([0-9]{8})_[0-9]{8}T[0-9]{6}Z_(?:drift|anomaly|low-confidence)$")
_NAME = re.compile(r"^([0-9]{8})_[0-9]{8}T[0-9]{6}Z_(?:drift|anomaly|low-confidence)\.(?:jpg|npy|json)$")
_TEMP = re.compile(r"^\.[0-9]{8}_.*\.(?:jpg|npy|json)\..*\.tmp$")
DataFormat = Literal["jpeg", "npy"]


@dataclass(frozen=True)
class StoredSample:
    """A sample held: its id, its data file's name and size, and the bytes of data and metadata together."""

    id: str
    data_name: str
    size: int
    total: int


def encode_item(kind: str, data: Array, jpeg_quality: int = 90) -> tuple[bytes, DataFormat]:
    """A frame as JPEG bytes, anything else as `.npy` bytes (no pickles); InputError when it cannot."""
    if kind == "frame":
        return encode_jpeg(data, jpeg_quality), "jpeg"
    buffer = io.BytesIO()
    try:
        np.save(buffer, np.asarray(data), allow_pickle=False)
    except ValueError as problem:  # an object array
        raise InputError(f"cannot keep a {data.dtype} array as .npy: {problem}") from None
    return buffer.getvalue(), "npy"


def _sample_of(entry: Entry) -> StoredSample | None:
    data = [name for name in entry.files if not name.endswith(".json")]
    meta = [name for name in entry.files if name.endswith(".json")]
    if len(data) != 1 or len(meta) != 1 or data[0].rsplit(".", 1)[0] != meta[0][: -len(".json")]:
        return None
    return StoredSample(meta[0][: -len(".json")], data[0], entry.files[data[0]], entry.size)


class SampleStore:
    """Hard examples on disk under a byte budget, deleted only when confirmed or evicted (see the module docstring)."""

    def __init__(self, folder: Path | str, max_bytes: int) -> None:
        self._store = BudgetFolder(
            folder,
            max_bytes,
            _NAME,
            _TEMP,
            complete=lambda entry: _sample_of(entry) is not None,
            what="sample",
            logger=log,
        )
        self.confirmed = 0

    @property
    def folder(self) -> Path:
        """Where the samples are."""
        return self._store.folder

    def save(
        self,
        trigger: str,
        data: bytes,
        data_format: DataFormat,
        meta_for: Callable[[str], bytes],
        now: float | None = None,
    ) -> str | None:
        """Keeps `data` and the metadata line `meta_for(id)`; the new id, or None (counted, logged once)."""
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        extension = "jpg" if data_format == "jpeg" else "npy"
        made: list[str] = []

        def files(number: int) -> list[tuple[str, bytes]]:
            sample_id = f"{number:08d}_{stamp}_{trigger}"
            made.append(sample_id)
            meta = meta_for(sample_id).rstrip(b"\n") + b"\n"
            return [(f"{sample_id}.{extension}", data), (f"{sample_id}.json", meta)]

        entry = self._store.add(files)
        return made[-1] if entry is not None and made else None

    def fail(self, kind: str, message: str) -> None:
        """Counts and logs (once per kind) a sample that could not be made, e.g. an item that would not encode."""
        self._store.fail(kind, message)

    def samples(self) -> list[StoredSample]:
        """The samples held, oldest first."""
        return [sample for entry in self._store.entries() if (sample := _sample_of(entry)) is not None]

    def find(self, sample_id: str) -> StoredSample | None:
        """A held sample by id; None for an unknown or malformed id."""
        match = _ID.match(sample_id)
        if not match:
            return None
        entry = self._store.get(int(match.group(1)))
        sample = None if entry is None else _sample_of(entry)
        return sample if sample is not None and sample.id == sample_id else None

    def read_meta(self, sample: StoredSample) -> bytes:
        """The sample's metadata line; OSError if it cannot be read."""
        return (self.folder / f"{sample.id}.json").read_bytes()

    def read_chunk(self, sample: StoredSample, offset: int, length: int) -> bytes:
        """Up to `length` bytes of the data file from `offset`; OSError if it cannot be read."""
        with (self.folder / sample.data_name).open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)

    def remove(self, sample: StoredSample) -> bool:
        """Deletes a confirmed sample (metadata first); False if it was gone already; OSError if it cannot."""
        removed = self._store.remove(int(sample.id[:8]))
        if removed:
            self.confirmed += 1
        return removed

    def status(self) -> dict[str, Any]:
        """JSON-ready figures: held, bytes, budget, saved, evicted unconfirmed, confirmed, failures."""
        return {**self._store.status(), "confirmed": self.confirmed}


__all__ = ["TRIGGERS", "SampleStore", "StoredSample", "encode_item"]
