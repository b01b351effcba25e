"""A partial archive on disk: `ota/{digest}.part` (full length, sparse) and its block bitmap `ota/{digest}.bitmap`.

Invariants, whatever instant a SIGKILL or a power cut strikes:
- a block marked in the bitmap is durable in the part file: the part is fsynced before the bitmap that marks it is
  written (atomically: temp file, fsync, rename, fsync of the folder);
- a block written but not yet marked is not lost either: on open, every unmarked block of an existing part is read
  back and kept if its bytes match its SHA-256 from the (TUF-verified) block index, so a verified block is never
  fetched twice;
- a damaged or foreign bitmap is ignored (every block is then checked by hash); nothing here is trusted on its own:
  the whole archive goes through TUF's length and hash check before it is unpacked.
The bitmap also carries the bytes fetched so far for this archive, which the data budget counts (the bytes of at most
one checkpoint interval can go uncounted after a crash).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.fsutil import fsync_dir, write_atomic
from agent.release.formats import BlockIndex, Sha256

BITMAP_SCHEMA = 1
MAX_BITMAP_BYTES = 4 * 1024 * 1024


class PartMap(BaseModel):
    """The bitmap file: which blocks of the part are durable, and the bytes fetched for it so far."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True)

    schema_: Literal[1] = Field(1, alias="schema")
    digest: Sha256
    blocks: int = Field(ge=0)
    have: str = Field(pattern=r"^[0-9a-f]*$", description="The bitmap, hex, block 0 in the high bit.")
    fetched_bytes: int = Field(0, ge=0)


class PartialFile:
    """The part file and its bitmap, open for writing blocks; `close` (or a checkpoint) makes them durable."""

    def __init__(self, part: Path, bitmap: Path, index: BlockIndex, checkpoint_blocks: int = 16) -> None:
        self.part, self.bitmap_path, self.index = part, bitmap, index
        self._checkpoint_blocks = checkpoint_blocks
        self._have = bytearray((len(index.blocks) + 7) // 8)
        self._dirty = 0
        self.fetched_bytes = 0
        self.resumed_blocks = 0
        self._present_bytes = 0
        existed = part.exists()
        part.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size != index.archive_length:
                os.ftruncate(self._fd, index.archive_length)
            if not existed:
                fsync_dir(part.parent)
            self._load_bitmap()
            if existed:
                self._probe()
            self.resumed_blocks = self.count
            self._present_bytes = sum(b.size for i, b in enumerate(index.blocks) if self.has(i))
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def count(self) -> int:
        """Blocks present."""
        return sum(bin(byte).count("1") for byte in self._have)

    @property
    def present_bytes(self) -> int:
        """Archive bytes present."""
        return self._present_bytes

    def has(self, block: int) -> bool:
        """Whether block `block` is in the part file."""
        return bool(self._have[block >> 3] & (0x80 >> (block & 7)))

    def missing(self) -> list[int]:
        """The blocks still to get, in order."""
        return [i for i in range(len(self.index.blocks)) if not self.has(i)]

    def write(self, block: int, data: bytes) -> None:
        """Writes a verified block into place; a checkpoint follows every `checkpoint_blocks` blocks."""
        entry = self.index.blocks[block]
        if len(data) != entry.size:
            raise ValueError(f"block {block} is {len(data)} bytes, the index says {entry.size}")
        view, offset = memoryview(data), entry.offset
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        if not self.has(block):
            self._have[block >> 3] |= 0x80 >> (block & 7)
            self._present_bytes += entry.size
        self._dirty += 1
        if self._dirty >= self._checkpoint_blocks:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Makes the blocks written so far durable, then records them in the bitmap."""
        os.fsync(self._fd)
        record = PartMap(
            digest=self.index.archive_sha256,
            blocks=len(self.index.blocks),
            have=self._have.hex(),
            fetched_bytes=self.fetched_bytes,
        )
        write_atomic(self.bitmap_path, record.model_dump_json(by_alias=True).encode())
        self._dirty = 0

    def close(self) -> None:
        """A last checkpoint, then the file is closed."""
        if self._fd < 0:
            return
        try:
            self.checkpoint()
        finally:
            os.close(self._fd)
            self._fd = -1

    def _load_bitmap(self) -> None:
        try:
            with self.bitmap_path.open("rb") as handle:
                data = handle.read(MAX_BITMAP_BYTES + 1)
            record = PartMap.model_validate_json(data)
        except (OSError, ValidationError):
            return
        if (
            record.digest != self.index.archive_sha256
            or record.blocks != len(self.index.blocks)
            or len(record.have) != 2 * len(self._have)
        ):
            return
        self._have = bytearray(bytes.fromhex(record.have))
        self.fetched_bytes = record.fetched_bytes

    def _probe(self) -> None:
        for i, block in enumerate(self.index.blocks):
            if self.has(i):
                continue
            data = os.pread(self._fd, block.size, block.offset)
            if len(data) == block.size and hashlib.sha256(data).hexdigest() == block.sha256:
                self._have[i >> 3] |= 0x80 >> (i & 7)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def discard(part: Path, bitmap: Path) -> None:
    """Removes a partial archive and its bitmap."""
    for path in (part, bitmap):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(part.parent)


__all__ = ["BITMAP_SCHEMA", "PartMap", "PartialFile", "discard"]
