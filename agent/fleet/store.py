"""The release store that `edge-fleet serve` reads: TUF metadata, targets, and the bundle archives by digest.

Layout (written by `edge-fleet release publish`, in the order targets, snapshot, timestamp):
    DIR/metadata/   1.root.json, 2.root.json, timestamp.json, 3.snapshot.json, 5.targets.json, ...
    DIR/targets/    bundles/{name}/{sha256}.{version}.tar          the archive (a consistent-snapshot target name)
                    bundles/{name}/{sha256}.{version}.blocks.json  its block index (a `BlockIndex`, a target too)

Invariants:
- only regular files under `metadata/` or `targets/` are ever opened, and only after resolving every symlink: a path
  that is absolute, holds `..`, or resolves outside its folder raises `UnsafePath`; one that is not there is `None`;
- an archive is indexed under its SHA-256 only when a valid block index names it and the file's size is the index's
  `archive_length` (the device checks every block's hash, TUF the whole archive); archives are immutable (their name
  holds their hash), so a block is read with one `os.pread` of at most `MAX_BLOCK_BYTES`, never the whole file;
- a rescan re-reads only the index files whose size or modification time changed, and runs on a missing digest at most
  once per `min_rescan_s`, so a flood of unknown digests cannot keep the disk busy.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

from pydantic import ValidationError

from agent.fleet.errors import FleetError
from agent.release.formats import MAX_BLOCK_BYTES, BlockIndex

log = logging.getLogger("agent.fleet.serve")

Folder = Literal["metadata", "targets"]
INDEX_SUFFIX = ".blocks.json"
ARCHIVE_SUFFIX = ".tar"
MAX_INDEX_BYTES = 64 * 1024 * 1024
"""A block index larger than this is not read (the release format caps a pinned target at 64 MiB)."""
MIN_RESCAN_S = 1.0


class StoreError(FleetError):
    """The store folder cannot be used (missing, not a folder)."""


class UnsafePath(FleetError):
    """A requested path is absolute, holds `..`, or leads outside its folder (through a symlink too)."""


@dataclass(frozen=True, slots=True)
class Archive:
    """A bundle archive the store can serve blocks of."""

    path: Path
    index: BlockIndex

    def read_block(self, number: int) -> bytes:
        """Block `number`'s bytes, read at its offset (OSError if the file is gone or shorter than its index says)."""
        block = self.index.blocks[number]
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, min(block.size, MAX_BLOCK_BYTES), block.offset)
        finally:
            os.close(fd)
        if len(data) != block.size:
            raise OSError(f"{self.path} is shorter than its block index says")
        return data


