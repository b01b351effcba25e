"""Test support for the device's updater: a TUF repository folder built with `tuf.api.metadata` and real ed25519 keys,
an in-process `RepoPort` (`LocalRepo`) that answers from it and can be told to misbehave, and bundle helpers.

The folder has the layout `edge-fleet` writes: metadata/N.root.json (every version), metadata/timestamp.json,
metadata/N.snapshot.json, metadata/N.targets.json (consistent snapshots), and
targets/bundles/{name}/{sha256}.{version}.tar / {sha256}.{version}.blocks.json (hash-prefixed target names).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from conftest import MODELS, edit_manifest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from agent.errors import LinkError
from agent.inference.bundle import file_entry
from agent.ota import DeviceFacts, ModelUpdater, OtaConfig
from agent.release.archive import pack
from agent.release.chunking import block_index
from agent.release.formats import (
    PART_BYTES,
    PROP_BLOCK,
    PROP_ERROR,
    PROP_PART,
    PROP_PARTS,
    PROP_STATUS,
    BlockIndex,
    Capabilities,
    Desired,
    ReleaseCustom,
    RepoRequest,
    TargetRef,
    archive_target,
    index_target,
)

FLEET = "fleet-a"
GROUP = "group-1"
BASE_BUNDLE = MODELS / "digits-cls-tflite"
NAME = "digits-cls"
ROLES = ("root", "targets", "snapshot", "timestamp")


def _expiry(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=days)


# --- bundles -----------------------------------------------------------------------------------------------------


def make_bundle(folder: Path, version: int, pad: bytes = b"", name: str = NAME) -> Path:
    """A copy of the bundled digits classifier as `version`, with `pad` as one more listed file (pad.bin) when given."""
    target = folder / f"{name}-v{version}"
    shutil.copytree(BASE_BUNDLE, target)
    rehash: tuple[str, ...] = ()
    if pad:
        (target / "pad.bin").write_bytes(pad)
        rehash = ("pad.bin",)
        data = json.loads((target / "manifest.json").read_text())
        data["files"]["pad.bin"] = file_entry(target / "pad.bin").model_dump()
        (target / "manifest.json").write_text(json.dumps(data, indent=2))
    edit_manifest(target, rehash=rehash, version=version, name=name)
    return target


def random_bytes(size: int, seed: int) -> bytes:
    """Incompressible bytes, reproducible from the seed."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# --- the repository ----------------------------------------------------------------------------------------------


@dataclass
class Published:
    """One release in the repository."""

    name: str
    version: int
    archive: bytes
    digest: str
    index: BlockIndex
    index_bytes: bytes
    custom: dict[str, Any]

    @property
    def desired(self) -> Desired:
        """The desired state naming it."""
        return Desired(model=self.name, version=self.version)


