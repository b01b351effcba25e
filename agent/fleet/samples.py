"""Pulling a device's hard examples (`edge-fleet samples list|pull`): sample-list, sample-chunk, sample-confirm.

Invariants:
- one reply topic per session (`devices/{device}/reply/{token}`, subscribed once), one correlation per request; a
  reply counts only with its request's correlation, so a late answer to an earlier try is ignored;
- requests are paced under the device's command rate limit (60 a minute, bursts of 10 by default: the device drops
  the excess without a reply), and a request left unanswered is sent again, `TRIES` times in all;
- every chunk is checked against the SHA-256 in its reply and each whole sample against the SHA-256 the device
  recorded when it kept it; a bad chunk is fetched once more, a bad sample once more from the start, then reported
  (`SampleCorrupt`): it is not written and not confirmed, so the device keeps it;
- a sample is written (data, then its metadata line, each atomically) before it is confirmed, and confirmed only
  after that: a crash between the two leaves a sample on both sides, which a re-run finds on disk with the right
  hash, skips, and confirms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.fleet.client import FleetClient
from agent.fleet.errors import CommandFailed, FleetError, NoReply
from agent.fleet.layout import FleetTopics
from agent.fleet.options import new_token
from agent.fleet.pacing import TokenBucket
from agent.fsutil import write_atomic
from agent.link.wire import (
    MAX_SAMPLE_CHUNK,
    MAX_SAMPLE_CONFIRM,
    MAX_SAMPLE_LIST,
    CommandReply,
    CommandRequest,
    PayloadError,
    SampleChunkArgs,
    SampleChunkReply,
    SampleConfirmArgs,
    SampleConfirmation,
    SampleListArgs,
    SampleListReply,
    SampleMeta,
    describe_validation_error,
    parse,
)

RATE_PER_S = 0.8
"""Requests per second: under the device's default 60 a minute."""
BURST = 5.0
TRIES = 3


class SampleCorrupt(FleetError):
    """A chunk or a whole sample did not match its hash (or its reply was malformed), even when fetched again."""


@dataclass
class Listing:
    """A device's samples, oldest first, with its store's figures."""

    samples: list[SampleMeta]
    count: int
    bytes: int
    evicted: int
    unreadable: list[str]


@dataclass
class PullReport:
    """What a pull did: samples fetched, found already here, failed (id -> reason), and the confirmations."""

    pulled: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    confirmed: list[str] = field(default_factory=list)
    not_confirmed: dict[str, str] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "pulled": self.pulled,
            "present": self.present,
            "failed": self.failed,
            "confirmed": self.confirmed,
            "not_confirmed": self.not_confirmed,
            "unreadable": self.unreadable,
        }


def check_chunk(data: dict[str, Any], sample_id: str, offset: int, length: int, size: int) -> bytes:
    """The bytes of a sample-chunk reply once they match its hash and the request; SampleCorrupt if not (pure)."""
    try:
        reply = SampleChunkReply.model_validate(data)
    except ValidationError as problem:
        raise SampleCorrupt(f"malformed chunk reply: {describe_validation_error(problem)}") from None
    if (reply.id, reply.offset, reply.size) != (sample_id, offset, size):
        raise SampleCorrupt(
            f"chunk reply for {reply.id} at {reply.offset} of {reply.size} bytes, asked {sample_id} at {offset} of {size}"
        )
    try:
        chunk = base64.b64decode(reply.data_base64, validate=True)
    except (binascii.Error, ValueError) as problem:
        raise SampleCorrupt(f"chunk of {sample_id} at {offset}: not base64: {problem}") from None
    if hashlib.sha256(chunk).hexdigest() != reply.sha256:
        raise SampleCorrupt(f"chunk of {sample_id} at {offset}: SHA-256 mismatch (corrupted in transit)")
    if not 0 < len(chunk) <= length:
        raise SampleCorrupt(f"chunk of {sample_id} at {offset}: {len(chunk)} bytes, asked for {length}")
    return chunk


