"""The block index of an archive: content-defined chunks (FastCDC), so a small change moves few block boundaries.

A release that changes only the last layer of a model changes the blocks around that layer; the others keep their
hashes, and a device copies those from the archive it already has instead of fetching them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastcdc import fastcdc

from agent.release.formats import MAX_BLOCK_BYTES, Block, BlockIndex

MIN_BYTES = 16 * 1024
AVG_BYTES = 64 * 1024
MAX_BYTES = MAX_BLOCK_BYTES
CHUNKING = f"fastcdc/{MIN_BYTES}/{AVG_BYTES}/{MAX_BYTES}"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def block_index(archive: Path) -> BlockIndex:
    """Cuts `archive` into content-defined blocks of at most 128 KiB and hashes each."""
    length = archive.stat().st_size
    blocks: list[Block] = []
    if length:
        for chunk in fastcdc(
            str(archive), min_size=MIN_BYTES, avg_size=AVG_BYTES, max_size=MAX_BYTES, fat=True
        ):
            blocks.append(
                Block(offset=chunk.offset, size=chunk.length, sha256=hashlib.sha256(chunk.data).hexdigest())
            )
    return BlockIndex(
        archive_sha256=sha256_file(archive), archive_length=length, chunking=CHUNKING, blocks=tuple(blocks)
    )


__all__ = ["AVG_BYTES", "CHUNKING", "MAX_BYTES", "MIN_BYTES", "block_index", "sha256_file"]
