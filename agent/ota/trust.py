"""The TUF side of a check: a fresh `tuf.ngclient.Updater` over the repository port, refreshed once, and its errors
turned into the updater's own.

python-tuf makes every trust decision (signatures and thresholds, root rotation, rollback and freeze protection,
expiry, lengths and hashes); nothing here second-guesses it. Invariants:
- one `Updater` per check (ngclient refreshes once per Updater); metadata lives in {state_dir}/tuf/;
- the bootstrap root (`trust_root`, e.g. /etc/edge-agent/trust/root.json) is used only while tuf/root.json does not
  exist, or cannot be read (a damaged card): then the device starts again from the bootstrap root, and the rotated
  roots kept in tuf/root_history/ are verified again from it, version by version;
- every python-tuf exception leaves as `UpdateFailed` with a code: the device keeps serving its installed model and
  the next check tries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from agent.fsutil import fsync_dir
from agent.ota.errors import UpdateFailed, UpdateRefused
from agent.ota.fetcher import METADATA_URL, TARGETS_URL, RepoFetcher
from agent.ota.layout import Layout
from agent.ota.port import RepoPort
from agent.release.formats import BlockIndex, ReleaseCustom


@dataclass
class TrustSession:
    """A refreshed ngclient Updater and what the refresh learnt."""

    updater: Updater
    fetcher: RepoFetcher
    targets_version: int | None
    notes: list[str] = field(default_factory=list)


def failure(error: Exception) -> UpdateFailed:
    """The updater's failure for a python-tuf (or disk) exception, with a short code."""
    text = str(error) or type(error).__name__
    if isinstance(error, exceptions.ExpiredMetadataError):
        return UpdateFailed(
            "expired",
            f"the repository's metadata has expired ({text}): new installs are blocked, the installed "
            "model keeps serving",
        )
    if isinstance(error, exceptions.UnsignedMetadataError):
        return UpdateFailed("untrusted-metadata", f"metadata without enough valid signatures: {text}")
    if isinstance(error, exceptions.BadVersionNumberError):
        return UpdateFailed("rollback", f"metadata older than what this device trusts: {text}")
    if isinstance(error, exceptions.LengthOrHashMismatchError):
        return UpdateFailed("metadata-mismatch", f"metadata that does not match its snapshot: {text}")
    if isinstance(error, exceptions.RepositoryError):
        return UpdateFailed("bad-metadata", f"metadata rejected: {text}")
    if isinstance(error, exceptions.SlowRetrievalError):
        return UpdateFailed("slow-retrieval", f"the repository is too slow: {text}")
    if isinstance(error, exceptions.DownloadLengthMismatchError):
        return UpdateFailed("too-much-data", f"the repository sent more than allowed: {text}")
    if isinstance(error, exceptions.DownloadHTTPError):
        return UpdateFailed("repository-error", f"the repository answered {error.status_code}: {text}")
    if isinstance(error, exceptions.DownloadError):
        cause = error.__cause__
        return UpdateFailed("unreachable", f"the repository cannot be reached: {cause or text}")
    if isinstance(error, OSError):
        return UpdateFailed("disk", f"cannot use the trusted metadata folder: {text}")
    return UpdateFailed("bad-metadata", f"metadata rejected: {text}")


TUF_ERRORS = (exceptions.RepositoryError, exceptions.DownloadError, OSError, ValueError)