def file_sha256(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


class DeviceSamples:
    """One device's samples over one operator connection (see the module docstring)."""

    def __init__(
        self,
        client: FleetClient,
        topics: FleetTopics,
        device: str,
        timeout_s: float,
        notice: Callable[[str], None],
        rate_per_s: float | None = RATE_PER_S,
    ) -> None:
        self._client = client
        self._topics = topics
        self.device = device
        self._timeout_s = timeout_s
        self._notice = notice
        self._token = new_token()
        self._reply_topic = topics.reply(device, self._token)
        self._subscribed = False
        self._calls = 0
        self._bucket = TokenBucket(rate_per_s, time.monotonic(), burst=BURST)

    def call(self, name: str, args: BaseModel) -> dict[str, Any]:
        """Sends one command and returns its ok reply's data; CommandFailed, or NoReply after `TRIES` tries."""
        if not self._subscribed:
            self._client.subscribe([self._reply_topic])
            self._subscribed = True
        for attempt in range(1, TRIES + 1):
            self._pace()
            self._calls += 1
            correlation = f"{self._token}-{self._calls}"
            request = CommandRequest(id=correlation, args=args.model_dump(mode="json", exclude_none=True))
            self._client.publish(
                self._topics.device(self.device).cmd(name),
                request.to_bytes(),
                response_topic=self._reply_topic,
                correlation=correlation.encode(),
            )
            reply = self._wait(correlation)
            if reply is not None:
                if reply.status == "error":
                    raise CommandFailed(reply)
                return dict(reply.data)
            if attempt < TRIES:
                self._notice(
                    f"no reply from {self.device} to {name} within {self._timeout_s:g} s; asking again"
                )
        raise NoReply(
            f"no reply from {self.device} to {name} after {TRIES} tries of {self._timeout_s:g} s "
            "(offline, busy, or an agent without the sample commands?)"
        )

    def listing(self) -> Listing:
        """Every sample the device holds, page by page."""
        samples: list[SampleMeta] = []
        unreadable: list[str] = []
        after: str | None = None
        while True:
            data = self.call("sample-list", SampleListArgs(after=after, limit=MAX_SAMPLE_LIST))
            try:
                page = SampleListReply.model_validate(data)
            except ValidationError as problem:
                raise FleetError(
                    f"{self.device} sent a malformed sample list: {describe_validation_error(problem)}"
                ) from None
            samples.extend(page.samples)
            unreadable.extend(page.unreadable)
            if not page.more or not page.samples:
                return Listing(samples, page.count, page.bytes, page.evicted, unreadable)
            after = page.samples[-1].id

    def fetch(self, meta: SampleMeta) -> bytes:
        """The sample's data, every chunk and the whole checked; fetched again once, then SampleCorrupt."""
        for attempt in (1, 2):
            parts: list[bytes] = []
            offset = 0
            while offset < meta.size:
                chunk = self._chunk(meta, offset, min(MAX_SAMPLE_CHUNK, meta.size - offset))
                parts.append(chunk)
                offset += len(chunk)
            data = b"".join(parts)
            if hashlib.sha256(data).hexdigest() == meta.sha256:
                return data
            if attempt == 1:
                self._notice(f"{meta.id}: SHA-256 of the whole sample does not match; fetching it again")
        raise SampleCorrupt(
            f"{meta.id}: SHA-256 mismatch even when fetched again (damaged on the device?); kept there, not confirmed"
        )

    def confirm(self, held: list[SampleMeta]) -> dict[str, Any]:
        """Tells the device these samples are safe here (it deletes each whose hash matches); its answer."""
        merged: dict[str, Any] = {"confirmed": [], "unknown": [], "mismatched": [], "failed": {}}
        for start in range(0, len(held), MAX_SAMPLE_CONFIRM):
            batch = [
                SampleConfirmation(id=m.id, sha256=m.sha256) for m in held[start : start + MAX_SAMPLE_CONFIRM]
            ]
            answer = self.call("sample-confirm", SampleConfirmArgs(samples=batch))
            for key in ("confirmed", "unknown", "mismatched"):
                merged[key].extend(str(value) for value in answer.get(key, []) if isinstance(value, str))
            failed = answer.get("failed")
            if isinstance(failed, dict):
                merged["failed"].update({str(k): str(v) for k, v in failed.items()})
        return merged

    def _chunk(self, meta: SampleMeta, offset: int, length: int) -> bytes:
        problem: SampleCorrupt | None = None
        for _ in (1, 2):
            data = self.call("sample-chunk", SampleChunkArgs(id=meta.id, offset=offset, length=length))
            try:
                return check_chunk(data, meta.id, offset, length, meta.size)
            except SampleCorrupt as bad:
                problem = bad
                self._notice(f"{bad}; fetching the chunk again")
        assert problem is not None
        raise problem

    def _pace(self) -> None:
        while not self._bucket.ready(time.monotonic()):
            self._client.poll(min(0.5, self._bucket.wait_s(time.monotonic())))
        self._bucket.spend()

    def _wait(self, correlation: str) -> CommandReply | None:
        stop_at = time.monotonic() + self._timeout_s
        for message in self._client.messages(stop_at, tick_s=0.5):
            if message is None or message.topic != self._reply_topic:
                continue
            try:
                reply = parse(CommandReply, message.payload)
            except PayloadError:
                continue
            ours = (
                message.correlation == correlation.encode()
                if message.correlation is not None
                else reply.correlation == correlation
            )
            if ours:
                return reply
        return None


def pull(samples: DeviceSamples, folder: Path, notice: Callable[[str], None]) -> PullReport:
    """Fetches every sample into `folder` (data file and metadata line), then confirms what is safely here."""
    report = PullReport()
    listing = samples.listing()
    report.unreadable = listing.unreadable
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise FleetError(f"cannot create {folder}: {problem.strerror or problem}") from None
    held: list[SampleMeta] = []
    for meta in listing.samples:
        data_path = folder / meta.file_name
        meta_path = folder / f"{meta.id}.json"
        line = meta.to_bytes() + b"\n"
        if file_sha256(data_path) == meta.sha256 and _same(meta_path, line):
            report.present.append(meta.id)
            held.append(meta)
            continue
        try:
            data = samples.fetch(meta)
        except SampleCorrupt as problem:
            report.failed[meta.id] = str(problem)
            notice(str(problem))
            continue
        try:
            write_atomic(data_path, data, mode=0o644)
            write_atomic(meta_path, line, mode=0o644)
        except OSError as problem:
            raise FleetError(f"cannot write {data_path}: {problem.strerror or problem}") from None
        report.pulled.append(meta.id)
        held.append(meta)
    if held:
        answer = samples.confirm(held)
        report.confirmed = list(answer["confirmed"])
        report.not_confirmed = {sample_id: "gone already" for sample_id in answer["unknown"]}
        report.not_confirmed |= {
            sample_id: "hash differs on the device" for sample_id in answer["mismatched"]
        }
        report.not_confirmed |= dict(answer["failed"])
    return report


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


__all__ = ["DeviceSamples", "Listing", "PullReport", "SampleCorrupt", "check_chunk", "file_sha256", "pull"]
