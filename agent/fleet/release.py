"""Releases in the store: publish a bundle archive as signed TUF targets, list them, revert to an old bundle.

A release is two targets of the top-level targets role:
- `bundles/{name}/{version}.blocks.json` (`index_target`): the archive's block index (`BlockIndex`, FastCDC), with
  `custom = {"kind": "block-index", "archive": <archive target>, "published": <UTC time>}`;
- `bundles/{name}/{version}.tar` (`archive_target`): the archive, with `custom = ReleaseCustom` (model name and
  version equal to the manifest's, the index pinned by length and sha256, fleet, groups, minimum agent version,
  capabilities from the manifest, activation thresholds), dumped by `signable_custom` (TUF's canonical JSON has no
  floats) so that `ReleaseCustom.model_validate_json` of it gives the same release back.
Publishing writes both files, then targets, snapshot and timestamp (in that order, python-tuf's `do_snapshot` and
`do_timestamp`). The archive is first checked with the device's own safe unpacker, so no archive that a device
would refuse is ever signed.

Versions only go up: a version not above every version of that name already published for that fleet is refused (and
a target path is never reused, whatever the fleet). Going back is a new release of the old bytes: `revert` unpacks the
old archive (after python-tuf checks it against its signed length and hash), rewrites `version` in its manifest (the
file hashes stay valid, the manifest lists no hash of itself), packs it and publishes it under a version above every
published one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Snapshot, TargetFile, Targets, Timestamp

from agent.fleet.errors import ReleaseRefused, StoreError
from agent.fleet.repository import Expiry, FileRepository, ProgressFn, Signers, utc_now
from agent.fsutil import write_atomic
from agent.inference.manifest import Manifest
from agent.release.archive import (
    MANIFEST,
    ArchiveError,
    pack,
    read_head,
    read_listing,
    unpack,
)
from agent.release.chunking import block_index
from agent.release.formats import (
    Activation,
    Capabilities,
    ReleaseCustom,
    TargetRef,
    archive_target,
    index_target,
)

INDEX_KIND = "block-index"


@dataclass(frozen=True)
class Published:
    """A release just published, and the metadata versions that carry it."""

    name: str
    version: int
    fleet: str
    groups: tuple[str, ...]
    archive_target: str
    index_target: str
    length: int
    sha256: str
    blocks: int
    versions: dict[str, int]


@dataclass(frozen=True)
class ReleaseRow:
    """One published release, as `release list` shows it."""

    name: str
    version: int
    fleet: str
    groups: tuple[str, ...]
    size: int
    sha256: str
    published: str | None
    custom: ReleaseCustom


def read_manifest(archive: Path) -> Manifest:
    """The bundle manifest at the head of an archive (ReleaseRefused when it is not a bundle archive)."""
    try:
        data = read_head(archive)
    except FileNotFoundError:
        raise ReleaseRefused(f"archive {archive} does not exist") from None
    except ArchiveError as problem:
        raise ReleaseRefused(str(problem)) from None
    read_listing(data)  # the release format's own reading of name, version and files (ArchiveError otherwise)
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as problem:
        raise ReleaseRefused(
            f"{archive}: its manifest.json is not a valid bundle manifest ({problem.error_count()} errors)"
        ) from None


def capabilities_of(manifest: Manifest) -> Capabilities:
    """What a device needs to run the bundle, from its manifest (ReleaseRefused for an input no device feeds)."""
    kind = manifest.input.kind
    if kind not in ("image", "window"):
        raise ReleaseRefused(
            f"{manifest.name} v{manifest.version} takes a {kind} input: a release is for camera (image) or sensor "
            "(window) models"
        )
    return Capabilities(runtime=manifest.runtime, input_kind=kind)


def publish(
    repo_dir: Path,
    archive: Path,
    *,
    fleet: str,
    signers: Signers,
    groups: Sequence[str] = (),
    min_agent_version: str = "0",
    activation: Activation | None = None,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
    progress: ProgressFn | None = None,
) -> Published:
    """Publishes `archive` for `fleet` (and `groups`): its two targets, then new targets, snapshot and timestamp."""
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock():
        repo.require_initialized()
        return _publish(repo, archive, fleet, tuple(groups), min_agent_version, activation, progress)


def list_releases(repo_dir: Path) -> list[ReleaseRow]:
    """Every release in the published targets, by name and version."""
    repo = FileRepository(repo_dir)
    repo.require_initialized()
    return _releases(repo.targets())


def revert(
    repo_dir: Path,
    name: str,
    to_version: int,
    *,
    signers: Signers,
    fleet: str | None = None,
    groups: Sequence[str] | None = None,
    min_agent_version: str | None = None,
    activation: Activation | None = None,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
    progress: ProgressFn | None = None,
) -> Published:
    """Re-releases the bundle of `name` v`to_version` under a version above every published one; what is not given
    (fleet, groups, minimum agent version, activation) is the old release's."""
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock():
        repo.require_initialized()
        targets = repo.targets()
        releases = [row for row in _releases(targets) if row.name == name]
        old = next((row for row in releases if row.version == to_version), None)
        if old is None:
            known = ", ".join(str(row.version) for row in releases) or "none"
            raise ReleaseRefused(f"{name} v{to_version} is not published (published versions: {known})")
        info = targets.targets[archive_target(name, to_version)]
        stored = repo.stored_path(info)
        try:
            with stored.open("rb") as handle:  # python-tuf's check against the signed length and sha256
                info.verify_length_and_hashes(handle)
        except (OSError, RepositoryError) as problem:
            raise StoreError(f"{stored} does not match its signed target: {problem}") from None
        new_version = max(row.version for row in releases) + 1
        with tempfile.TemporaryDirectory(prefix="edge-fleet-revert-", ignore_cleanup_errors=True) as work:
            folder, out = Path(work) / "bundle", Path(work) / f"{name}-{new_version}.tar"
            _report(progress, f"unpacking {name} v{to_version}")
            unpack(stored, folder, name, to_version, max_bytes=_unpacked_limit(stored))
            _set_version(folder, new_version)
            _report(progress, f"packing {name} v{new_version}")
            pack(folder, out)
            return _publish(
                repo,
                out,
                fleet or old.fleet,
                tuple(old.groups if groups is None else groups),
                old.custom.min_agent_version if min_agent_version is None else min_agent_version,
                old.custom.activation if activation is None else activation,
                progress,
            )