def open_session(
    layout: Layout,
    trust_root: Path,
    port: RepoPort,
    timeout_s: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> TrustSession:
    """A fresh Updater, refreshed (root, timestamp, snapshot, targets); UpdateFailed when that fails."""
    layout.tuf_dir.mkdir(parents=True, exist_ok=True)
    layout.ota_dir.mkdir(parents=True, exist_ok=True)
    fetcher = RepoFetcher(port, timeout_s, monotonic)
    notes: list[str] = []
    updater: Updater | None = None
    if (layout.tuf_dir / "root.json").exists():
        try:
            updater = _updater(layout, fetcher, None)
        except TUF_ERRORS as problem:
            notes.append(
                f"the trusted root in {layout.tuf_dir} is unreadable ({problem}); starting again from "
                f"the bootstrap root {trust_root}"
            )
    if updater is None:
        try:
            bootstrap = trust_root.read_bytes()
        except OSError as problem:
            raise UpdateFailed(
                "trust-root", f"cannot read the bootstrap root {trust_root}: {problem}"
            ) from None
        try:
            updater = _updater(layout, fetcher, bootstrap)
        except TUF_ERRORS as problem:
            raise UpdateFailed(
                "trust-root", f"the bootstrap root {trust_root} is not valid: {problem}"
            ) from None
    try:
        updater.refresh()
    except TUF_ERRORS as problem:
        raise failure(problem) from None
    return TrustSession(updater, fetcher, _targets_version(layout), notes)


def _updater(layout: Layout, fetcher: RepoFetcher, bootstrap: bytes | None) -> Updater:
    return Updater(
        str(layout.tuf_dir),
        METADATA_URL,
        str(layout.ota_dir),
        TARGETS_URL,
        fetcher,
        UpdaterConfig(),
        bootstrap=bootstrap,
    )


def _targets_version(layout: Layout) -> int | None:
    """The trusted snapshot's targets version (after a refresh, tuf/snapshot.json is the trusted snapshot)."""
    try:
        snapshot = json.loads((layout.tuf_dir / "snapshot.json").read_bytes())
        version = snapshot["signed"]["meta"]["targets.json"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) else None


def target_info(session: TrustSession, path: str) -> TargetFile | None:
    """The signed target `path`, or None when the trusted targets do not list it."""
    try:
        return session.updater.get_targetinfo(path)
    except TUF_ERRORS as problem:
        raise failure(problem) from None


def release_custom(info: TargetFile) -> ReleaseCustom:
    """The release's `custom` field, validated; UpdateRefused when it is not one."""
    try:
        # JSON mode: the strict schema takes JSON arrays for its tuples (python mode would refuse a list).
        return ReleaseCustom.model_validate_json(json.dumps(info.custom))
    except (ValidationError, TypeError, ValueError) as problem:
        raise UpdateRefused(
            "bad-custom",
            f"the signed target's custom field is not a release: {_first_error(problem)}",
        ) from None


def _first_error(problem: Exception) -> str:
    if isinstance(problem, ValidationError):
        first = problem.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'custom'}: {first['msg']}"
    return str(problem)


def fetch_index(session: TrustSession, layout: Layout, info: TargetFile, custom: ReleaseCustom) -> BlockIndex:
    """The release's block index: a TUF target of its own, pinned by the release; kept in ota/ while downloading."""
    digest = info.hashes["sha256"]
    ref = custom.block_index
    index_info = target_info(session, ref.path)
    if index_info is None:
        raise UpdateRefused("no-index", f"the signed targets do not list the block index {ref.path}")
    if index_info.length != ref.length or index_info.hashes.get("sha256") != ref.sha256:
        raise UpdateRefused("index-mismatch", f"the block index {ref.path} is not the one the release pins")
    path = layout.pending_index(digest)
    if session.updater.find_cached_target(index_info, str(path)) is None:
        tmp = layout.ota_dir / f".{digest}.blocks.json.tmp"
        try:
            session.updater.download_target(index_info, str(tmp))
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            tmp.replace(path)
            fsync_dir(layout.ota_dir)
        except TUF_ERRORS as problem:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise failure(problem) from None
    try:
        index = BlockIndex.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as problem:
        raise UpdateRefused("bad-index", f"the block index is not valid: {problem}") from None
    if index.archive_sha256 != digest or index.archive_length != info.length:
        raise UpdateRefused(
            "index-mismatch", "the block index describes another archive than the signed target"
        )
    return index


__all__ = [
    "TUF_ERRORS",
    "TrustSession",
    "failure",
    "fetch_index",
    "open_session",
    "release_custom",
    "target_info",
]
