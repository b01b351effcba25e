"""Release payloads as pydantic models, each with a `schema` version: TUF target `custom`, block index, desired state,
repository requests.

Invariants: every model refuses unknown keys and validates strictly (a hostile broker or repository cannot slip a
string in for a number); sizes and counts are bounded here, before anything is downloaded.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA = 1
MAX_BLOCK_BYTES = 128 * 1024
"""A block is one MQTT message: at most 128 KiB, AWS IoT Core's message limit."""
MAX_BLOCKS_PER_REQUEST = 100
"""At most this many blocks asked for (and so unacknowledged) at once: AWS IoT Core's in-flight limit."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Versioned(_Strict):
    """Base of the payloads that carry a schema version."""

    schema_: int = Field(SCHEMA, alias="schema", ge=1, le=SCHEMA, description="Payload schema version.")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


class TargetRef(_Strict):
    """Another TUF target that this one pins by length and hash."""

    path: str = Field(max_length=256, description="TUF target path.")
    length: int = Field(ge=0, le=64 * 1024 * 1024, description="Bytes.")
    sha256: Sha256 = Field(description="SHA-256 of the file, hex.")


class Capabilities(_Strict):
    """What the device needs to run the release; checked before a byte of the archive is downloaded."""

    runtime: Literal["litert", "onnxruntime"] = Field(description="The model's runtime.")
    providers: tuple[str, ...] = Field(
        (), description="ONNX Runtime execution providers the model needs (none: any)."
    )
    input_kind: Literal["image", "window"] = Field(
        description="What the model takes: camera frames or sensor windows."
    )
    ram_mb: int = Field(0, ge=0, description="Memory the model needs when loaded, MB (0: not stated).")
    disk_mb: int = Field(
        0, ge=0, description="Disk the installed bundle and its archive need, MB (0: computed)."
    )


class Activation(_Strict):
    """The thresholds an activation trial applies; signed with the release so a hostile broker cannot weaken them.

    Whole numbers only: TUF signs the canonical JSON of its metadata, which has no floating-point numbers, so shares
    are in per mille or per million and durations in whole seconds.
    """

    shadow: bool = Field(False, description="Run the candidate beside the active model before activating it.")
    shadow_items: int = Field(200, ge=1, description="Live items the shadow comparison needs.")
    min_agreement_permille: int = Field(
        900, ge=0, le=1000, description="Shadow agreement needed to promote, ‰."
    )
    trial_s: int = Field(300, ge=1, description="Length of the trial window after activation, seconds.")
    trial_min_items: int = Field(
        100, ge=1, description="Items the trial needs for a verdict (fewer: inconclusive)."
    )
    max_error_ppm: int = Field(
        10_000, ge=0, le=1_000_000, description="Share of trial items that may fail, ppm."
    )
    max_latency_percent: int = Field(
        150, ge=1, description="p95 latency allowed, in % of the latency budget."
    )
    max_low_confidence_increase_permille: int = Field(
        100,
        ge=0,
        le=1000,
        description="Trial: share of low-confidence results allowed above the previous model's, ‰ (points).",
    )
    max_extra_episodes: int = Field(
        1,
        ge=0,
        description="Trial: drift and anomaly episodes allowed beyond what the previous model's rate predicts.",
    )


class ReleaseCustom(Versioned):
    """The `custom` field of a release's archive target: what a device needs to decide before downloading."""

    kind: Literal["bundle"] = Field("bundle", description="What the target is.")
    name: Name = Field(description="Model name (equal to the manifest's).")
    version: int = Field(ge=1, description="Model version (equal to the manifest's; only ever increases).")
    block_index: TargetRef = Field(description="The archive's block index, a TUF target of its own.")
    fleet: Name = Field(description="The fleet the release is for.")
    groups: tuple[Name, ...] = Field((), description="Groups it is for; empty: every group of the fleet.")
    min_agent_version: str = Field(
        "0", pattern=r"^\d+(\.\d+){0,3}$", description="Oldest edge-agent that may run it."
    )
    capabilities: Capabilities = Field(description="What the device must offer.")
    activation: Activation = Field(default_factory=Activation, description="Activation thresholds.")


class Block(_Strict):
    """One chunk of the archive."""

    offset: int = Field(ge=0)
    size: int = Field(ge=1, le=MAX_BLOCK_BYTES)
    sha256: Sha256


class BlockIndex(Versioned):
    """The archive in content-defined chunks (FastCDC): offsets, sizes and hashes, in order, covering every byte."""

    archive_sha256: Sha256
    archive_length: int = Field(ge=0)
    chunking: str = Field(description="How the blocks were cut, e.g. fastcdc/16384/65536/131072.")
    blocks: tuple[Block, ...]

    @model_validator(mode="after")
    def _covers_the_archive(self) -> BlockIndex:
        position = 0
        for index, block in enumerate(self.blocks):
            if block.offset != position:
                raise ValueError(f"block {index} starts at {block.offset}, expected {position}")
            position += block.size
        if position != self.archive_length:
            raise ValueError(f"the blocks cover {position} bytes, the archive has {self.archive_length}")
        return self


class Desired(Versioned):
    """Retained on devices/{device}/desired and groups/{group}/desired: the release a device should run."""

    model: Name = Field(description="Model name.")
    version: int = Field(ge=1, description="Model version.")


class RepoRequest(Versioned):
    """On repo/get (MQTT 5 response topic and correlation data set): a metadata file, a small target, or blocks."""

    kind: Literal["metadata", "target", "blocks"]
    path: str | None = Field(None, max_length=256, description="metadata/target: the file, e.g. 2.root.json.")
    digest: Sha256 | None = Field(None, description="blocks: the archive's SHA-256.")
    blocks: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (), max_length=MAX_BLOCKS_PER_REQUEST, description="blocks: their indices in the block index."
    )

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> RepoRequest:
        if self.kind == "blocks":
            if self.digest is None or not self.blocks:
                raise ValueError("a blocks request names the archive digest and at least one block")
        elif self.path is None or not _SAFE_PATH.match(self.path) or ".." in self.path.split("/"):
            raise ValueError(f"a {self.kind} request names a plain relative file path")
        return self


_SAFE_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")

# User properties of a repository response message (the payload is raw bytes).
PROP_STATUS = "status"
"""200, 404 (no such file or digest), 400 (bad request), 429 (too many at once)."""
PROP_PART = "part"
"""metadata/target: this message's part number, from 0."""
PROP_PARTS = "parts"
"""metadata/target: how many parts the file has."""
PROP_BLOCK = "block"
"""blocks: the block's index."""
PROP_ERROR = "error"
"""For a status other than 200: why."""
PART_BYTES = 64 * 1024
"""Metadata and small targets are answered in parts of this many bytes."""


def archive_target(name: str, version: int) -> str:
    """The TUF target path of a release archive."""
    return f"bundles/{name}/{version}.tar"


def index_target(name: str, version: int) -> str:
    """The TUF target path of a release archive's block index."""
    return f"bundles/{name}/{version}.blocks.json"


__all__ = [
    "MAX_BLOCKS_PER_REQUEST",
    "MAX_BLOCK_BYTES",
    "PART_BYTES",
    "PROP_BLOCK",
    "PROP_ERROR",
    "PROP_PART",
    "PROP_PARTS",
    "PROP_STATUS",
    "SCHEMA",
    "Activation",
    "Block",
    "BlockIndex",
    "Capabilities",
    "Desired",
    "ReleaseCustom",
    "RepoRequest",
    "TargetRef",
    "archive_target",
    "index_target",
]
