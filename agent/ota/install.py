"""Install a downloaded archive: TUF's own length and hash check, the manifest against the signed release, the safe
unpack into models/{name}/{version}/, then the archive and its block index kept for block reuse.

Invariants, whatever instant a SIGKILL or a power cut strikes:
- models/{name}/{version}/ appears whole or not at all (`agent.release.archive.unpack` builds it under a hidden
  name and renames it into place) and only from an archive TUF has just verified;
- the order is: verify the part, unpack it, keep it (index first, then the archive renamed out of ota/); each step
  can be found done or not done by looking at the disk, so `finish` after a restart picks up where it stopped;
- the hidden names the updater makes under models/ (an unpack's work folder, a trash folder, a temp file) are work
  in progress of a step that died; `recover` removes them, a folder by renaming it to a trash name first, so no
  removal is ever seen half done.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from pathlib import Path

from pydantic import ValidationError
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from agent.fsutil import fsync_dir, write_atomic
from agent.inference.manifest import Manifest
from agent.ota.errors import UpdateFailed, UpdateRefused
from agent.ota.layout import ARCHIVES, Layout
from agent.ota.partial import discard
from agent.ota.state import ReleaseId
from agent.release.archive import ArchiveError, read_head, unpack
from agent.release.formats import ReleaseCustom


def verify_archive(updater: Updater, info: TargetFile, path: Path) -> None:
    """TUF's own length and hash check of the whole archive (`find_cached_target`); UpdateRefused when it fails."""
    if not path.is_file():
        raise UpdateFailed("disk", f"the downloaded archive {path.name} is missing")
    if updater.find_cached_target(info, str(path)) is None:
        raise UpdateRefused(
            "archive-mismatch",
            f"the archive does not match its signed length ({info.length}) and hashes",
        )


def check_manifest(archive: Path, custom: ReleaseCustom) -> None:
    """The bundle's manifest (the archive's first entry) must say what the signed release says."""
    try:
        data = read_head(archive)
    except (ArchiveError, OSError):
        return  # not a bundle: the unpacker refuses it with the precise reason
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as problem:
        raise UpdateRefused(
            "bad-manifest", f"the bundle's manifest is invalid ({problem.error_count()} errors)"
        ) from None
    needs = custom.capabilities
    if manifest.runtime != needs.runtime or manifest.input.kind != needs.input_kind:
        raise UpdateRefused(
            "manifest-mismatch",
            f"the bundle runs on {manifest.runtime} with {manifest.input.kind} input; the signed release says "
            f"{needs.runtime} with {needs.input_kind}",
        )


def unpack_bundle(layout: Layout, release: ReleaseId, archive: Path, max_bytes: int) -> Path:
    """Unpacks the verified archive into models/{name}/{version}/ (read-only); UpdateRefused if it is unsafe."""
    dest = layout.bundle(release.name, release.version)
    _make_dirs(dest.parent)
    try:
        unpack(archive, dest, release.name, release.version, max_bytes)
    except ArchiveError as problem:
        raise UpdateRefused("unsafe-archive", str(problem)) from None
    except OSError as problem:
        raise UpdateFailed("disk", f"cannot unpack {release}: {problem}") from None
    return dest


def keep_archive(layout: Layout, release: ReleaseId, digest: str) -> None:
    """Moves the verified part and its block index out of ota/ to models/{name}/archives/ (for block reuse)."""
    part, index = layout.part(digest), layout.pending_index(digest)
    kept = layout.archive(release.name, release.version)
    try:
        _make_dirs(kept.parent)
        if index.exists():
            write_atomic(layout.archive_index(release.name, release.version), index.read_bytes(), 0o644)
        if part.exists():
            part.chmod(0o444)
            part.replace(kept)
            fsync_dir(kept.parent)
        discard(part, layout.bitmap(digest))
        with contextlib.suppress(FileNotFoundError):
            index.unlink()
        fsync_dir(layout.ota_dir)
    except OSError as problem:
        raise UpdateFailed("disk", f"cannot keep the archive of {release}: {problem}") from None


def discard_download(layout: Layout, digest: str) -> None:
    """Removes a download's partial archive, bitmap and block index (a refused or superseded release)."""
    discard(layout.part(digest), layout.bitmap(digest))
    with contextlib.suppress(FileNotFoundError):
        layout.pending_index(digest).unlink()