# -- the steps --------------------------------------------------------------------------------------------------------


def _publish(
    repo: FileRepository,
    archive: Path,
    fleet: str,
    groups: tuple[str, ...],
    min_agent_version: str,
    activation: Activation | None,
    progress: ProgressFn | None,
) -> Published:
    for role in (Targets.type, Snapshot.type, Timestamp.type):
        repo.check_signers(role)
    manifest = read_manifest(archive)
    name, version = manifest.name, manifest.version
    capabilities = capabilities_of(manifest)
    _report(progress, "checking the archive as a device would")
    with tempfile.TemporaryDirectory(prefix="edge-fleet-check-", ignore_cleanup_errors=True) as work:
        unpack(archive, Path(work) / "bundle", name, version, max_bytes=_unpacked_limit(archive))
    targets = repo.targets()
    _check_version(_releases(targets), targets, name, version, fleet)
    _report(progress, "cutting the block index")
    index = block_index(archive)
    index_bytes = index.model_dump_json(by_alias=True).encode()
    archive_path, index_path = archive_target(name, version), index_target(name, version)
    index_info = TargetFile.from_data(index_path, index_bytes, ["sha256"])
    try:
        custom = ReleaseCustom(
            name=name,
            version=version,
            block_index=TargetRef(
                path=index_path, length=index_info.length, sha256=index_info.hashes["sha256"]
            ),
            fleet=fleet,
            groups=groups,
            min_agent_version=min_agent_version,
            capabilities=capabilities,
            activation=activation or Activation(),
        )
    except ValidationError as problem:
        raise ReleaseRefused(f"the release's fields are invalid: {_first_error(problem)}") from None
    custom_json = signable_custom(custom)
    index_info = repo.add_target_data(index_path, index_bytes)
    archive_info = repo.add_target_file(archive_path, archive, progress)
    if archive_info.hashes["sha256"] != index.archive_sha256 or archive_info.length != index.archive_length:
        raise ReleaseRefused(f"{archive} changed while it was published: publish it again")
    published = repo.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
    index_info.unrecognized_fields["custom"] = {
        "kind": INDEX_KIND,
        "archive": archive_path,
        "published": published,
    }
    archive_info.unrecognized_fields["custom"] = custom_json
    _report(progress, "signing targets, snapshot and timestamp")
    with repo.edit_targets() as edited:
        edited.targets[index_path] = index_info
        edited.targets[archive_path] = archive_info
    repo.do_snapshot()
    repo.do_timestamp()
    return Published(
        name,
        version,
        fleet,
        groups,
        archive_path,
        index_path,
        archive_info.length,
        archive_info.hashes["sha256"],
        len(index.blocks),
        {
            Targets.type: repo.targets().version,
            Snapshot.type: repo.snapshot().version,
            Timestamp.type: repo.timestamp().version,
        },
    )