class Store:
    """The store folder: safe file access under metadata/ and targets/, and the archives indexed by SHA-256."""

    def __init__(
        self,
        root: Path,
        *,
        min_rescan_s: float = MIN_RESCAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Checks that `root` is a folder (StoreError) and indexes its archives."""
        if not root.is_dir():
            raise StoreError(f"--store {root}: not a folder (expected metadata/ and targets/ in it)")
        self.root = root.resolve()
        self._min_rescan_s = min_rescan_s
        self._clock = clock
        self._archives: dict[str, Archive] = {}
        self._parsed: dict[Path, tuple[tuple[int, int], BlockIndex | None]] = {}
        self._last_scan = float("-inf")
        self._warned: set[str] = set()
        self.rescan()

    @property
    def archives(self) -> dict[str, Archive]:
        """The archives found by the last scan, by SHA-256."""
        return dict(self._archives)

    # -- files -----------------------------------------------------------------------------------------------------

    def resolve(self, folder: Folder, path: str) -> Path | None:
        """The real path of `path` under `folder`; None if there is no regular file there; UnsafePath if it escapes."""
        pure = PurePosixPath(path)
        if not path or "\x00" in path or "\\" in path or pure.is_absolute() or ".." in pure.parts:
            raise UnsafePath(f"{path!r} is not a plain path under {folder}/")
        base = Path(os.path.realpath(self.root / folder))
        real = Path(os.path.realpath(base / pure))
        if real != base and base not in real.parents:
            raise UnsafePath(f"{path!r} leads outside {folder}/")
        try:
            mode = real.stat().st_mode
        except OSError:
            return None
        return real if stat.S_ISREG(mode) else None

    def open(self, folder: Folder, path: str) -> BinaryIO | None:
        """`path` under `folder` opened for reading (see `resolve`); None when the store does not have it."""
        real = self.resolve(folder, path)
        if real is None:
            return None
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:  # gone, or swapped for a symlink since it was resolved
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    # -- archives --------------------------------------------------------------------------------------------------

    def archive(self, digest: str) -> Archive | None:
        """The archive with this SHA-256; rescans once (rate-limited) when it is not known yet."""
        found = self._archives.get(digest)
        if found is None and self._clock() - self._last_scan >= self._min_rescan_s:
            self.rescan()
            found = self._archives.get(digest)
        return found

    def rescan(self) -> int:
        """Re-reads the block indexes under targets/ (only changed ones); the number of archives indexed."""
        self._last_scan = self._clock()
        base = Path(os.path.realpath(self.root / "targets"))
        archives: dict[str, Archive] = {}
        parsed: dict[Path, tuple[tuple[int, int], BlockIndex | None]] = {}
        for folder, _dirs, names in os.walk(base):  # symlinked folders are not followed
            here = Path(folder)
            for name in sorted(names):
                if not name.endswith(INDEX_SUFFIX):
                    continue
                index = self._index(here / name, parsed)
                archive = None if index is None else self._find_archive(base, here, name, index, names)
                if index is not None and archive is not None:
                    archives.setdefault(index.archive_sha256, Archive(archive, index))
        self._archives, self._parsed = archives, parsed
        return len(archives)

    def _index(
        self, path: Path, parsed: dict[Path, tuple[tuple[int, int], BlockIndex | None]]
    ) -> BlockIndex | None:
        try:
            info = path.stat()
        except OSError:
            return None
        key = (info.st_size, info.st_mtime_ns)
        cached = self._parsed.get(path)
        if cached is not None and cached[0] == key:
            parsed[path] = cached
            return cached[1]
        index: BlockIndex | None = None
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_INDEX_BYTES:
            self._warn(f"{path} is not a block index file (or is over {MAX_INDEX_BYTES} bytes); skipped")
        else:
            try:
                index = BlockIndex.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as problem:
                self._warn(f"{path} is not a valid block index ({_first_line(problem)}); skipped")
        parsed[path] = (key, index)
        return index

    def _find_archive(
        self, base: Path, folder: Path, index_name: str, index: BlockIndex, names: list[str]
    ) -> Path | None:
        """The archive an index names: `{sha256}.*.tar` beside it, else the index's stem + `.tar`; of its size."""
        stem = index_name[: -len(INDEX_SUFFIX)]
        prefix = f"{index.archive_sha256}."
        candidates = sorted(n for n in names if n.startswith(prefix) and n.endswith(ARCHIVE_SUFFIX))
        candidates.append(stem + ARCHIVE_SUFFIX)
        for name in candidates:
            real = Path(os.path.realpath(folder / name))
            if base not in real.parents:
                continue  # a symlink out of targets/: never served
            try:
                info = real.stat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size == index.archive_length:
                return real
        self._warn(
            f"no archive of {index.archive_length} bytes for {folder / index_name}; its blocks are not served"
        )
        return None

    def _warn(self, text: str) -> None:
        """Logs a problem of the store once (a rescan finds the same problems again)."""
        if text not in self._warned:
            self._warned.add(text)
            log.warning("store: %s", text)


def _first_line(problem: Exception) -> str:
    text = str(problem).strip().splitlines()
    return text[0] if text else type(problem).__name__


__all__ = ["Archive", "Folder", "Store", "StoreError", "UnsafePath"]
