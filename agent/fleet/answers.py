"""What the block repository answers to a request: messages made one at a time (pure but for reading the store).

`answer(store, request)` is the whole request handling of `edge-fleet serve` (the protocol: `agent/fleet/serve.py`),
testable without MQTT. Invariants: an `Answer` reads nothing before its first message is asked for, and at most one
part (`PART_BYTES`) or one block (`MAX_BLOCK_BYTES`) per message; a refusal is exactly one message; a file answer
reads every part from the one file it opened (a file replaced meanwhile, such as `timestamp.json`, is sent whole, in
its old or its new version); only the store's own checks decide which file is opened (`Store.open`).
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydantic import ValidationError

from agent.fleet.store import Archive, Folder, Store, UnsafePath
from agent.release.formats import (
    MAX_BLOCKS_PER_REQUEST,
    PART_BYTES,
    PROP_BLOCK,
    PROP_ERROR,
    PROP_PART,
    PROP_PARTS,
    PROP_STATUS,
    RepoRequest,
)

log = logging.getLogger("agent.fleet.serve")

MAX_REQUEST_BYTES = 16 * 1024
"""A request is a few hundred bytes; a larger payload is refused before it is parsed."""
MAX_FILE_BYTES = MAX_BLOCKS_PER_REQUEST * PART_BYTES
"""A file answered in parts needs at most as many messages as one blocks request."""
MAX_ERROR_CHARS = 500


class BadRequest(Exception):
    """A request that cannot be answered as asked; `str()` is the `error` property of its 400."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One response message: its status, payload and the user properties the protocol puts on it."""

    status: int
    payload: bytes = b""
    part: int | None = None
    parts: int | None = None
    block: int | None = None
    error: str | None = None

    def properties(self) -> tuple[tuple[str, str], ...]:
        """The MQTT 5 user properties of this message."""
        props = [(PROP_STATUS, str(self.status))]
        for name, value in ((PROP_PART, self.part), (PROP_PARTS, self.parts), (PROP_BLOCK, self.block)):
            if value is not None:
                props.append((name, str(value)))
        if self.error is not None:
            props.append((PROP_ERROR, self.error[:MAX_ERROR_CHARS]))
        return tuple(props)


class Answer(Iterator[Reply]):
    """The messages that answer one request, produced one at a time (nothing is read before it is asked for)."""

    may_hold_file = False
    """True for answers that keep a file open between messages (the scheduler bounds how many at once)."""

    def __init__(self) -> None:
        self.done = False

    @property
    def holds_file(self) -> bool:
        """True while a file is open for the messages still to come."""
        return False

    def close(self) -> None:
        """Gives up the rest of the answer (closes what it holds)."""
        self.done = True

    def __iter__(self) -> Answer:
        return self


class _One(Answer):
    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self._reply = reply

    def __next__(self) -> Reply:
        if self.done:
            raise StopIteration
        self.done = True
        return self._reply


class _Parts(Answer):
    """A file in parts, all read from the one file opened for the first (a file replaced meanwhile is sent whole)."""

    may_hold_file = True

    def __init__(self, store: Store, folder: Folder, path: str) -> None:
        super().__init__()
        self._store, self._folder, self._path = store, folder, path
        self._file: BinaryIO | None = None
        self._part, self._parts = 0, 0

    @property
    def holds_file(self) -> bool:
        return self._file is not None

    def _open(self) -> Reply | None:
        """Opens the file; the one refusal that answers the request instead, if any."""
        try:
            handle = self._store.open(self._folder, self._path)
        except UnsafePath as problem:
            return Reply(400, error=str(problem))
        if handle is None:
            return Reply(404, error=f"no such file: {self._folder}/{self._path}")
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_FILE_BYTES:
            handle.close()
            return Reply(
                400,
                error=f"{self._folder}/{self._path} is {size} bytes, more than one request carries "
                f"({MAX_FILE_BYTES}); an archive is fetched by its blocks",
            )
        self._file, self._parts = handle, max(1, math.ceil(size / PART_BYTES))
        return None

    def __next__(self) -> Reply:
        if self.done:
            raise StopIteration
        if self._file is None:
            refusal = self._open()
            if refusal is not None:
                self.done = True
                return refusal
        assert self._file is not None
        data = os.pread(self._file.fileno(), PART_BYTES, self._part * PART_BYTES)
        reply = Reply(200, data, part=self._part, parts=self._parts)
        self._part += 1
        if self._part >= self._parts:
            self.close()
        return reply

    def close(self) -> None:
        super().close()
        if self._file is not None:
            self._file.close()
            self._file = None


class _Blocks(Answer):
    def __init__(self, archive: Archive, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self._archive = archive
        self._todo = deque(dict.fromkeys(blocks))  # each asked block once, in the order asked

    def __next__(self) -> Reply:
        if self.done or not self._todo:
            self.done = True
            raise StopIteration
        number = self._todo.popleft()
        self.done = not self._todo
        try:
            return Reply(200, self._archive.read_block(number), block=number)
        except OSError as problem:
            self.close()
            log.warning("store: cannot read block %d of %s: %s", number, self._archive.path, problem)
            return Reply(404, error=f"archive {self._archive.index.archive_sha256} cannot be read")


def refusal(status: int, error: str) -> Answer:
    """An answer of one message with this status and error."""
    return _One(Reply(status, error=error))


def parse_request(payload: bytes) -> RepoRequest:
    """The request in a payload; BadRequest (its error names what is wrong) when it is not one."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request of {len(payload)} bytes: at most {MAX_REQUEST_BYTES}")
    try:
        return RepoRequest.model_validate_json(payload)
    except ValidationError as problem:
        first = problem.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        more = f" (and {problem.error_count() - 1} more)" if problem.error_count() > 1 else ""
        raise BadRequest(f"not a repository request: {where}: {first['msg']}{more}") from None


def answer(store: Store, request: RepoRequest) -> Answer:
    """The messages that answer `request` from `store` (see the module docstring), produced as they are sent."""
    if request.kind == "blocks":
        if request.digest is None or not request.blocks:
            return refusal(400, "a blocks request names the archive digest and at least one block")
        if len(request.blocks) > MAX_BLOCKS_PER_REQUEST:
            return refusal(
                400, f"{len(request.blocks)} blocks asked at once: at most {MAX_BLOCKS_PER_REQUEST}"
            )
        archive = store.archive(request.digest)
        if archive is None:
            return refusal(404, f"no archive with digest {request.digest}")
        count = len(archive.index.blocks)
        outside = [number for number in request.blocks if number >= count]
        if outside:
            return refusal(400, f"block {outside[0]} is out of range: the archive has {count} blocks")
        return _Blocks(archive, request.blocks)
    if request.path is None:
        return refusal(400, f"a {request.kind} request names a path")
    return _Parts(store, "metadata" if request.kind == "metadata" else "targets", request.path)


__all__ = [
    "MAX_FILE_BYTES",
    "MAX_REQUEST_BYTES",
    "Answer",
    "BadRequest",
    "Reply",
    "answer",
    "parse_request",
    "refusal",
]
