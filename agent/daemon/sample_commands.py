"""The hard-example commands: sample-list, sample-chunk, sample-confirm (`edge-fleet samples list|pull` speaks them).

Handlers run on the link's command thread and touch only the `SampleStore`. Invariants: every argument is checked by
its strict model before a file is opened (an id is `{number:08d}_{UTC time}_{trigger}`, so no path can hide in it;
a chunk is at most `MAX_SAMPLE_CHUNK` bytes, inside the design's 128 KiB per message once base64); an unknown id
or an offset past the end is an error reply; a sample is deleted only by `sample-confirm` naming the SHA-256 the
device recorded for it, so a forged or stale confirmation deletes nothing; confirming a sample already gone is
reported (`unknown`), not an error, so a confirmation whose reply was lost can be repeated.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import Any

from agent.link import (
    CommandError,
    PayloadError,
    SampleChunkArgs,
    SampleChunkReply,
    SampleConfirmArgs,
    SampleListArgs,
    SampleListReply,
    SampleMeta,
    parse,
)
from agent.link.commands import CommandRouter
from agent.pipeline.samples import SampleStore, StoredSample

log = logging.getLogger("agent.daemon.samples")

LIST_REPLY_BYTES = 64_000
"""Metadata bytes in one sample-list reply at most (one sample always fits, whatever its size)."""


class SampleCommands:
    """Registers and answers the hard-example commands over one store."""

    def __init__(self, store: SampleStore) -> None:
        self._store = store

    def register(self, router: CommandRouter) -> None:
        """Adds sample-list, sample-chunk and sample-confirm to the link's router."""
        router.register("sample-list", self.sample_list, SampleListArgs)
        router.register("sample-chunk", self.sample_chunk, SampleChunkArgs)
        router.register("sample-confirm", self.sample_confirm, SampleConfirmArgs)

    def sample_list(self, args: SampleListArgs) -> dict[str, Any]:
        """A page of the samples held, oldest first, each with its metadata line."""
        held = self._store.samples()
        after = int(args.after[:8]) if args.after is not None else 0
        page: list[SampleMeta] = []
        unreadable: list[str] = []
        used = 0
        more = False
        for sample in held:
            if int(sample.id[:8]) <= after:
                continue
            if len(page) >= args.limit or (page and used + sample.total - sample.size > LIST_REPLY_BYTES):
                more = True
                break
            meta = self._meta(sample)
            if meta is None:
                unreadable.append(sample.id)
                continue
            page.append(meta)
            used += sample.total - sample.size
        status = self._store.status()
        return SampleListReply(
            samples=page,
            more=more,
            count=len(held),
            bytes=status["bytes"],
            evicted=status["evicted"],
            unreadable=unreadable,
        ).model_dump(mode="json", by_alias=True)

    def sample_chunk(self, args: SampleChunkArgs) -> dict[str, Any]:
        """Up to `length` bytes of a sample's data from `offset`, base64, with their SHA-256."""
        sample = self._find(args.id)
        if args.offset > sample.size or (args.offset == sample.size and sample.size > 0):
            raise CommandError(
                f"offset {args.offset} is past the end of sample {args.id} ({sample.size} bytes)"
            )
        try:
            chunk = self._store.read_chunk(sample, args.offset, args.length)
        except OSError as problem:
            raise CommandError(f"cannot read sample {args.id}: {problem.strerror or problem}") from None
        return SampleChunkReply(
            id=args.id,
            offset=args.offset,
            size=sample.size,
            sha256=hashlib.sha256(chunk).hexdigest(),
            data_base64=base64.b64encode(chunk).decode("ascii"),
        ).model_dump(mode="json")

    def sample_confirm(self, args: SampleConfirmArgs) -> dict[str, Any]:
        """Deletes each sample whose recorded SHA-256 the operator names; reports the others."""
        confirmed: list[str] = []
        unknown: list[str] = []
        mismatched: list[str] = []
        failed: dict[str, str] = {}
        for claim in args.samples:
            sample = self._store.find(claim.id)
            if sample is None:
                unknown.append(claim.id)
                continue
            meta = self._meta(sample)
            if meta is None or meta.sha256 != claim.sha256:
                mismatched.append(claim.id)
                continue
            try:
                if self._store.remove(sample):
                    confirmed.append(claim.id)
                else:
                    unknown.append(claim.id)
            except OSError as problem:
                failed[claim.id] = problem.strerror or str(problem)
        if mismatched:
            log.warning("sample-confirm: %d sample(s) named with another hash kept", len(mismatched))
        return {"confirmed": confirmed, "unknown": unknown, "mismatched": mismatched, "failed": failed}

    def _find(self, sample_id: str) -> StoredSample:
        sample = self._store.find(sample_id)
        if sample is None:
            raise CommandError(f"no sample {sample_id} on this device (confirmed already, or evicted)")
        return sample

    def _meta(self, sample: StoredSample) -> SampleMeta | None:
        try:
            meta = parse(SampleMeta, self._store.read_meta(sample))
        except (OSError, PayloadError) as problem:
            log.warning("sample %s: unreadable metadata: %s", sample.id, problem)
            return None
        return meta if meta.id == sample.id else None


__all__ = ["LIST_REPLY_BYTES", "SampleCommands"]
