"""Trust operations on the store: the first root, every later root (keys, thresholds, rotation), timestamp upkeep.

Root changes follow TUF: each new root is version N+1, signed by the threshold of root N's keys and by the threshold of
its own; python-tuf's `Root.get_root_verification_result` decides whether it is (in `FileRepository.close`), and so
whether it is written. Every root version stays in the store, so a device that trusts any old one walks up to the
newest. A change to the keys or threshold of targets, snapshot or timestamp writes the new root first, then re-signs
that role and the roles above it (targets -> snapshot -> timestamp) under the new root.

Before anything is written, the `--sign` keys are checked against every threshold the operation needs (python-tuf's
verification results over a trial signature), so a refused operation leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from agent.fleet.errors import SigningError, StoreError, UsageError
from agent.fleet.repository import ROLES, Expiry, FileRepository, Signers, describe_shortfall, utc_now

RESIGN_WITHIN = timedelta(hours=6)
_ABOVE = {
    Targets.type: (Targets.type, Snapshot.type, Timestamp.type),
    Snapshot.type: (Snapshot.type, Timestamp.type),
}


@dataclass(frozen=True)
class RoleKeys:
    """The keys of one role and how many of them must sign."""

    keys: tuple[Key, ...]
    threshold: int = 1


@dataclass(frozen=True)
class RootChange:
    """What a root change wrote: the new root file and the roles re-signed under it (role -> new version)."""

    root_version: int
    root_path: Path
    resigned: dict[str, int]


@dataclass(frozen=True)
class RoleSummary:
    """One role as the store publishes it."""

    role: str
    version: int
    expires: datetime
    threshold: int
    keyids: tuple[str, ...]


@dataclass(frozen=True)
class Resigned:
    """What `resign_timestamp` did: the new timestamp and snapshot versions (None: left as it was)."""

    timestamp: int | None
    snapshot: int | None
    timestamp_expires: datetime
    snapshot_expires: datetime
    targets_expires: datetime
    """Only the operator's offline targets key can extend this one: `serve` should warn as it nears."""


