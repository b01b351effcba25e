"""Every JSON payload on the fleet link, as pydantic models with a `schema` version field.

The contract between the agent and the fleet side lives here: what the device publishes (Status, Telemetry, Event,
Result, CommandReply) and what it accepts (CommandRequest and the args model of every built-in command).

Invariants: every payload carries `"schema": SCHEMA` on the wire; inbound models forbid unknown keys and validate
strictly (a string is never taken for a number or a boolean), so a typo in an operator's request is an error reply,
not a silent no-op or a guess; `parse` turns any bad input (not JSON, not an object, wrong
types, a schema from the future) into a `PayloadError` with a one-line reason, never a traceback.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agent.events import EventType, Severity
from agent.link.errors import PayloadError
from agent.link.policy import ResultsPolicy

SCHEMA = 1
"""Version of every payload defined here; bumped on an incompatible change."""

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
StorageCondition = Literal["ok", "read-only", "full", "unavailable"]
"""Whether the outbox can store: ok; read-only (the state directory cannot be written); full (the disk is full: the
outbox's reserve is spent, lower classes are evicted for events, and what cannot be stored is held in memory);
unavailable (the database cannot be opened or used for another reason)."""


def _absent(value: object) -> bool:
    return value is None


def _absent_dict(value: object) -> bool:
    return not value


class Payload(BaseModel):
    """Base of every JSON payload: a `schema` version, unknown keys refused, `to_bytes` for the wire."""

    model_config = ConfigDict(
        extra="forbid", strict=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    schema_: int = Field(SCHEMA, alias="schema", ge=1, le=SCHEMA, description="Payload schema version.")

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON; numpy scalars become numbers, sets become lists, other odd values their str()."""
        return self.model_dump_json(by_alias=True, fallback=_json_fallback).encode("utf-8")


def _json_fallback(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


P = TypeVar("P", bound=BaseModel)


def parse(model: type[P], data: bytes | str) -> P:
    """Validates JSON `data` against `model`; raises PayloadError with a one-line reason."""
    try:
        return model.model_validate_json(data)
    except ValidationError as problem:
        raise PayloadError(describe_validation_error(problem)) from None
    except (ValueError, TypeError) as problem:  # undecodable bytes
        raise PayloadError(f"invalid JSON: {problem}") from None


def describe_validation_error(problem: ValidationError) -> str:
    """One line naming each bad field and what was expected."""
    parts = []
    for error in problem.errors(include_url=False)[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        if error["type"] == "json_invalid":
            parts.append(f"invalid JSON: {error['msg']}")
        else:
            parts.append(f"{where}: {error['msg']}")
    more = problem.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class ModelRef(BaseModel):
    """A model release: name and integer version."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="Model name.")
    version: int = Field(ge=0, description="Model version.")


class UpdateBrief(BaseModel):
    """Where a device's model update stands, for the retained status."""

    model_config = ConfigDict(extra="forbid", strict=True)

    state: str = Field(
        max_length=32,
        description="offered | refused | downloading | verifying | installed | failed | self-testing | shadow | "
        "activating | trial | committed | rejected | rolled-back",
    )
    name: str = Field(description="Model name of the release.")
    version: int = Field(ge=0, description="Model version of the release.")
    reason: str | None = Field(
        None, max_length=500, description="refused/failed/rejected/rolled-back: why, in one line."
    )
    verdict: Literal["pass", "fail", "inconclusive"] | None = Field(
        None,
        exclude_if=_absent,
        description="The last gate, shadow or trial verdict on the release (absent before the first).",
    )
    previous: ModelRef | None = Field(
        None,
        exclude_if=_absent,
        description="The release the device ran before this one (what a rollback returns to).",
    )
    figures: dict[str, float | int | bool | None] = Field(
        default_factory=dict,
        exclude_if=_absent_dict,
        description="The evidence behind the verdict: agreement, shadow_items, trial_items, latency_p95_ms, "
        "budget_ms, error_rate, low_confidence_share, drift, anomalies, crashes (absent when none).",
    )


class Status(Payload):
    """Retained on devices/{device}/status: online (birth) or offline (clean stop or last will)."""

    state: Literal["online", "offline"] = Field(description="online, or offline.")
    device: str = Field(description="Device id.")
    birth: int = Field(
        ge=0, description="Birth sequence number: grows with every connection, across restarts."
    )
    time: float = Field(
        description="Wall-clock time the status was made (Unix seconds; the clock may be unset)."
    )
    agent_version: str = Field(description="edge-agent version.")
    model: ModelRef | None = Field(None, description="Active model, if any.")
    group: str | None = Field(
        None, exclude_if=_absent, description="The device's group (whose desired state it follows)."
    )
    sources: dict[str, str] = Field(default_factory=dict, description="State of each source, by name.")
    boot_time: float | None = Field(None, description="When the agent process started (Unix seconds).")
    reason: str | None = Field(None, description="For offline: 'stopped' (clean stop) or 'lost' (last will).")
    storage: StorageCondition | None = Field(
        None,
        exclude_if=_absent,
        description="Only when the outbox cannot store normally: read-only | full | unavailable (absent when ok).",
    )
    storage_reason: str | None = Field(
        None,
        exclude_if=_absent,
        description="Why, and how much is held in memory meanwhile (absent when storage is ok).",
    )
    update: UpdateBrief | None = Field(
        None,
        exclude_if=_absent,
        description="The model update in progress or last decided: state and release (absent on a device that has "
        "never had one).",
    )


class Telemetry(Payload):
    """On devices/{device}/telemetry: one metrics snapshot."""

    device: str = Field(description="Device id.")
    time: float = Field(description="Wall-clock time of the snapshot (Unix seconds).")
    seq: int = Field(ge=0, description="Snapshot number since the agent started.")
    uptime_s: float = Field(ge=0, description="Seconds since the agent started.")
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="Rates, per-stage p50/p95/p99, frame age, drops, cpu, rss, temperature, throttling, disk free.",
    )
    link: dict[str, Any] = Field(
        default_factory=dict,
        description="The link's own state: connection, outbox depth, drops, storage condition, rows held in memory.",
    )


class Event(Payload):
    """On devices/{device}/events: something that happened, with the evidence for it."""

    id: str = Field(
        default_factory=lambda: uuid.uuid4().hex, description="Unique id (uuid4 hex): dedupe key."
    )
    type: EventType = Field(description="anomaly | drift | source | model | update | error")
    severity: Severity = Field("info", description="info | warning | error | critical")
    time: float = Field(default_factory=time.time, description="When it happened (Unix seconds).")
    device: str | None = Field(None, description="Device id (filled in by the link).")
    message: str = Field(description="One line for a person.")
    evidence: dict[str, Any] = Field(
        default_factory=dict, description="Numbers and names that back the message."
    )
    snapshot: str | None = Field(None, description="Reference to a saved input snapshot, if one was kept.")


class Result(Payload):
    """On devices/{device}/results: one decoded result admitted by the results policy."""

    seq: int = Field(ge=0, description="Sequence number of the input (frame or window).")
    time: float = Field(description="Capture time (Unix seconds).")
    model: ModelRef | None = Field(None, description="Model that made the result.")
    result: dict[str, Any] = Field(description="The decoded result (labels, detections, anomaly score...).")


class CommandRequest(Payload):
    """Body of a request on devices/{device}/cmd/{name}; an empty payload means no arguments."""

    id: str | None = Field(
        None,
        max_length=128,
        description="Request id echoed in the reply (for clients without correlation data).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Arguments, validated by the command's model."
    )


class CommandReply(Payload):
    """Answer to a command, on the request's response topic (with its correlation data) or cmd/{name}/reply."""

    command: str = Field(description="Command name.")
    status: Literal["ok", "error"] = Field(description="ok, or error.")
    reason: str | None = Field(None, description="Why it failed (status error).")
    data: dict[str, Any] = Field(default_factory=dict, description="What the command returns (status ok).")
    correlation: str | None = Field(
        None, description="The request's id, else its correlation data as text (UTF-8 or hex)."
    )
    time: float = Field(default_factory=time.time, description="When the reply was made (Unix seconds).")


class Args(BaseModel):
    """Base of command argument models: unknown keys and loose types refused (no "5" for 5, no 1 for true)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(Args):
    """A command that takes no arguments (ping, get-config, restart-pipeline)."""


class SetConfigArgs(Args):
    """set-config: a partial config tree merged into the running config."""

    patch: dict[str, Any] = Field(description="Keys to change, nested like the config file.")


class SnapshotArgs(Args):
    """snapshot: capture the current input."""

    max_bytes: int | None = Field(None, gt=0, description="Largest snapshot to return, bytes.")


class SetLogLevelArgs(Args):
    """set-log-level: change a logger's level at run time."""

    level: LogLevel = Field(description="DEBUG | INFO | WARNING | ERROR | CRITICAL")
    logger: str | None = Field(
        None, max_length=200, description="Logger name; null: the agent's root logger."
    )


SampleTrigger = Literal["drift", "anomaly", "low-confidence"]
"""Why a hard example was kept."""
SAMPLE_ID_PATTERN = r"^[0-9]{8}_[0-9]{8}T[0-9]{6}Z_(drift|anomaly|low-confidence)$"
"""A sample id: `{number:08d}_{UTC time}_{trigger}`, also the stem of its files on both sides (no path can hide in it)."""
SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_SAMPLE_CHUNK = 65_536
"""Largest `sample-chunk` read: 64 KiB, about 87 KiB of base64 in the reply, inside the design's 128 KiB per message."""
MAX_SAMPLE_LIST = 200
MAX_SAMPLE_CONFIRM = 100
SampleId = Annotated[str, StringConstraints(pattern=SAMPLE_ID_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]


class SampleMeta(Payload):
    """A hard example's metadata line: kept beside its data on the device, listed by `sample-list`, pulled with it."""

    id: SampleId = Field(description="Sample id: `{number:08d}_{UTC time}_{trigger}`.")
    time: float = Field(description="When it was kept (Unix seconds; the device clock may be unset).")
    trigger: SampleTrigger = Field(description="drift | anomaly | low-confidence")
    event_id: str | None = Field(
        None, max_length=64, description="The event behind it (drift, anomaly), if any."
    )
    model: ModelRef | None = Field(None, description="The model that made the result.")
    seq: int = Field(ge=0, description="The item's sequence number.")
    captured_at: float = Field(description="The item's capture time (Unix seconds).")
    kind: Literal["frame", "window"] = Field(
        description="frame (kept as JPEG) or window/tensor (kept as .npy)."
    )
    format: Literal["jpeg", "npy"] = Field(description="Format of the data file.")
    size: int = Field(ge=0, description="Bytes of the data file.")
    sha256: Sha256 = Field(description="SHA-256 of the data file, hex.")
    result: dict[str, Any] = Field(description="The decoded result for the item (`Result.to_dict()`).")

    @property
    def file_name(self) -> str:
        """The data file's name: `{id}.jpg` or `{id}.npy`."""
        return f"{self.id}.{'jpg' if self.format == 'jpeg' else 'npy'}"


class SampleListArgs(Args):
    """sample-list: the hard examples held, oldest first, a page at a time."""

    after: SampleId | None = Field(
        None, description="List only samples after this id (the previous page's last)."
    )
    limit: int = Field(100, ge=1, le=MAX_SAMPLE_LIST, description="Most samples in one reply.")


class SampleListReply(Args):
    """sample-list's reply data."""

    samples: list[SampleMeta] = Field(description="Metadata of each sample, oldest first.")
    more: bool = Field(description="Whether samples follow the last one listed.")
    count: int = Field(ge=0, description="Samples held in all.")
    bytes: int = Field(ge=0, description="Bytes they take, data and metadata.")
    evicted: int = Field(ge=0, description="Samples removed unconfirmed to keep the budget since start.")
    unreadable: list[str] = Field(
        default_factory=list, description="Ids on this page whose metadata cannot be read (a damaged file)."
    )


class SampleChunkArgs(Args):
    """sample-chunk: bytes of a sample's data file."""

    id: SampleId = Field(description="Sample id.")
    offset: int = Field(ge=0, description="First byte.")
    length: int = Field(ge=1, le=MAX_SAMPLE_CHUNK, description=f"Bytes to read, at most {MAX_SAMPLE_CHUNK}.")


class SampleChunkReply(Args):
    """sample-chunk's reply data: the bytes (base64: replies are JSON) and their hash."""

    id: SampleId = Field(description="Sample id.")
    offset: int = Field(ge=0, description="First byte.")
    size: int = Field(ge=0, description="Bytes of the whole data file.")
    sha256: Sha256 = Field(description="SHA-256 of this chunk's bytes, hex.")
    data_base64: str = Field(max_length=4 * (MAX_SAMPLE_CHUNK // 3 + 1), description="The chunk, base64.")


class SampleConfirmation(Args):
    """One sample the operator holds and has verified."""

    id: SampleId = Field(description="Sample id.")
    sha256: Sha256 = Field(description="SHA-256 of the data the operator verified; must match the device's.")


class SampleConfirmArgs(Args):
    """sample-confirm: the operator holds these samples, verified: the device may delete them."""

    samples: list[SampleConfirmation] = Field(
        min_length=1, max_length=MAX_SAMPLE_CONFIRM, description="Samples to delete, with their hashes."
    )


class ActivateArgs(Args):
    """activate: put an installed, verified version of the model in service (through the golden gate and a trial)."""

    version: int = Field(ge=1, description="The installed version to activate.")


class RollbackArgs(Args):
    """rollback: put the previous model back in service and mark the one it replaces rejected."""

    version: int | None = Field(
        None,
        ge=1,
        description="Only if this version is the one in service (a rollout's abort names the version it aborts).",
    )
    reason: str | None = Field(None, max_length=200, description="Why, for the event and the record.")


SetResultsPolicyArgs = ResultsPolicy
"""set-results-policy: the args are the policy itself."""

COMMAND_ARGS: dict[str, type[BaseModel]] = {
    "ping": NoArgs,
    "get-config": NoArgs,
    "set-config": SetConfigArgs,
    "snapshot": SnapshotArgs,
    "restart-pipeline": NoArgs,
    "set-log-level": SetLogLevelArgs,
    "set-results-policy": SetResultsPolicyArgs,
    "reset-baseline": NoArgs,
    "sample-list": SampleListArgs,
    "sample-chunk": SampleChunkArgs,
    "sample-confirm": SampleConfirmArgs,
    "models-list": NoArgs,
    "activate": ActivateArgs,
    "rollback": RollbackArgs,
}
"""The args model of every command the agent knows, by name: the contract in one place."""


__all__ = [
    "COMMAND_ARGS",
    "MAX_SAMPLE_CHUNK",
    "MAX_SAMPLE_CONFIRM",
    "MAX_SAMPLE_LIST",
    "SAMPLE_ID_PATTERN",
    "SCHEMA",
    "ActivateArgs",
    "Args",
    "CommandReply",
    "CommandRequest",
    "Event",
    "EventType",
    "LogLevel",
    "ModelRef",
    "NoArgs",
    "Payload",
    "Result",
    "RollbackArgs",
    "SampleChunkArgs",
    "SampleChunkReply",
    "SampleConfirmArgs",
    "SampleConfirmation",
    "SampleListArgs",
    "SampleListReply",
    "SampleMeta",
    "SampleTrigger",
    "SetConfigArgs",
    "SetLogLevelArgs",
    "SetResultsPolicyArgs",
    "Severity",
    "SnapshotArgs",
    "Status",
    "StorageCondition",
    "Telemetry",
    "UpdateBrief",
    "describe_validation_error",
    "parse",
]
