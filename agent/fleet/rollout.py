"""`edge-fleet rollout`'s driver: a staged rollout of one release to one group, wave after wave, over MQTT.

The driver reads every device's retained status (`devices/+/status`: online/offline, the model in service, the
update's state, verdict and figures), sets the desired state (retained `devices/{device}/desired`) of each wave's
devices, and judges the wave with `agent.fleet.rollout_policy`. An abort sets the desired state of every device the
rollout updated back to the release it ran, and sends each the `rollback` command naming the aborted version; a
completed rollout sets the group's desired state and clears the per-device ones it set.

Invariants:
- The rollout's record is saved (atomically, `{state_dir}/{id}.json`) before each act and after each decision, and
  retained on `{prefix}rollouts/{id}`: a restarted operator tool resumes from it (`rollout resume`), and any operator
  can read it (`rollout status`).
- One driver at a time, whatever the client ids: the retained record carries an owner (a random token), an epoch and
  a heartbeat; a driver refuses a rollout whose owner's heartbeat is fresh, takes over a stale one with a higher
  epoch, and stops (exit 2) as soon as it sees a record of a higher epoch, or of the same epoch and a higher token.
- Pause and abort from another terminal go through `{prefix}rollouts/{id}/control`; with no live driver, the command
  does the act itself.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.fleet.client import ConnectionLost, FleetClient
from agent.fleet.errors import EXIT_OK, FleetError, UsageError
from agent.fleet.layout import FleetTopics
from agent.fleet.rollout_policy import (
    STANDINGS,
    Judgement,
    Policy,
    Standing,
    figures_of,
    judge,
    parse_conditions,
    plan,
    standing,
)
from agent.fsutil import write_atomic
from agent.link.wire import (
    CommandReply,
    CommandRequest,
    InboundMessage,
    PayloadError,
    Status,
    parse,
)
from agent.release.formats import Desired

EXIT_ABORTED = 3
EXIT_PAUSED = 4
EXIT_TAKEN = 2
DISCOVER_S = 2.0
"""Seconds to collect the retained statuses (and the rollout's retained record) before deciding anything."""
HEARTBEAT_S = 5.0
OWNER_STALE_S = 30.0
"""An owner whose heartbeat is older than this is gone: another operator may take the rollout over."""
ROLLBACK_REPLY_S = 10.0
TICK_S = 1.0
RolloutState = Literal["running", "paused", "completed", "aborted"]
WaveState = Literal["pending", "running", "soaking", "passed", "held", "aborted"]


class Owner(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str
    epoch: int = Field(ge=0)
    host: str
    pid: int
    heartbeat: float | None = Field(
        None, description="Wall-clock time of the last heartbeat; None: released."
    )


class Release(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)


class DeviceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    standing: Standing = "pending"
    wave: int | None = None
    before: Release | None = Field(
        None, description="The release it served when its wave began (an abort's target)."
    )
    update: str | None = Field(
        None, description="The device's update state for this release, as it reports it."
    )
    code: str | None = None
    reason: str | None = None
    figures: dict[str, float | int | bool | None] = Field(default_factory=dict)
    offline_since: float | None = None
    rollback: str | None = Field(None, description="What became of the abort's rollback command.")


class WaveRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    share: float
    devices: list[str]
    state: WaveState = "pending"
    started: float | None = None
    succeeded: float | None = None
    decided: float | None = None
    judgement: dict[str, Any] | None = None


class RolloutRecord(BaseModel):
    """The whole rollout: on disk, retained, and what `rollout status --json` prints."""

    model_config = ConfigDict(extra="forbid")

    schema_: int = Field(1, alias="schema")
    id: str
    release: Release
    group: str
    fleet: str
    policy: dict[str, Any]
    state: RolloutState = "running"
    reason: str | None = None
    created: float
    updated: float
    wave: int = 0
    waves: list[WaveRecord]
    devices: dict[str, DeviceRecord]
    skipped: list[str] = Field(
        default_factory=list, description="Members offline when the rollout was planned."
    )
    desired_set: list[str] = Field(default_factory=list)
    owner: Owner | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    def note(self, message: str, **figures: Any) -> None:
        self.history.append({"time": round(time.time(), 3), "message": message, **figures})
        del self.history[:-200]


def policy_of(record: RolloutRecord) -> Policy:
    """The policy the record was started with."""
    data = record.policy
    return Policy(
        waves=tuple(share / 100 for share in data["waves"]),
        min_devices=int(data["min_devices"]),
        success=float(data["success"]),
        abort_failures=float(data["abort_failures"]),
        abort_offline=float(data["abort_offline"]),
        abort_on=parse_conditions(",".join(data["abort_on"])),
        soak_s=float(data["soak_s"]),
        wave_timeout_s=float(data["wave_timeout_s"]),
        offline_grace_s=float(data["offline_grace_s"]),
    )


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-fleet" / "rollouts"


class RecordStore:
    """The rollouts' records on this machine: `{dir}/{id}.json`, each replaced atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, rollout_id: str) -> Path:
        return self.folder / f"{rollout_id}.json"

    def load(self, rollout_id: str) -> RolloutRecord | None:
        path = self.path(rollout_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as problem:
            raise FleetError(f"cannot read {path}: {problem.strerror or problem}") from None
        return read_record(data, str(path))

    def save(self, record: RolloutRecord) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(record.id), record.to_bytes(), mode=0o644)
        except OSError as problem:
            raise FleetError(
                f"cannot save the rollout to {self.folder}: {problem.strerror or problem}"
            ) from None

    def ids(self) -> list[str]:
        try:
            return sorted(path.stem for path in self.folder.glob("*.json"))
        except OSError:
            return []


def read_record(data: bytes, where: str) -> RolloutRecord:
    try:
        return RolloutRecord.model_validate_json(data)
    except ValidationError as problem:
        raise FleetError(
            f"{where}: not a rollout record: {problem.errors(include_url=False)[0]['msg']}"
        ) from None


def rollout_topic(topics: FleetTopics, rollout_id: str) -> str:
    return f"{topics.prefix}rollouts/{rollout_id}"


def control_topic(topics: FleetTopics, rollout_id: str) -> str:
    return f"{topics.prefix}rollouts/{rollout_id}/control"


def fold_status(topics: FleetTopics, statuses: dict[str, Status], message: InboundMessage) -> Status | None:
    """Folds a device's status message into `statuses`; returns it, or None when it is not a status, does not parse,
    or is stale (an older birth, or online after offline within one birth, as the fleet view judges it)."""
    parsed = topics.parse(message.topic)
    if parsed is None or parsed.kind != "status" or parsed.device is None or not message.payload.strip():
        return None
    try:
        status = parse(Status, message.payload)
    except PayloadError:
        return None
    if status.device != parsed.device:
        return None
    old = statuses.get(status.device)
    if old is not None and (
        status.birth < old.birth
        or (status.birth == old.birth and old.state == "offline" and status.state == "online")
    ):
        return None
    statuses[status.device] = status
    return status


def new_record(
    rollout_id: str, release: Release, group: str, fleet: str, policy: Policy, statuses: dict[str, Status]
) -> RolloutRecord:
    """Plans a rollout over the group's members that are online now; raises FleetError when there are none."""
    members = sorted(device for device, status in statuses.items() if status.group == group)
    online = [device for device in members if statuses[device].state == "online"]
    if not online:
        known = f" (members seen: {', '.join(members)}, all offline)" if members else ""
        raise FleetError(f"no device of group {group!r} is online{known}: nothing to roll out to")
    waves = plan(rollout_id, online, policy)
    now = time.time()
    record = RolloutRecord(
        id=rollout_id,
        release=release,
        group=group,
        fleet=fleet,
        policy=policy.describe(),
        created=now,
        updated=now,
        waves=[
            WaveRecord(share=share, devices=devices)
            for share, devices in zip(_shares(policy, waves, len(online)), waves, strict=True)
        ],
        devices={device: DeviceRecord(wave=index) for index, wave in enumerate(waves) for device in wave},
        skipped=[device for device in members if device not in online],
    )
    record.note(f"planned {len(online)} devices in {len(waves)} waves", skipped=record.skipped)
    return record


def _shares(policy: Policy, waves: list[list[str]], total: int) -> list[float]:
    done, shares = 0, []
    for wave in waves:
        done += len(wave)
        shares.append(round(done / total, 4))
    return shares


@dataclass
class Driver:
    """Drives one rollout to its end (completed, aborted), or to a pause; `run` returns the exit status."""

    client: FleetClient
    topics: FleetTopics
    store: RecordStore
    record: RolloutRecord
    say: Callable[[str], None]
    statuses: dict[str, Status] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    _last_beat: float = 0.0
    _stop: int | None = None

    @property
    def policy(self) -> Policy:
        return policy_of(self.record)

    # -- ownership -------------------------------------------------------------------------------------------------

    def claim(self, retained: RolloutRecord | None, *, force: bool = False) -> None:
        """Takes the rollout over (higher epoch than any seen); Owned (exit 2) while another owner is alive, unless
        `force` (the operator knows the other driver is dead: `rollout resume --take-over`)."""
        epochs = [self.record.owner.epoch if self.record.owner else 0]
        if retained is not None and retained.owner is not None:
            owner = retained.owner
            alive = owner.heartbeat is not None and time.time() - owner.heartbeat < OWNER_STALE_S
            if alive and not force:
                raise Owned(
                    f"rollout {self.record.id} is driven by {owner.host} (pid {owner.pid}, epoch {owner.epoch}); "
                    f"its heartbeat is {time.time() - (owner.heartbeat or 0):.0f} s old: pause or abort it, or "
                    "`rollout resume --take-over` if that driver is dead"
                )
            epochs.append(owner.epoch)
            if retained.updated > self.record.updated:
                self.record = retained.model_copy(update={"owner": None})
        self.record.owner = Owner(
            token=self.token,
            epoch=max(epochs) + 1,
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat=time.time(),
        )
        self.save()

    def on_record(self, message: InboundMessage) -> None:
        """A retained record from the broker: someone else's epoch above ours means we were taken over."""
        if not message.payload.strip() or self.record.owner is None:
            return
        try:
            other = read_record(message.payload, message.topic)
        except FleetError:
            return
        mine, theirs = self.record.owner, other.owner
        if theirs is None or theirs.token == mine.token:
            return
        if (theirs.epoch, theirs.token) > (mine.epoch, mine.token):
            self.say(
                f"rollout {self.record.id} taken over by {theirs.host} (pid {theirs.pid}, epoch {theirs.epoch})"
            )
            self._stop = EXIT_TAKEN

    def save(self, *, released: bool = False) -> None:
        """Saves the record on disk, then retains it (with a fresh heartbeat, or released)."""
        self.record.updated = time.time()
        if self.record.owner is not None and self.record.owner.token == self.token:
            self.record.owner.heartbeat = None if released else self.record.updated
        self.store.save(self.record)
        self.publish(rollout_topic(self.topics, self.record.id), self.record.to_bytes(), retain=True)
        self._last_beat = time.monotonic()

    def publish(self, topic: str, payload: bytes, **how: Any) -> None:
        """Publishes and waits for the PUBACK; through a lost connection, reconnects (with backoff) and tries again."""
        while True:
            try:
                self.client.publish(topic, payload, **how)
                return
            except ConnectionLost as problem:
                self.say(f"{problem.reason}; reconnecting")
                self.client.reconnect(None, self.say)

    def subscribe(self, filters: list[str]) -> None:
        while True:
            try:
                self.client.subscribe(filters)
                return
            except ConnectionLost as problem:
                self.say(f"{problem.reason}; reconnecting")
                self.client.reconnect(None, self.say)

    # -- messages --------------------------------------------------------------------------------------------------

    def on_status(self, message: InboundMessage) -> bool:
        """A device's retained status; True when a device of the rollout changed standing."""
        status = fold_status(self.topics, self.statuses, message)
        if status is None:
            return False
        device = self.record.devices.get(status.device)
        if device is None or device.wave is None or device.wave > self.record.wave:
            return False
        return self._refresh(status.device, device, status)

    def _refresh(self, name: str, device: DeviceRecord, status: Status) -> bool:
        release = self.record.release
        now_standing = standing(status, release.name, release.version)
        update = status.update
        about = update is not None and update.name == release.name and update.version == release.version
        changed = now_standing != device.standing
        device.standing = now_standing
        if now_standing == "offline":
            device.offline_since = device.offline_since or status.time or time.time()
        else:
            device.offline_since = None
        if about and update is not None:
            device.update, device.reason = update.state, update.reason
            device.figures = figures_of(status, release.name, release.version) or device.figures
        if changed:
            self.say(
                f"{name}: {now_standing}"
                + (f" ({device.reason})" if device.reason and now_standing == "failed" else "")
            )
        return changed

    def on_control(self, message: InboundMessage) -> None:
        try:
            data = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        action, reason = data.get("action"), str(data.get("reason") or "by the operator")[:200]
        if action == "pause" and self.record.state == "running":
            self.pause(f"paused: {reason}")
        elif action == "abort" and self.record.state in ("running", "paused"):
            self.abort(f"aborted by the operator: {reason}")

    # -- acts ------------------------------------------------------------------------------------------------------

    def start_wave(self) -> None:
        index = self.record.wave
        wave = self.record.waves[index]
        release = self.record.release
        payload = Desired(model=release.name, version=release.version).model_dump_json(by_alias=True).encode()
        for name in wave.devices:
            status = self.statuses.get(name)
            device = self.record.devices[name]
            if status is not None and status.model is not None and device.before is None:
                device.before = Release(name=status.model.name, version=status.model.version)
        wave.state, wave.started = "running", time.time()
        self.record.note(f"wave {index + 1}: {len(wave.devices)} devices", devices=wave.devices)
        self.save()  # the befores are on disk before any device is told
        for name in wave.devices:
            self.publish(self.topics.device(name).desired, payload, retain=True)
            if name not in self.record.desired_set:
                self.record.desired_set.append(name)
        self.say(
            f"wave {index + 1} of {len(self.record.waves)}: {', '.join(wave.devices)} -> {release.name} v{release.version}"
        )
        for name in wave.devices:
            status = self.statuses.get(name)
            if status is not None:
                self._refresh(name, self.record.devices[name], status)
        self.save()

    def touched(self) -> list[str]:
        return [name for wave in self.record.waves[: self.record.wave + 1] for name in wave.devices]

    def evaluate(self) -> None:
        """Judges the current wave and acts on the verdict."""
        if self.record.state != "running":
            return
        wave = self.record.waves[self.record.wave]
        if wave.state == "pending":
            self.start_wave()
        now = time.time()
        devices = self.record.devices
        touched = self.touched()
        judgement = judge(
            self.policy,
            wave.devices,
            touched,
            {name: devices[name].standing for name in touched},
            {name: devices[name].figures for name in touched},
            {name: now - (devices[name].offline_since or now) for name in touched},
            wave_age_s=now - (wave.started or now),
            soaked_s=None if wave.succeeded is None else now - wave.succeeded,
        )
        verdict = judgement.verdict
        old = wave.judgement
        wave.judgement = judgement.describe() | {"time": round(now, 3)}
        if verdict == "abort":
            self.abort("; ".join(judgement.reasons), judgement)
            return
        if verdict == "soak":
            if wave.succeeded is None:
                wave.succeeded, wave.state = now, "soaking"
                self.record.note(
                    f"wave {self.record.wave + 1} succeeded; soaking {self.policy.soak_s:g} s",
                    **judgement.counts,
                )
                self.say(judgement.reasons[0])
                self.save()
            return
        if (
            wave.succeeded is not None and verdict != "advance"
        ):  # no longer succeeding: the soak starts again later
            wave.succeeded, wave.state = None, "running"
        if verdict == "advance":
            self.advance(judgement)
        elif verdict == "hold":
            wave.state = "held"
            self.pause(f"held in wave {self.record.wave + 1}: " + "; ".join(judgement.reasons))
        elif old is None or old.get("counts") != wave.judgement.get("counts"):
            self.save()

    def advance(self, judgement: Judgement) -> None:
        wave = self.record.waves[self.record.wave]
        wave.state, wave.decided = "passed", time.time()
        self.record.note(f"wave {self.record.wave + 1} passed", **judgement.counts)
        self.say(f"wave {self.record.wave + 1} passed: {judgement.reasons[0]}")
        if self.record.wave + 1 < len(self.record.waves):
            self.record.wave += 1
            self.save()
            self.start_wave()
            return
        self.complete()

    def complete(self) -> None:
        release, layout = self.record.release, self.topics.device("x")
        payload = Desired(model=release.name, version=release.version).model_dump_json(by_alias=True).encode()
        self.publish(layout.group_desired(self.record.group), payload, retain=True)
        for name in self.record.desired_set:
            self.publish(self.topics.device(name).desired, b"", retain=True)  # the group's now applies
        self.record.desired_set = []
        self.record.state, self.record.reason = "completed", None
        self.record.note(f"completed: group {self.record.group} desires {release.name} v{release.version}")
        self.say(
            f"rollout {self.record.id} completed: group {self.record.group} now desires {release.name} v{release.version}"
        )
        self.save(released=True)
        self._stop = EXIT_OK

    def pause(self, reason: str) -> None:
        self.record.state, self.record.reason = "paused", reason
        self.record.note(reason)
        self.say(f"rollout {self.record.id} {reason}; `rollout resume {self.record.id}` goes on")
        self.save(released=True)
        self._stop = EXIT_PAUSED

    def abort(self, reason: str, judgement: Judgement | None = None) -> None:
        """Sets the desired state of every device the rollout updated back, sends each `rollback`, records it all."""
        release = self.record.release
        if self.record.waves and self.record.wave < len(self.record.waves):
            wave = self.record.waves[self.record.wave]
            wave.state, wave.decided = "aborted", time.time()
        self.record.state, self.record.reason = "aborted", reason
        self.record.note(f"aborting: {reason}", **(judgement.counts if judgement else {}))
        self.save()
        self.say(f"rollout {self.record.id} aborting: {reason}")
        tokens: dict[str, str] = {}
        for name in self.touched():
            device = self.record.devices[name]
            topic = self.topics.device(name).desired
            if device.before is not None and device.before != release:
                back = Desired(model=device.before.name, version=device.before.version)
                self.publish(topic, back.model_dump_json(by_alias=True).encode(), retain=True)
            else:
                self.publish(topic, b"", retain=True)
            token = secrets.token_hex(8)
            tokens[token] = name
            request = CommandRequest(
                id=token,
                args={"version": release.version, "reason": f"rollout {self.record.id} aborted"[:200]},
            )
            reply_topic = self.topics.reply(name, token)
            self.subscribe([reply_topic])
            self.publish(
                self.topics.device(name).cmd("rollback"),
                request.to_bytes(),
                response_topic=reply_topic,
                correlation=token.encode(),
            )
            device.rollback = "sent"
        self.record.desired_set = [name for name in self.record.desired_set if name not in self.touched()]
        stop_at = time.monotonic() + ROLLBACK_REPLY_S
        for message in self.client.messages(stop_at, tick_s=0.5):
            if message is None:
                if all(self.record.devices[name].rollback != "sent" for name in tokens.values()):
                    break
                continue
            replied = tokens.get(message.topic.rsplit("/", 1)[-1])
            if replied is None:
                self.on_status(message)
                continue
            try:
                reply = parse(CommandReply, message.payload)
            except PayloadError:
                continue
            self.record.devices[replied].rollback = (
                "rolled back" if reply.status == "ok" else f"not needed: {reply.reason or 'refused'}"
            )
        for name in tokens.values():
            if self.record.devices[name].rollback == "sent":
                self.record.devices[name].rollback = "no reply (offline?): its desired state puts it back"
        self.record.note(
            "aborted", rollback={name: self.record.devices[name].rollback for name in tokens.values()}
        )
        self.save(released=True)
        self._stop = EXIT_ABORTED

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Drives until the rollout completes, aborts, pauses or is taken over; returns the exit status."""
        if self.record.state != "running":
            raise UsageError(f"rollout {self.record.id} is {self.record.state}")
        for name, status in self.statuses.items():
            device = self.record.devices.get(name)
            if device is not None and device.wave is not None and device.wave <= self.record.wave:
                self._refresh(name, device, status)
        self.evaluate()
        mine = rollout_topic(self.topics, self.record.id)
        control = control_topic(self.topics, self.record.id)
        for message in self.client.messages(None, tick_s=TICK_S, notice=self.say):
            if self._stop is not None:
                break
            if message is not None:
                if message.topic == mine:
                    self.on_record(message)
                elif message.topic == control:
                    self.on_control(message)
                elif self.on_status(message):
                    self.evaluate()
            else:
                self.evaluate()
                if self._stop is None and time.monotonic() - self._last_beat >= HEARTBEAT_S:
                    self.save()
            if self._stop is not None:
                break
        return self._stop if self._stop is not None else EXIT_OK


class Owned(FleetError):
    """Another operator drives this rollout (its heartbeat is fresh), or took it over."""

    exit_status = EXIT_TAKEN


def counts_of(record: RolloutRecord, wave: WaveRecord) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(STANDINGS, 0)
    for name in wave.devices:
        counts[record.devices[name].standing] += 1
    return counts


__all__ = [
    "EXIT_ABORTED",
    "EXIT_PAUSED",
    "EXIT_TAKEN",
    "DeviceRecord",
    "Driver",
    "Owned",
    "RecordStore",
    "Release",
    "RolloutRecord",
    "WaveRecord",
    "control_topic",
    "counts_of",
    "default_state_dir",
    "fold_status",
    "new_record",
    "policy_of",
    "read_record",
    "rollout_topic",
]