def init_trust(
    repo_dir: Path,
    roles: Mapping[str, RoleKeys],
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Path:
    """Writes version 1 of root, targets, snapshot and timestamp in a new store; returns the bootstrap root's path."""
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock(create=True):
        if repo.root_versions():
            raise StoreError(
                f"{repo_dir} already holds a root: change it with `edge-fleet trust add-key|remove-key|"
                "set-threshold|rotate` (or remove the folder if its `trust init` was interrupted)"
            )
        missing = [role for role in ROLES if role not in roles]
        if missing:
            raise UsageError(f"no keys given for {', '.join(missing)}")
        root = Root(consistent_snapshot=True)
        for role in ROLES:
            for key in roles[role].keys:
                root.add_key(key, role)
            root.roles[role].threshold = roles[role].threshold
        _check_thresholds(root)
        root.version = 1
        _check_root(repo, root, None)
        for role in (Targets.type, Snapshot.type, Timestamp.type):
            repo.check_signers(role, root)
        with repo.edit_root() as new_root:
            new_root.keys, new_root.roles, new_root.consistent_snapshot = root.keys, root.roles, True
        with repo.edit_targets():
            pass
        with repo.edit_snapshot() as snapshot:
            snapshot.meta = deepcopy(repo.targets_infos)
        with repo.edit_timestamp() as timestamp:
            timestamp.snapshot_meta = deepcopy(repo.snapshot_info)
    return repo.metadata_dir / "1.root.json"


def add_key(
    repo_dir: Path,
    role: str,
    key: Key,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RootChange:
    """A new root with `key` added to `role` (then `role` re-signed, unless it is the root)."""

    def change(root: Root) -> None:
        if key.keyid in root.roles[role].keyids:
            raise UsageError(f"key {key.keyid[:12]} is already a {role} key")
        root.add_key(key, role)

    return change_root(repo_dir, change, role, signers, expiry, clock)


def remove_key(
    repo_dir: Path,
    role: str,
    keyid: str,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RootChange:
    """A new root without key `keyid` (or a unique prefix of it, 8 characters at least) in `role`."""

    def change(root: Root) -> None:
        root.revoke_key(_resolve_keyid(root, role, keyid), role)

    return change_root(repo_dir, change, role, signers, expiry, clock)


def set_threshold(
    repo_dir: Path,
    role: str,
    threshold: int,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RootChange:
    """A new root where `threshold` keys of `role` must sign."""

    def change(root: Root) -> None:
        root.roles[role].threshold = threshold

    return change_root(repo_dir, change, role, signers, expiry, clock)


def rotate_root(
    repo_dir: Path,
    keys: Sequence[Key],
    threshold: int,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RootChange:
    """A new root whose own keys are `keys` (the old root keys removed), signed by both the old and the new ones."""

    def change(root: Root) -> None:
        for keyid in list(root.roles[Root.type].keyids):
            root.revoke_key(keyid, Root.type)
        for key in keys:
            root.add_key(key, Root.type)
        root.roles[Root.type].threshold = threshold

    return change_root(repo_dir, change, Root.type, signers, expiry, clock)


def change_root(
    repo_dir: Path,
    change: Callable[[Root], None],
    role: str,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> RootChange:
    """Writes root N+1 = `change`(root N), then re-signs `role` and the roles above it when `role` is not the root."""
    if role not in ROLES:
        raise UsageError(f"no role {role!r}: the roles are {', '.join(ROLES)}")
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock():
        repo.require_initialized()
        current = repo.root()
        candidate = deepcopy(current)
        try:
            change(candidate)
        except ValueError as problem:  # python-tuf's add_key/revoke_key refusals
            raise UsageError(str(problem)) from None
        candidate.version = current.version + 1
        _check_thresholds(candidate)
        _check_root(repo, candidate, current)
        resign = _ABOVE.get(role, (role,)) if role != Root.type else ()
        for other in resign:
            repo.check_signers(other, candidate)
        with repo.edit_root() as root:
            change(root)
        versions = _resign_chain(repo, resign)
        version = repo.root().version
    return RootChange(version, repo.metadata_dir / f"{version}.root.json", versions)


def resign(
    repo_dir: Path,
    role: str,
    signers: Signers,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> dict[str, int]:
    """New versions of `role` and the roles above it, with fresh expiries (role -> new version); for the root, root
    N+1 with the same keys. For an offline role nearing its expiry, or after a root change that was cut short."""
    if role == Root.type:
        change = change_root(repo_dir, lambda root: None, Root.type, signers, expiry, clock)
        return {Root.type: change.root_version}
    if role not in ROLES:
        raise UsageError(f"no role {role!r}: the roles are {', '.join(ROLES)}")
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock():
        repo.require_initialized()
        chain = _ABOVE.get(role, (role,))
        for other in chain:
            repo.check_signers(other)
        return _resign_chain(repo, chain)


def _resign_chain(repo: FileRepository, roles: Sequence[str]) -> dict[str, int]:
    """Re-signs `roles` (a tail of targets, snapshot, timestamp) in that order; role -> new version."""
    versions: dict[str, int] = {}
    if Targets.type in roles:
        with repo.edit_targets():
            pass
        versions[Targets.type] = repo.targets().version
    if Snapshot.type in roles:
        repo.do_snapshot(force=True)
        versions[Snapshot.type] = repo.snapshot().version
    if Timestamp.type in roles:
        repo.do_timestamp(force=True)
        versions[Timestamp.type] = repo.timestamp().version
    return versions


def describe_trust(repo_dir: Path) -> list[RoleSummary]:
    """Each role's published version, expiry, threshold and keyids."""
    repo = FileRepository(repo_dir)
    repo.require_initialized()
    root = repo.root()
    signed = {Root.type: root, Targets.type: repo.targets(), Snapshot.type: repo.snapshot()}
    signed[Timestamp.type] = repo.timestamp()
    return [
        RoleSummary(
            role,
            signed[role].version,
            signed[role].expires,
            root.roles[role].threshold,
            tuple(root.roles[role].keyids),
        )
        for role in ROLES
    ]


def resign_timestamp(
    repo_dir: Path,
    timestamp_signer: Signer,
    snapshot_signer: Signer | None = None,
    *,
    expires_within: timedelta = RESIGN_WITHIN,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Resigned:
    """Re-signs the timestamp (a new version) when it expires within `expires_within` or no longer verifies; the
    snapshot too, first, when it does (which needs `snapshot_signer`). Meant for `serve`, on a timer."""
    signers: dict[str, list[Signer]] = {Timestamp.type: [timestamp_signer]}
    if snapshot_signer is not None:
        signers[Snapshot.type] = [snapshot_signer]
    repo = FileRepository(repo_dir, signers, expiry, clock)
    with repo.lock():
        repo.require_initialized()
        horizon = clock() + expires_within
        snapshot = repo.snapshot()
        new_snapshot: int | None = None
        if snapshot.expires <= horizon or not repo.verifies(Snapshot.type):
            if snapshot_signer is None:
                raise SigningError(
                    f"snapshot v{snapshot.version} expires at {snapshot.expires:%Y-%m-%d %H:%M}Z or no longer "
                    "verifies: re-signing it needs the snapshot key"
                )
            repo.do_snapshot(force=True)
            new_snapshot = repo.snapshot().version
        timestamp = repo.timestamp()
        new_timestamp: int | None = None
        if new_snapshot is not None or timestamp.expires <= horizon or not repo.verifies(Timestamp.type):
            repo.do_timestamp(force=True)
            new_timestamp = repo.timestamp().version
        return Resigned(
            new_timestamp,
            new_snapshot,
            repo.timestamp().expires,
            repo.snapshot().expires,
            repo.targets().expires,
        )


def _check_root(repo: FileRepository, root: Root, previous: Root | None) -> None:
    """SigningError unless the given root signers reach both thresholds for `root` (python-tuf's verdict)."""
    trial: Metadata[Any] = Metadata(deepcopy(root))
    for signer in repo.eligible_signers(Root.type, root, previous):
        trial.sign(signer, append=True)
    result = repo.verification(Root.type, trial, root, previous)
    if not result:
        raise SigningError(describe_shortfall(Root.type, root.version, result))


def _check_thresholds(root: Root) -> None:
    """UsageError for a root that nobody could sign for: a threshold under 1 or above the role's keys."""
    for role in ROLES:
        keys, threshold = len(root.roles[role].keyids), root.roles[role].threshold
        if threshold < 1:
            raise UsageError(f"the {role} threshold must be at least 1")
        if keys < threshold:
            raise UsageError(f"{role} would need {threshold} signature(s) but has {keys} key(s)")


def _resolve_keyid(root: Root, role: str, keyid: str) -> str:
    matches = [
        known
        for known in root.roles[role].keyids
        if known == keyid or (len(keyid) >= 8 and known.startswith(keyid))
    ]
    if len(matches) != 1:
        known = ", ".join(k[:12] for k in root.roles[role].keyids) or "none"
        what = "no" if not matches else "more than one"
        raise UsageError(f"{what} {role} key matches {keyid!r} (the {role} keys: {known})")
    return matches[0]


__all__ = [
    "RESIGN_WITHIN",
    "Resigned",
    "RoleKeys",
    "RoleSummary",
    "RootChange",
    "add_key",
    "change_root",
    "describe_trust",
    "init_trust",
    "remove_key",
    "resign",
    "resign_timestamp",
    "rotate_root",
    "set_threshold",
]