def signable_custom(custom: ReleaseCustom) -> dict[str, Any]:
    """`custom` as TUF signs it (canonical JSON: whole numbers, which the release format uses throughout)."""
    data: dict[str, Any] = custom.model_dump(mode="json", by_alias=True)
    if ReleaseCustom.model_validate_json(json.dumps(data)) != custom:
        raise AssertionError("the signable custom does not read back as the release's")
    return data


def _check_version(releases: list[ReleaseRow], targets: Targets, name: str, version: int, fleet: str) -> None:
    if archive_target(name, version) in targets.targets:
        owner = next((row.fleet for row in releases if (row.name, row.version) == (name, version)), "?")
        raise ReleaseRefused(
            f"{name} v{version} is already published (fleet {owner}): a release gets a new version "
            f"(`edge-fleet release revert` re-releases an old bundle under one)"
        )
    published = [row.version for row in releases if row.name == name and row.fleet == fleet]
    if published and version <= max(published):
        raise ReleaseRefused(
            f"{name} v{version} is not above v{max(published)}, already published for fleet {fleet}: "
            "versions only go up (`edge-fleet release revert` re-releases an old bundle under a new version)"
        )


def _releases(targets: Targets) -> list[ReleaseRow]:
    rows = []
    for path, info in targets.targets.items():
        custom = _release_custom(info)
        if custom is None or path != archive_target(custom.name, custom.version):
            continue
        index = targets.targets.get(custom.block_index.path)
        extra: Any = index.custom if index is not None else None
        published = extra.get("published") if isinstance(extra, dict) else None
        rows.append(
            ReleaseRow(
                custom.name,
                custom.version,
                custom.fleet,
                custom.groups,
                info.length,
                info.hashes.get("sha256", ""),
                published if isinstance(published, str) else None,
                custom,
            )
        )
    return sorted(rows, key=lambda row: (row.name, row.version))


def _release_custom(info: TargetFile) -> ReleaseCustom | None:
    if not isinstance(info.custom, dict) or info.custom.get("kind") != "bundle":
        return None
    try:
        return ReleaseCustom.model_validate_json(json.dumps(info.custom))
    except ValidationError:
        return None


def _set_version(folder: Path, version: int) -> None:
    """Rewrites `version` in an unpacked (read-only) bundle's manifest.json, keeping every other field."""
    path = folder / MANIFEST
    folder.chmod(0o755)
    path.chmod(0o644)
    data: dict[str, Any] = json.loads(path.read_bytes())
    data["version"] = version
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)


def _unpacked_limit(archive: Path) -> int:
    """An unpacked bundle is never larger than its tar archive; the margin is for the manifest's own entry."""
    return archive.stat().st_size + (1 << 20)


def _report(progress: ProgressFn | None, what: str) -> None:
    if progress is not None:
        progress(what, 1, 1)


def _first_error(problem: ValidationError) -> str:
    error = problem.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def activation_from(values: Mapping[str, object]) -> Activation:
    """Activation thresholds from KEY=VALUE pairs already decoded (ReleaseRefused naming a bad key or value)."""
    known = sorted(Activation.model_fields)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ReleaseRefused(f"--activation {unknown[0]}: not an activation threshold ({', '.join(known)})")
    try:
        return Activation.model_validate(dict(values))
    except ValidationError as problem:
        raise ReleaseRefused(f"--activation {_first_error(problem)}") from None


__all__ = [
    "INDEX_KIND",
    "Published",
    "ReleaseRow",
    "activation_from",
    "capabilities_of",
    "list_releases",
    "publish",
    "read_manifest",
    "revert",
    "signable_custom",
]
