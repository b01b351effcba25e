"""Bundle archives: packed reproducibly by the operator, unpacked safely by the device.

Packing: an uncompressed tar (PAX) of `manifest.json` then every file the manifest lists, in name order, each a regular
file with mtime 0, owner 0:0 and mode 0644, so the same bundle folder always gives the same bytes (and the same
blocks).

Unpacking never calls `extract`/`extractall` (Pi OS bookworm's Python 3.11.2 has no extraction filter, and the
filters have had bypasses): only regular files, each named in the manifest, none twice, no absolute path, no `..`, no
link, device or folder entry; each read through `extractfile()` and capped at its declared size, and checked against
its SHA-256 from the manifest; written into a fresh folder next to the destination, fsynced, made read-only, and
renamed into place, so a crash leaves either no bundle or a whole one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath
from typing import IO

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import UpdateRejected
from agent.fsutil import fsync_dir

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024


class ArchiveError(UpdateRejected):
    """An archive that is malformed, or tries to put anything but its bundle's files on the disk."""


class _FileEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sha256: str
    size: int


class _Listing(BaseModel):
    """What unpacking needs of a manifest: the name, the version and the files with their hashes."""

    model_config = ConfigDict(extra="ignore")
    name: str
    version: int
    files: dict[str, _FileEntry]


def read_listing(data: bytes) -> _Listing:
    """The manifest's name, version and file list; ArchiveError when it is not a manifest."""
    try:
        return _Listing.model_validate_json(data)
    except ValidationError as problem:
        raise ArchiveError(
            f"the archive's manifest.json is not a bundle manifest: {problem.error_count()} errors"
        ) from None


def read_head(archive: Path) -> bytes:
    """The manifest.json bytes at the head of a bundle archive; ArchiveError when the archive does not start with one
    (FileNotFoundError when there is no such file)."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            first = tar.next()
            if (
                first is None
                or first.name != MANIFEST
                or not first.isreg()
                or first.size > MAX_MANIFEST_BYTES
            ):
                raise ArchiveError(
                    f"{archive.name} is not a bundle archive: it does not start with {MANIFEST}"
                )
            source = tar.extractfile(first)
            assert source is not None  # a regular file
            return source.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise
    except (tarfile.TarError, OSError) as problem:
        raise ArchiveError(f"{archive} is not a bundle archive: {problem}") from None


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def pack(folder: Path, out: Path) -> None:
    """Writes the bundle in `folder` (its manifest and the files it lists) to the archive `out`, reproducibly."""
    manifest = (folder / MANIFEST).read_bytes()
    listing = read_listing(manifest)
    names = sorted(listing.files)
    for name in names:
        _check_name(name)
        if not (folder / name).is_file():
            raise ArchiveError(f"the manifest lists {name}, which is not a file in {folder}")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST, len(manifest)), io.BytesIO(manifest))
            for name in names:
                path = folder / name
                with path.open("rb") as handle:
                    tar.addfile(_tarinfo(name, path.stat().st_size), handle)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(0o644)
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(out.parent)


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or path.is_absolute()
        or ".." in path.parts
        or name != str(path)
    ):
        raise ArchiveError(f"archive entry {name!r} escapes its folder")


def _copy_capped(source: IO[bytes], target: IO[bytes], size: int, name: str) -> str:
    digest, left = hashlib.sha256(), size
    while left > 0:
        chunk = source.read(min(1 << 20, left))
        if not chunk:
            raise ArchiveError(f"archive entry {name} is shorter than its declared {size} bytes")
        digest.update(chunk)
        target.write(chunk)
        left -= len(chunk)
    if source.read(1):
        raise ArchiveError(f"archive entry {name} holds more than its declared {size} bytes")
    return digest.hexdigest()


def unpack(archive: Path, dest: Path, expect_name: str, expect_version: int, max_bytes: int) -> None:
    """Unpacks a bundle archive into the new folder `dest` (read-only once there); raises ArchiveError if unsafe."""
    if dest.exists():
        raise ArchiveError(f"{dest} already exists")
    work = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members = tar.getmembers()
            seen: set[str] = set()
            for member in members:
                _check_name(member.name)
                if not member.isreg():
                    raise ArchiveError(
                        f"archive entry {member.name} is not a regular file (links, devices and folders are refused)"
                    )
                if member.name in seen:
                    raise ArchiveError(f"archive entry {member.name} appears twice")
                seen.add(member.name)
            if not members or members[0].name != MANIFEST or members[0].size > MAX_MANIFEST_BYTES:
                raise ArchiveError("the archive does not start with a manifest.json of at most 1 MiB")
            source = tar.extractfile(members[0])
            assert source is not None
            manifest = source.read(MAX_MANIFEST_BYTES + 1)
            listing = read_listing(manifest)
            if (listing.name, listing.version) != (expect_name, expect_version):
                raise ArchiveError(
                    f"the archive holds {listing.name} v{listing.version}, the release says {expect_name} v{expect_version}"
                )
            extra = sorted(seen - {MANIFEST} - set(listing.files))
            missing = sorted(set(listing.files) - seen)
            if extra or missing:
                raise ArchiveError(
                    f"the archive's files differ from its manifest (extra {extra}, missing {missing})"
                )
            total = sum(entry.size for entry in listing.files.values()) + len(manifest)
            if total > max_bytes:
                raise ArchiveError(f"the bundle would take {total} bytes, over the {max_bytes} allowed")
            work.mkdir(parents=True)
            (work / MANIFEST).write_bytes(manifest)
            for member in members[1:]:
                entry = listing.files[member.name]
                if member.size != entry.size:
                    raise ArchiveError(
                        f"archive entry {member.name} is {member.size} bytes, the manifest says {entry.size}"
                    )
                target = work / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with target.open("wb") as handle:
                    digest = _copy_capped(source, handle, entry.size, member.name)
                    handle.flush()
                    os.fsync(handle.fileno())
                if digest != entry.sha256:
                    raise ArchiveError(
                        f"archive entry {member.name} does not match its SHA-256 in the manifest"
                    )
        _make_read_only(work)
        work.replace(dest)
        fsync_dir(dest.parent)
    except (tarfile.TarError, OSError, json.JSONDecodeError) as problem:
        _remove(work)
        raise ArchiveError(f"cannot unpack {archive.name}: {problem}") from None
    except BaseException:
        _remove(work)
        raise


def _make_read_only(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)


def _remove(folder: Path) -> None:
    if not folder.exists():
        return
    for path in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["MANIFEST", "ArchiveError", "pack", "read_head", "read_listing", "unpack"]