def discard_kept(layout: Layout, release: ReleaseId) -> None:
    """Removes a kept archive and its index (they are never reused once their bundle is refused)."""
    for path in (
        layout.archive(release.name, release.version),
        layout.archive_index(release.name, release.version),
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_bundle(layout: Layout, name: str, version: int) -> None:
    """Removes an installed bundle (renamed to a trash name first) and its kept archive."""
    bundle = layout.bundle(name, version)
    if bundle.exists():
        _remove(bundle)
    discard_kept(layout, ReleaseId(name=name, version=version))


UNPACK_LEFTOVER = re.compile(r"^\.\d+\.[0-9a-f]{8}\.partial$")
"""`agent.release.archive.unpack`'s work folder for models/{name}/{version}/."""
TRASH = re.compile(r"^\..+\.[0-9a-f]{8}\.trash$")
"""A folder being removed (renamed first, so no half-removed folder ever has a real name)."""
ARCHIVE_TEMP = re.compile(r"^\.\d+\.(tar|blocks\.json)\..+\.tmp$")
"""`write_atomic`'s temp file for a kept archive's index."""
UPDATER_TEMP = re.compile(r"^\.(state\.json|[0-9a-f]{16,}\.(bitmap|blocks\.json))(\..+)?\.tmp$")
"""The updater's own temp files in ota/: its state record's, a download's bitmap and block index. The activation
record (`activation.json`) and the clean-stop marker live there too and are written by the daemon meanwhile: their
temp files are not the updater's to remove."""


def recover(layout: Layout, keep_digest: str | None) -> list[str]:
    """Removes what an updater step that died left behind; returns what it removed (relative to the state dir).

    Only names the updater makes: unpack work folders and trash folders in models/{name}/, temp files in
    models/{name}/archives/, python-tuf's temp files in tuf/, and downloads in ota/ other than `keep_digest`'s.
    Anything else (the daemon's `active`/`previous` links and their temp names) is left alone."""
    removed: list[str] = []
    for model in _model_folders(layout):
        for entry in list(model.iterdir()):
            if UNPACK_LEFTOVER.match(entry.name) or TRASH.match(entry.name):
                _remove(entry)
                removed.append(str(entry.relative_to(layout.state_dir)))
        archives = model / ARCHIVES
        if archives.is_dir():
            for entry in list(archives.iterdir()):
                if ARCHIVE_TEMP.match(entry.name):
                    _remove(entry)
                    removed.append(str(entry.relative_to(layout.state_dir)))
    if layout.tuf_dir.is_dir():
        for entry in layout.tuf_dir.iterdir():
            if entry.name.startswith("tmp") and entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(str(entry.relative_to(layout.state_dir)))
    if layout.ota_dir.is_dir():
        for entry in layout.ota_dir.iterdir():
            digest = entry.name.split(".", 1)[0]
            stale = UPDATER_TEMP.match(entry.name) is not None
            ours = entry.name.endswith((".part", ".bitmap", ".blocks.json"))
            if stale or (ours and digest != keep_digest):
                _remove(entry)
                removed.append(str(entry.relative_to(layout.state_dir)))
    return removed


def _model_folders(layout: Layout) -> list[Path]:
    if not layout.models_dir.is_dir():
        return []
    return [
        model
        for model in layout.models_dir.iterdir()
        if model.is_dir() and not model.is_symlink() and not model.name.startswith(".")
    ]


def _remove(path: Path) -> None:
    """Removes a file, or a folder (read-only ones too) after renaming it to a hidden trash name."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    trash = path
    if not path.name.endswith(".trash"):
        trash = path.with_name(f".{path.name.lstrip('.')}.{uuid.uuid4().hex[:8]}.trash")  # matches TRASH
        path.replace(trash)
        fsync_dir(path.parent)
    for entry in [trash, *trash.rglob("*")]:
        if entry.is_dir() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.chmod(0o700)
    shutil.rmtree(trash, ignore_errors=True)


def _make_dirs(folder: Path) -> None:
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


__all__ = [
    "check_manifest",
    "discard_download",
    "discard_kept",
    "keep_archive",
    "recover",
    "remove_bundle",
    "unpack_bundle",
    "verify_archive",
]
