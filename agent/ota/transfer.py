"""The block transfer: an archive's missing blocks, fetched over the repository port into its partial file.

Invariants:
- at most `window_blocks` blocks are asked for and not yet received (AWS IoT Core: 100 unacknowledged); requests of
  `request_blocks` go out only as earlier blocks arrive or are given up, so the receiver paces the sender and no
  broker queue overflows;
- every block is checked on arrival (its index was asked in that request, its size and SHA-256 are those of the
  TUF-verified block index); anything else is dropped, and a dropped or missing block is asked again after a backoff
  (`agent.backoff.Backoff`), at most `max_tries` times, then the transfer fails with the block named;
- each request has a deadline (`request_timeout_s`): a repository that trickles or goes silent costs at most that
  before its blocks are asked again;
- every payload byte received counts against the release's data budget (kept in the partial file's bitmap, so it
  survives restarts); a request that would overspend it is not sent;
- blocks already in the partial file are not asked (resume); blocks whose hash is in an installed archive are copied
  from disk; blocks of equal content within the archive are asked once.
Single-threaded: the caller's thread runs `run()`; `stop` (a threading.Event) interrupts it between messages.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.backoff import Backoff, BackoffConfig
from agent.errors import LinkError
from agent.ota.errors import Interrupted, TransferFailed
from agent.ota.partial import PartialFile
from agent.ota.port import Message, RepoPort, close_quietly
from agent.ota.reuse import ReuseIndex
from agent.release.formats import MAX_BLOCKS_PER_REQUEST, PROP_BLOCK, PROP_ERROR, PROP_STATUS, RepoRequest


@dataclass(frozen=True)
class TransferSettings:
    """How a transfer paces itself, when it gives up, and what it may spend."""

    budget_bytes: int
    window_blocks: int = MAX_BLOCKS_PER_REQUEST
    request_blocks: int = 10
    request_timeout_s: float = 30.0
    max_tries: int = 8
    retry: BackoffConfig = field(default_factory=BackoffConfig)

    def __post_init__(self) -> None:
        if not 1 <= self.request_blocks <= self.window_blocks <= MAX_BLOCKS_PER_REQUEST:
            raise ValueError("need 1 <= request_blocks <= window_blocks <= 100")


@dataclass(frozen=True)
class TransferProgress:
    """Where a transfer stands: archive bytes in the part file, and how they got there."""

    done_bytes: int
    total_bytes: int
    fetched_bytes: int
    reused_bytes: int

    @property
    def percent(self) -> float:
        """Share of the archive in the part file, 0 to 100."""
        return 100.0 if self.total_bytes == 0 else 100.0 * self.done_bytes / self.total_bytes


@dataclass
class TransferReport:
    """What a transfer did; `fetched_bytes` counts every payload byte received in this run, dropped ones too."""

    archive_length: int
    blocks: int
    resumed_blocks: int = 0
    reused_blocks: int = 0
    reused_bytes: int = 0
    fetched_blocks: int = 0
    fetched_bytes: int = 0
    dropped_blocks: int = 0
    requests: int = 0
    budget_spent: int = 0
    """Bytes fetched for this archive over every run so far (what the budget counts)."""


@dataclass
class _Batch:
    messages: Iterator[Message]
    waiting: set[int]
    deadline: float


class BlockTransfer:
    """Fills one partial file with its archive's blocks: local copies first, then the repository."""

    def __init__(
        self,
        port: RepoPort,
        partial: PartialFile,
        reuse: ReuseIndex,
        settings: TransferSettings,
        *,
        progress: Callable[[TransferProgress], None] | None = None,
        stop: threading.Event | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._port, self._partial, self._reuse, self._settings = port, partial, reuse, settings
        self._index = partial.index
        self._progress = progress
        self._stop = stop
        self._monotonic = monotonic
        self._backoff = Backoff(settings.retry, rng)
        self._tries: dict[int, int] = {}
        self._groups: dict[str, list[int]] = {}
        self._again: list[int] = []
        self.report = TransferReport(
            archive_length=self._index.archive_length,
            blocks=len(self._index.blocks),
            resumed_blocks=partial.resumed_blocks,
        )

    def run(self) -> TransferReport:
        """Gets every missing block; raises TransferFailed (gave up) or Interrupted (asked to stop)."""
        try:
            self._copy_local()
            self._fetch()
            self._partial.checkpoint()
        finally:
            self.report.budget_spent = self._partial.fetched_bytes
        return self.report

    def _copy_local(self) -> None:
        for i in self._partial.missing():
            data = self._reuse.read(self._index.blocks[i])
            if data is not None:
                self._partial.write(i, data)
                self.report.reused_blocks += 1
                self.report.reused_bytes += len(data)
        if self.report.reused_blocks:
            self._notify()

    def _fetch(self) -> None:
        pending: deque[int] = deque()
        for i in self._partial.missing():
            group = self._groups.setdefault(self._index.blocks[i].sha256, [])
            group.append(i)
            if len(group) == 1:
                pending.append(i)
        retry: list[int] = []
        retry_at = 0.0
        inflight: deque[_Batch] = deque()
        try:
            while pending or retry or inflight:
                self._check_stop()
                now = self._monotonic()
                if retry and now >= retry_at:
                    pending.extend(sorted(retry))
                    retry.clear()
                outstanding = sum(len(batch.waiting) for batch in inflight)
                while pending and outstanding < self._settings.window_blocks:
                    size = min(self._settings.request_blocks, self._settings.window_blocks - outstanding)
                    blocks = [pending.popleft() for _ in range(min(size, len(pending)))]
                    inflight.append(self._send(blocks))
                    outstanding += len(blocks)
                if not inflight:
                    self._wait(retry_at - now)
                    continue
                over = self._receive(inflight[0])
                if over or not inflight[0].waiting:
                    batch = inflight.popleft()
                    close_quietly(batch.messages)
                    self._again.extend(batch.waiting)
                    if inflight:  # its deadline runs from when it is read, so buffered blocks are not lost
                        head = inflight[0]
                        head.deadline = max(
                            head.deadline, self._monotonic() + self._settings.request_timeout_s
                        )
                if self._again:
                    if not retry:
                        retry_at = self._monotonic() + self._backoff.next_delay()
                    retry.extend(self._again)
                    self._again.clear()
        finally:
            for batch in inflight:
                close_quietly(batch.messages)

    def _send(self, blocks: list[int]) -> _Batch:
        spend = sum(self._index.blocks[i].size for i in blocks)
        if self._partial.fetched_bytes + spend > self._settings.budget_bytes:
            raise TransferFailed(
                "budget",
                f"the data budget of {self._settings.budget_bytes} bytes for this release is spent "
                f"({self._partial.fetched_bytes} fetched)",
                retry=False,
            )
        for i in blocks:
            tries = self._tries.get(i, 0)
            if tries >= self._settings.max_tries:
                raise TransferFailed(
                    "block-missing", f"block {i} is still missing or bad after {tries} requests"
                )
            self._tries[i] = tries + 1
        request = RepoRequest(kind="blocks", digest=self._index.archive_sha256, blocks=tuple(blocks))
        try:
            messages = self._port.request(request, self._settings.request_timeout_s)
        except (LinkError, OSError) as problem:
            raise TransferFailed("link", f"the repository cannot be reached: {problem}") from problem
        self.report.requests += 1
        return _Batch(messages, set(blocks), self._monotonic() + self._settings.request_timeout_s)

    def _receive(self, batch: _Batch) -> bool:
        """Handles the next message of `batch`; True when the batch is over (its waiting blocks are asked again)."""
        try:
            props, payload = next(batch.messages)
        except (StopIteration, TimeoutError):
            return True
        except (LinkError, OSError) as problem:
            raise TransferFailed("link", f"the link failed mid-transfer: {problem}") from problem
        self._partial.fetched_bytes += len(payload)
        self.report.fetched_bytes += len(payload)
        status = props.get(PROP_STATUS, "")
        if status != "200":
            error = str(props.get(PROP_ERROR, "") or "no reason given")[:200]
            if status == "404":
                raise TransferFailed(
                    "not-in-repository", f"the repository does not have the archive: {error}"
                )
            return True  # 429 (too many) and the like: back off, then ask again
        block = props.get(PROP_BLOCK, "")
        index = int(block) if block.isdigit() else -1
        if index not in batch.waiting:
            self._drop()
        elif not self._valid(index, payload):
            self._drop()
            batch.waiting.discard(index)
            self._again.append(index)
        else:
            batch.waiting.discard(index)
            for i in self._groups[self._index.blocks[index].sha256]:
                self._partial.write(i, payload)
            self.report.fetched_blocks += 1
            self._backoff.reset()
            self._notify()
        return self._monotonic() > batch.deadline

    def _valid(self, index: int, payload: bytes) -> bool:
        block = self._index.blocks[index]
        return len(payload) == block.size and hashlib.sha256(payload).hexdigest() == block.sha256

    def _drop(self) -> None:
        self.report.dropped_blocks += 1
        if self._partial.fetched_bytes > self._settings.budget_bytes:
            raise TransferFailed(
                "budget",
                f"the data budget of {self._settings.budget_bytes} bytes for this release is spent "
                f"({self._partial.fetched_bytes} fetched, mostly on blocks that were dropped)",
                retry=False,
            )

    def _notify(self) -> None:
        if self._progress is not None:
            self._progress(
                TransferProgress(
                    done_bytes=self._partial.present_bytes,
                    total_bytes=self._index.archive_length,
                    fetched_bytes=self._partial.fetched_bytes,
                    reused_bytes=self.report.reused_bytes,
                )
            )

    def _check_stop(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted("the transfer was asked to stop; it resumes from the partial file")

    def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._stop is not None:
            self._stop.wait(seconds)
        else:
            time.sleep(seconds)


__all__ = ["BlockTransfer", "TransferProgress", "TransferReport", "TransferSettings"]