@dataclass
class RepoBuilder:
    """A TUF repository folder with ed25519 keys, written the way `edge-fleet` writes it."""

    folder: Path
    fleet: str = FLEET
    targets_keys: int = 1
    targets_threshold: int = 1
    signers: dict[str, list[CryptoSigner]] = field(default_factory=dict)
    releases: list[Published] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metadata_dir = self.folder / "metadata"
        self.targets_dir = self.folder / "targets"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        counts = {"root": 1, "targets": self.targets_keys, "snapshot": 1, "timestamp": 1}
        self.signers = {
            role: [CryptoSigner.generate_ed25519() for _ in range(counts[role])] for role in ROLES
        }
        root = Root(expires=_expiry(365), consistent_snapshot=True)
        for role in ROLES:
            for signer in self.signers[role]:
                root.add_key(signer.public_key, role)
        root.roles["targets"].threshold = self.targets_threshold
        self.root = Metadata(root)
        self.targets = Metadata(Targets(expires=_expiry(30)))
        self.snapshot = Metadata(Snapshot(expires=_expiry(7)))
        self.timestamp = Metadata(Timestamp(expires=_expiry(1)))
        self._published = False
        self.write_root()
        self.publish()

    # metadata

    def _sign(self, metadata: Metadata[Any], signers: Iterable[CryptoSigner]) -> bytes:
        metadata.signatures.clear()
        for signer in signers:
            metadata.sign(signer, append=True)
        return metadata.to_bytes()

    def write_root(self, signers: Iterable[CryptoSigner] | None = None) -> bytes:
        """Signs and writes metadata/N.root.json for the current root version."""
        data = self._sign(self.root, signers if signers is not None else self.signers["root"])
        (self.metadata_dir / f"{self.root.signed.version}.root.json").write_bytes(data)
        return data

    def root_bytes(self, version: int = 1) -> bytes:
        """A root version's file (version 1: the device's bootstrap root)."""
        return (self.metadata_dir / f"{version}.root.json").read_bytes()

    def publish(
        self,
        targets_signers: Iterable[CryptoSigner] | None = None,
        timestamp_expires: datetime.datetime | None = None,
    ) -> None:
        """Writes the order a repository must: targets, snapshot, then timestamp, each one version up."""
        if self._published:
            for metadata in (self.targets, self.snapshot, self.timestamp):
                metadata.signed.version += 1
        self._published = True
        targets = self._sign(
            self.targets, targets_signers if targets_signers is not None else self.signers["targets"]
        )
        (self.metadata_dir / f"{self.targets.signed.version}.targets.json").write_bytes(targets)
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        snapshot = self._sign(self.snapshot, self.signers["snapshot"])
        (self.metadata_dir / f"{self.snapshot.signed.version}.snapshot.json").write_bytes(snapshot)
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.signed.expires = timestamp_expires or _expiry(1)
        self.write_timestamp()

    def write_timestamp(self) -> bytes:
        """Signs and writes metadata/timestamp.json as it stands."""
        data = self._sign(self.timestamp, self.signers["timestamp"])
        (self.metadata_dir / "timestamp.json").write_bytes(data)
        return data

    def rotate_root(self, sign_with_old: bool = True) -> list[CryptoSigner]:
        """Root version + 1 with a new root key; signed by the new key and (unless told not to) by the old one."""
        old = self.signers["root"]
        new = [CryptoSigner.generate_ed25519()]
        root = self.root.signed
        root.version += 1
        for signer in old:
            root.revoke_key(signer.public_key.keyid, "root")
        for signer in new:
            root.add_key(signer.public_key, "root")
        self.signers["root"] = new
        self.write_root([*new, *old] if sign_with_old else new)
        return new

    # targets

    def add_release(
        self,
        bundle: Path,
        *,
        archive: bytes | None = None,
        index: BlockIndex | None = None,
        **custom: Any,
    ) -> Published:
        """Packs `bundle` (or takes `archive`), writes the archive and its block index as targets, and lists both
        (publish() signs them). `custom` overrides fields of the release's custom."""
        manifest = json.loads((bundle / "manifest.json").read_text())
        name, version = manifest["name"], manifest["version"]
        packed = self.folder / "work" / f"{name}.{version}.tar"
        packed.parent.mkdir(exist_ok=True)
        if archive is None:
            pack(bundle, packed)
        else:
            packed.write_bytes(archive)
        data = packed.read_bytes()
        index = index or block_index(packed)
        index_bytes = index.model_dump_json(by_alias=True).encode()
        digest = hashlib.sha256(data).hexdigest()
        index_digest = hashlib.sha256(index_bytes).hexdigest()
        folder = self.targets_dir / "bundles" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{digest}.{version}.tar").write_bytes(data)
        (folder / f"{index_digest}.{version}.blocks.json").write_bytes(index_bytes)
        runtime = "litert" if manifest["model"].endswith(".tflite") else "onnxruntime"
        fields: dict[str, Any] = {
            "name": name,
            "version": version,
            "block_index": TargetRef(
                path=index_target(name, version), length=len(index_bytes), sha256=index_digest
            ),
            "fleet": self.fleet,
            "capabilities": Capabilities(runtime=runtime, input_kind=manifest["input"]["kind"]),
        }
        fields.update(custom)
        release_custom = ReleaseCustom(**fields).model_dump(mode="json", by_alias=True)
        self.targets.signed.targets[archive_target(name, version)] = TargetFile(
            len(data), {"sha256": digest}, archive_target(name, version), {"custom": release_custom}
        )
        self.targets.signed.targets[index_target(name, version)] = TargetFile(
            len(index_bytes), {"sha256": index_digest}, index_target(name, version)
        )
        published = Published(name, version, data, digest, index, index_bytes, release_custom)
        self.releases.append(published)
        return published

    def snapshot_files(self) -> dict[str, bytes]:
        """Every metadata file as it is now (to replay later)."""
        return {path.name: path.read_bytes() for path in self.metadata_dir.iterdir()}

    def copy_targets(self) -> Metadata[Targets]:
        """A deep copy of the targets metadata (to forge)."""
        return copy.deepcopy(self.targets)


