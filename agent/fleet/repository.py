"""The operator's TUF repository: python-tuf's `tuf.repository.Repository` over files, the store `--repo DIR`.

The store layout is a contract: `edge-fleet serve` answers devices from it and a device's `tuf.ngclient.Updater`, with
`metadata_base_url = .../metadata/` and `target_base_url = .../targets/`, refreshes and verifies everything from it.

    DIR/metadata/1.root.json, 2.root.json, ...   every root version, all kept (a device walks N+1, N+2, ... from its own)
    DIR/metadata/N.targets.json                  every targets version (consistent_snapshot: true)
    DIR/metadata/N.snapshot.json                 every snapshot version
    DIR/metadata/timestamp.json                  the only unversioned file: where every refresh starts
    DIR/targets/bundles/{name}/{sha256}.{version}.tar          a release archive, under TUF's hash-prefixed name
                                                               (`prefix_targets_with_hash`) of its target path
                                                               `bundles/{name}/{version}.tar` (`archive_target`)
    DIR/targets/bundles/{name}/{sha256}.{version}.blocks.json  its block index (target `index_target(name, version)`)
    DIR/.lock                                    held (flock) by the one process writing the store; never served

No private key is ever in the store: signers come from the caller (`--sign ROLE=FILE` on the command line; `serve`
holds the snapshot and timestamp keys and calls `resign_timestamp`).

Invariants:
- What is published is the chain timestamp.json -> N.snapshot.json -> M.targets.json, under the highest root. A file
  that this chain does not reach (a crash between two writes) is not published; the next write replaces it.
- Every file is written with `agent.fsutil.write_atomic` (temp file in the same folder, fsync, `os.replace`, fsync of
  the folder), in the order target files, targets, snapshot, timestamp; a new root before the roles it re-keys.
- Nothing is written that python-tuf does not verify: `close()` signs, then asks python-tuf whether the signatures reach
  the threshold (`get_root_verification_result` with the previous root for a root, `get_verification_result` of the
  root for the others) and refuses with a `SigningError` if they do not. No signature, threshold or version logic here.
- What it reads it verifies first (python-tuf again): the root chain from 1.root.json, and the other roles under a
  root of the store, so a file altered outside edge-fleet is refused, never signed again by an offline key.
- One writer at a time: every writing operation holds an exclusive `flock` on DIR/.lock. Readers need no lock: the
  files a timestamp reaches are written before it and never change.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    RootVerificationResult,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
    VerificationResult,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer
from tuf.repository import Repository

from agent.fleet.errors import SigningError, StoreError
from agent.fsutil import fsync_dir, write_atomic

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
METADATA = "metadata"
TARGETS = "targets"
LOCK = ".lock"
LOCK_WAIT_S = 30.0
HASH = "sha256"
_SERIALIZER = JSONSerializer(compact=True)  # devices pay for every byte they fetch
_VERSIONED = re.compile(r"^([1-9][0-9]{0,9})\.(root|targets|snapshot)\.json$")
_COPY_BYTES = 1 << 20
_FRESH: dict[str, Callable[[], Signed]] = {
    "root": Root,
    "targets": Targets,
    "snapshot": Snapshot,
    "timestamp": Timestamp,
}

Signers = Mapping[str, Sequence[Signer]]
"""Role name -> the signers given for it (`--sign ROLE=FILE`, repeatable)."""
ProgressFn = Callable[[str, int, int], None]
"""Called as (what, done, total) while a long step runs."""


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Expiry:
    """How long each role's new metadata stays valid."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def of(self, role: str) -> timedelta:
        """The validity period of `role`."""
        periods = {
            "root": self.root,
            "targets": self.targets,
            "snapshot": self.snapshot,
            "timestamp": self.timestamp,
        }
        return periods[role]

    def with_days(self, days: Mapping[str, float]) -> Expiry:
        """A copy with the given roles' periods set to so many days."""
        unknown = sorted(set(days) - set(ROLES))
        if unknown:
            raise ValueError(f"no role {unknown[0]!r}: the roles are {', '.join(ROLES)}")
        return replace(self, **{role: timedelta(days=value) for role, value in days.items()})


@dataclass
class _State:
    """The published metadata of each role and the bytes it was read from or written as."""

    metadata: dict[str, Metadata[Any]] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)


