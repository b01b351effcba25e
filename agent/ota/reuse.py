"""Blocks the device already holds: every block of every kept archive (models/*/archives/N.tar + N.blocks.json).

A block of a new release whose SHA-256 is here is copied from disk instead of fetched (devices on cellular links pay
per byte). Nothing read here is trusted: a copied block is hashed again and used only if it matches the new
release's (TUF-verified) block index; a damaged kept archive only means the block is fetched after all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.ota.layout import Layout
from agent.release.formats import Block, BlockIndex

MAX_INDEX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class LocalBlock:
    """Where a block's bytes lie in a kept archive."""

    archive: Path
    offset: int
    size: int


class ReuseIndex:
    """SHA-256 of a block -> where the device already has those bytes."""

    def __init__(self, blocks: dict[str, LocalBlock] | None = None) -> None:
        self._blocks = blocks or {}

    @classmethod
    def scan(cls, layout: Layout) -> ReuseIndex:
        """Every block of every kept archive under `layout` (unreadable or inconsistent ones are skipped)."""
        blocks: dict[str, LocalBlock] = {}
        if not layout.models_dir.is_dir():
            return cls(blocks)
        for index_path in sorted(layout.models_dir.glob("*/archives/*.blocks.json")):
            archive = index_path.with_name(index_path.name.removesuffix(".blocks.json") + ".tar")
            try:
                if index_path.stat().st_size > MAX_INDEX_BYTES:
                    continue
                index = BlockIndex.model_validate_json(index_path.read_bytes())
                if archive.stat().st_size != index.archive_length:
                    continue
            except (OSError, ValidationError):
                continue
            for block in index.blocks:
                blocks.setdefault(block.sha256, LocalBlock(archive, block.offset, block.size))
        return cls(blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    def read(self, block: Block) -> bytes | None:
        """The bytes of `block` from a kept archive, checked against its hash; None when the device lacks them."""
        local = self._blocks.get(block.sha256)
        if local is None or local.size != block.size:
            return None
        try:
            fd = os.open(local.archive, os.O_RDONLY)
            try:
                data = os.pread(fd, local.size, local.offset)
            finally:
                os.close(fd)
        except OSError:
            return None
        if len(data) != block.size or hashlib.sha256(data).hexdigest() != block.sha256:
            return None
        return data


__all__ = ["LocalBlock", "ReuseIndex"]