# --- the port ----------------------------------------------------------------------------------------------------


Message = tuple[Mapping[str, str], bytes]


def _error(status: int, text: str) -> list[Message]:
    return [({PROP_STATUS: str(status), PROP_ERROR: text}, b"")]


@dataclass
class LocalRepo:
    """A `RepoPort` that answers from a repository folder, in-process; its knobs make it misbehave."""

    folder: Path
    trickle_s: float = 0.0
    """Wait this long before each message."""
    honour_deadline: bool = True
    """False: trickle past the caller's deadline instead of raising TimeoutError at it."""
    silent: bool = False
    """Never answer (TimeoutError at the deadline)."""
    unreachable: bool = False
    """Raise LinkError at once (the broker is down)."""
    extra_bytes: int = 0
    """Metadata and targets: this many junk bytes appended to every file."""
    claim_parts: int | None = None
    """Metadata and targets: announce this many parts, and keep sending them."""
    corrupt: Counter[int] = field(default_factory=Counter)
    """Block index -> how many times to answer it with one byte flipped."""
    drop: Counter[int] = field(default_factory=Counter)
    """Block index -> how many times not to answer it."""
    twice: set[int] = field(default_factory=set)
    """Blocks answered twice."""
    oversize_blocks: int = 0
    """Junk bytes appended to every block."""
    fail_after_blocks: int | None = None
    """Raise ConnectionError (the link dropped) once this many blocks have been sent in all."""
    overrides: dict[str, bytes] = field(default_factory=dict)
    """'metadata/NAME' or 'targets/PATH' -> the bytes to serve instead of the file (a replay, a forgery)."""
    requests: list[RepoRequest] = field(default_factory=list)
    block_requests: Counter[int] = field(default_factory=Counter)
    blocks_sent: int = 0
    bytes_sent: int = 0
    messages_sent: int = 0

    def request(self, request: RepoRequest, timeout_s: float) -> Iterator[Message]:
        """Answers `request` (sent at once); the iterator raises TimeoutError at the deadline like an MQTT port."""
        self.requests.append(request)
        if self.unreachable:
            raise LinkError("the broker cannot be reached")
        deadline = time.monotonic() + timeout_s
        if request.kind == "blocks":
            self.block_requests.update(request.blocks)
            messages, complete = self._blocks(request)
        else:
            messages, complete = self._file(request), True
        return self._deliver(messages, complete, deadline)

    def block_request_count(self) -> int:
        """Requests of blocks so far."""
        return sum(1 for r in self.requests if r.kind == "blocks")

    def _deliver(self, messages: Iterable[Message], complete: bool, deadline: float) -> Iterator[Message]:
        if self.silent:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise TimeoutError("no answer")
        for props, payload in messages:
            if self.trickle_s:
                if self.honour_deadline and time.monotonic() + self.trickle_s > deadline:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    raise TimeoutError("no more answers in time")
                time.sleep(self.trickle_s)
            if PROP_BLOCK in props:
                if self.fail_after_blocks is not None and self.blocks_sent >= self.fail_after_blocks:
                    raise ConnectionError("the link dropped")
                self.blocks_sent += 1
            self.messages_sent += 1
            self.bytes_sent += len(payload)
            yield props, payload
        if not complete:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise TimeoutError("the rest never came")

    def _file(self, request: RepoRequest) -> Iterable[Message]:
        section = "metadata" if request.kind == "metadata" else "targets"
        key = f"{section}/{request.path}"
        if key in self.overrides:
            data = self.overrides[key]
        else:
            path = self.folder / section / str(request.path)
            if not path.is_file():
                return _error(404, f"no such file: {request.path}")
            data = path.read_bytes()
        data += b" " * self.extra_bytes
        if self.claim_parts is not None:
            return self._endless(data, self.claim_parts)
        chunks = [data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
        return [
            ({PROP_STATUS: "200", PROP_PART: str(i), PROP_PARTS: str(len(chunks))}, chunk)
            for i, chunk in enumerate(chunks)
        ]

    @staticmethod
    def _endless(data: bytes, parts: int) -> Iterator[Message]:
        for i in range(parts):
            yield {PROP_STATUS: "200", PROP_PART: str(i), PROP_PARTS: str(parts)}, (data or b" ")[:PART_BYTES]

    def _archives(self) -> dict[str, tuple[Path, BlockIndex]]:
        found: dict[str, tuple[Path, BlockIndex]] = {}
        for index_path in (self.folder / "targets").glob("bundles/*/*.blocks.json"):
            index = BlockIndex.model_validate_json(index_path.read_bytes())
            version = index_path.name.split(".")[1]
            for archive in index_path.parent.glob(f"*.{version}.tar"):
                found.setdefault(archive.name.split(".")[0], (archive, index))
        return found

    def _blocks(self, request: RepoRequest) -> tuple[list[Message], bool]:
        entry = self._archives().get(str(request.digest))
        if entry is None:
            return _error(404, f"no archive {request.digest}"), True
        archive, index = entry
        data = archive.read_bytes()
        messages: list[Message] = []
        complete = True
        for i in request.blocks:
            if i >= len(index.blocks):
                return _error(400, f"no block {i}"), True
            if self.drop[i] > 0:
                self.drop[i] -= 1
                complete = False
                continue
            block = index.blocks[i]
            payload = bytearray(data[block.offset : block.offset + block.size])
            if self.corrupt[i] > 0:
                self.corrupt[i] -= 1
                payload[len(payload) // 2] ^= 0xFF
            payload += b"\0" * self.oversize_blocks
            props = {PROP_STATUS: "200", PROP_BLOCK: str(i)}
            messages.append((props, bytes(payload)))
            if i in self.twice:
                messages.append((props, bytes(payload)))
        return messages, complete


# --- the device --------------------------------------------------------------------------------------------------


FACTS = DeviceFacts(
    runtimes=frozenset({"litert", "onnxruntime"}), input_kind="image", ram_mb=4096, free_disk_bytes=1 << 36
)


def device_config(trust_root: Path, **changes: Any) -> OtaConfig:
    """An updater config for tests: short deadlines and backoff."""
    values: dict[str, Any] = {
        "enabled": True,
        "trust_root": trust_root,
        "request_timeout_s": 2.0,
        "request_blocks": 4,
        "window_blocks": 8,
        "max_tries": 4,
        "retry": {"initial_s": 0.01, "max_s": 0.05, "multiplier": 2, "jitter": 0.1},
        "progress_interval_s": 0.0,
    }
    values.update(changes)
    return OtaConfig(**values)


@dataclass
class Device:
    """A device's updater over a LocalRepo, with the events it emitted."""

    updater: ModelUpdater
    repo: LocalRepo
    state_dir: Path
    events: list[Any]

    def check(self, desired: Desired | None, **kwargs: Any) -> Any:
        """One check."""
        return self.updater.check(desired, **kwargs)

    def installed(self, name: str = NAME) -> list[int]:
        """Installed versions of `name`."""
        return self.updater.layout.installed_versions(name)

    def model_entries(self, name: str = NAME) -> list[str]:
        """Everything under models/{name}/ (hidden entries too)."""
        folder = self.state_dir / "models" / name
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def make_device(
    tmp_path: Path,
    builder: RepoBuilder,
    repo: LocalRepo | None = None,
    *,
    group: str | None = GROUP,
    facts: DeviceFacts = FACTS,
    name: str = "device",
    **config: Any,
) -> Device:
    """A device with the builder's version-1 root as its bootstrap root."""
    state_dir = tmp_path / name
    state_dir.mkdir(exist_ok=True)
    trust_root = tmp_path / f"{name}-root.json"
    if not trust_root.exists():
        trust_root.write_bytes(builder.root_bytes(1))
    repo = repo or LocalRepo(builder.folder)
    events: list[Any] = []
    updater = ModelUpdater(
        device_config(trust_root, **config),
        state_dir,
        repo,
        events.append,
        fleet=builder.fleet,
        group=group,
        facts=lambda: facts,
    )
    return Device(updater, repo, state_dir, events)


def rmtree(path: Path) -> None:
    """Removes a tree that holds read-only folders (installed bundles)."""
    if not path.exists():
        return
    for entry in [path, *path.rglob("*")]:
        if entry.is_dir() and not entry.is_symlink():
            entry.chmod(0o755)
    shutil.rmtree(path)