class FileRepository(Repository):
    """python-tuf's repository over the store: `open` reads the published chain, `close` signs, verifies and writes."""

    def __init__(
        self,
        repo_dir: Path,
        signers: Signers | None = None,
        expiry: Expiry | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.repo_dir = repo_dir
        self.signers: Signers = signers or {}
        self.expiry = expiry or Expiry()
        self.clock = clock
        self._state: _State | None = None

    # -- the store --------------------------------------------------------------------------------------------------

    @property
    def metadata_dir(self) -> Path:
        """DIR/metadata: what `metadata_base_url` points at."""
        return self.repo_dir / METADATA

    @property
    def targets_dir(self) -> Path:
        """DIR/targets: what `target_base_url` points at."""
        return self.repo_dir / TARGETS

    def root_versions(self) -> list[int]:
        """The versions of every root kept in the store, in order."""
        if not self.metadata_dir.is_dir():
            return []
        found = (_VERSIONED.match(path.name) for path in self.metadata_dir.iterdir())
        return sorted(int(match.group(1)) for match in found if match and match.group(2) == Root.type)

    def initialized(self) -> bool:
        """True when the store holds a root and a timestamp."""
        return bool(self.root_versions()) and (self.metadata_dir / "timestamp.json").is_file()

    def require_initialized(self) -> None:
        """StoreError unless `trust init` made this store."""
        if not self.initialized():
            raise StoreError(
                f"{self.repo_dir} is not a release repository (no metadata/1.root.json and timestamp.json): "
                "run `edge-fleet trust init` first"
            )

    @contextlib.contextmanager
    def lock(self, *, create: bool = False, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        """Holds the store's write lock; `create`: make DIR, metadata/ and targets/ first (else the store must be one)."""
        if not create:
            self.require_initialized()
        try:
            for folder in (self.repo_dir, self.metadata_dir, self.targets_dir) if create else ():
                folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.repo_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as problem:
            raise StoreError(
                f"cannot open the store {self.repo_dir}: {problem.strerror or problem}"
            ) from None
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"another process has been writing {self.repo_dir} for {wait_s:g} s; try again"
                        ) from None
                    time.sleep(0.05)
            self._state = None  # read what the previous holder wrote
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- python-tuf's Repository ------------------------------------------------------------------------------------

    def open(self, role: str) -> Metadata[Any]:
        """The published metadata of `role` (a copy), or a version 0 of it when the store has none yet."""
        state = self._load()
        if role not in state.metadata:
            fresh = _FRESH[role]()
            fresh.version = 0  # close() makes it version 1
            return Metadata(fresh)
        return deepcopy(state.metadata[role])

    def close(self, role: str, md: Metadata[Any]) -> None:
        """Bumps version and expiry, signs with the role's signers, refuses unless python-tuf verifies it, writes it."""
        state = self._load()
        md.signed.version += 1
        md.signed.expires = self.clock() + self.expiry.of(role)
        md.signatures.clear()
        previous = self._published_root()
        root = md.signed if isinstance(md.signed, Root) else previous
        if root is None:
            raise StoreError(f"cannot sign {role} before the store has a root")
        for signer in self.eligible_signers(role, root, previous if role == Root.type else None):
            md.sign(signer, append=True)
        result = self.verification(role, md, root, previous)
        if not result:
            raise SigningError(describe_shortfall(role, md.signed.version, result))
        data = md.to_bytes(_SERIALIZER)
        name = "timestamp.json" if role == Timestamp.type else f"{md.signed.version}.{role}.json"
        try:
            write_atomic(self.metadata_dir / name, data, mode=0o644)
        except OSError as problem:
            raise StoreError(
                f"cannot write {self.metadata_dir / name}: {problem.strerror or problem}"
            ) from None
        state.metadata[role], state.raw[role] = deepcopy(md), data

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        """The snapshot's entry for the current targets metadata (version, length, sha256)."""
        return {f"{Targets.type}.json": self._meta_file(Targets.type)}

    @property
    def snapshot_info(self) -> MetaFile:
        """The timestamp's entry for the current snapshot metadata (version, length, sha256)."""
        return self._meta_file(Snapshot.type)

    # -- signing ----------------------------------------------------------------------------------------------------

    def eligible_signers(self, role: str, root: Root, previous: Root | None = None) -> list[Signer]:
        """The signers given for `role`, each checked to be a key `root` (or `previous`, for a root) names for it."""
        allowed = set(root.roles[role].keyids)
        if previous is not None:
            allowed |= set(previous.roles[role].keyids)
        chosen: dict[str, Signer] = {}
        for signer in self.signers.get(role, ()):
            keyid = signer.public_key.keyid
            if keyid not in allowed:
                where = f"root v{root.version}" + ("" if previous is None else f" or v{previous.version}")
                raise SigningError(f"the --sign {role}= key {keyid[:12]} is not a {role} key of {where}")
            chosen.setdefault(keyid, signer)
        return list(chosen.values())

    def verification(
        self, role: str, md: Metadata[Any], root: Root, previous: Root | None = None
    ) -> VerificationResult | RootVerificationResult:
        """python-tuf's verdict on `md`'s signatures: under `root` (and, for a root, the `previous` one too)."""
        if role == Root.type:
            assert isinstance(md.signed, Root)
            return md.signed.get_root_verification_result(previous, md.signed_bytes, md.signatures)
        return root.get_verification_result(role, md.signed_bytes, md.signatures)

    def check_signers(self, role: str, root: Root | None = None) -> None:
        """Refuses early (SigningError) when the signers given for `role` cannot reach its threshold under `root`."""
        root = root or self._published_root()
        if root is None:
            raise StoreError("the store has no root yet")
        md = self.open(role)
        md.signatures.clear()
        for signer in self.eligible_signers(role, root):
            md.sign(signer, append=True)
        result = root.get_verification_result(role, md.signed_bytes, md.signatures)
        if not result:
            raise SigningError(describe_shortfall(role, md.signed.version + 1, result))

    def verifies(self, role: str) -> bool:
        """True when the published `role` metadata verifies under the published root (python-tuf's verdict)."""
        root = self._published_root()
        state = self._load()
        if root is None or role not in state.metadata:
            return False
        md = state.metadata[role]
        return bool(root.get_verification_result(role, md.signed_bytes, md.signatures))

    # -- target files -----------------------------------------------------------------------------------------------

    def stored_path(self, target: TargetFile) -> Path:
        """Where a target's bytes lie in the store: its hash-prefixed name under DIR/targets."""
        return self.targets_dir / target.get_prefixed_paths()[0]

    def add_target_file(
        self, target_path: str, source: Path, progress: ProgressFn | None = None
    ) -> TargetFile:
        """Copies `source` into the store as `target_path` and returns its TargetFile (length and sha256)."""
        info = TargetFile.from_file(target_path, str(source), [HASH])
        dest = self.stored_path(info)
        if self._holds(info, dest):
            return info
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with source.open("rb") as reader, tmp.open("wb") as writer:
                done = 0
                for chunk in iter(lambda: reader.read(_COPY_BYTES), b""):
                    writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(f"copying {target_path}", done, info.length)
                writer.flush()
                os.fsync(writer.fileno())
            tmp.chmod(0o644)
            tmp.replace(dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(dest.parent)
        if not self._holds(info, dest):
            raise StoreError(f"{dest} changed while it was copied")
        return info

    def add_target_data(self, target_path: str, data: bytes) -> TargetFile:
        """Writes `data` into the store as `target_path` and returns its TargetFile (length and sha256)."""
        info = TargetFile.from_data(target_path, data, [HASH])
        dest = self.stored_path(info)
        if not self._holds(info, dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dest, data, mode=0o644)
        return info

    @staticmethod
    def _holds(info: TargetFile, path: Path) -> bool:
        try:
            with path.open("rb") as handle:
                info.verify_length_and_hashes(handle)
        except (OSError, RepositoryError):
            return False
        return True

    # -- reading the store ------------------------------------------------------------------------------------------

    def _published_root(self) -> Root | None:
        md = self._load().metadata.get(Root.type)
        if md is None:
            return None
        assert isinstance(md.signed, Root)
        return md.signed

    def _meta_file(self, role: str) -> MetaFile:
        state = self._load()
        if role not in state.raw:
            return MetaFile(1)
        return MetaFile(
            state.metadata[role].signed.version, len(state.raw[role]), {HASH: _sha256(state.raw[role])}
        )

    def _load(self) -> _State:
        if self._state is not None:
            return self._state
        state = _State()
        roots = [self._read_file(Root.type, f"{v}.root.json", v) for v in self.root_versions()]
        if roots:
            state.metadata[Root.type], state.raw[Root.type] = roots[-1]
        if (self.metadata_dir / "timestamp.json").is_file():
            timestamp = self._read(state, Timestamp.type, "timestamp.json", None)
            assert isinstance(timestamp, Timestamp)
            version = timestamp.snapshot_meta.version
            snapshot = self._read(state, Snapshot.type, f"{version}.snapshot.json", version)
            assert isinstance(snapshot, Snapshot)
            entry = snapshot.meta.get(f"{Targets.type}.json")
            if entry is None:
                raise StoreError(f"{self.metadata_dir / f'{version}.snapshot.json'} lists no targets.json")
            self._read(state, Targets.type, f"{entry.version}.targets.json", entry.version)
        self._check_signatures(state, [md for md, _raw in roots])
        self._state = state
        return state

    def _check_signatures(self, state: _State, roots: list[Metadata[Any]]) -> None:
        """StoreError unless python-tuf verifies what the store holds: each root by the one before it (and by
        itself), each other role by some root of the store (the newest, or an older one while a re-keying is
        unfinished). Nothing altered outside edge-fleet is ever built on and signed again."""
        previous: Root | None = None
        for md in roots:
            if not md.signed.get_root_verification_result(previous, md.signed_bytes, md.signatures):
                raise StoreError(
                    f"{self.metadata_dir / f'{md.signed.version}.root.json'} is not signed as TUF requires "
                    "(by the threshold of the previous root and of its own): the store was altered"
                )
            previous = md.signed
        for role in (Targets.type, Snapshot.type, Timestamp.type):
            if role not in state.metadata:
                continue
            signed = state.metadata[role]
            if not any(
                root.signed.get_verification_result(role, signed.signed_bytes, signed.signatures)
                for root in reversed(roots)
            ):
                raise StoreError(
                    f"the store's {role} v{signed.signed.version} is not signed by the {role} keys of any of its "
                    "roots: it was altered outside edge-fleet"
                )

    def _read(self, state: _State, role: str, name: str, version: int | None) -> Signed:
        md, data = self._read_file(role, name, version)
        state.metadata[role], state.raw[role] = md, data
        signed: Signed = md.signed
        return signed

    def _read_file(self, role: str, name: str, version: int | None) -> tuple[Metadata[Any], bytes]:
        path = self.metadata_dir / name
        try:
            data = path.read_bytes()
            md = Metadata[Any].from_bytes(data)
        except FileNotFoundError:
            raise StoreError(f"{path} is missing: the store is incomplete") from None
        except OSError as problem:
            raise StoreError(f"cannot read {path}: {problem.strerror or problem}") from None
        except DeserializationError as problem:
            raise StoreError(f"{path} is not TUF metadata: {problem}") from None
        if md.signed.type != role or (version is not None and md.signed.version != version):
            raise StoreError(f"{path} holds {md.signed.type} v{md.signed.version}, not {role} v{version}")
        return md, data


def describe_shortfall(role: str, version: int, result: VerificationResult | RootVerificationResult) -> str:
    """Why python-tuf does not verify `role` v`version`, in its own counts, for an error line."""
    if isinstance(result, RootVerificationResult):
        old, new = result.first, result.second
        return (
            f"root v{version} must be signed by {old.threshold} key(s) of root v{version - 1} (the --sign root= "
            f"keys give {len(old.signed)}) and by {new.threshold} of its own (they give {len(new.signed)}): "
            "give more --sign root=KEYFILE"
        )
    return (
        f"{role} v{version} needs {result.threshold} signature(s) by {role} keys, the --sign {role}= keys give "
        f"{len(result.signed)}: give {result.missing} more --sign {role}=KEYFILE"
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "LOCK",
    "METADATA",
    "ROLES",
    "TARGETS",
    "Expiry",
    "FileRepository",
    "ProgressFn",
    "Signers",
    "describe_shortfall",
    "utc_now",
]
