"""python-tuf's `FetcherInterface` over the repository port: TUF metadata and small targets in parts over MQTT.

URLs are `mqtt://repo/metadata/{file}` (e.g. `2.root.json`, `timestamp.json`) and `mqtt://repo/targets/{path}`
(hash-prefixed, as ngclient forms them under consistent snapshots). Invariants, so that ngclient's own checks hold
over a hostile transport:
- a file the repository does not have raises `DownloadHTTPError(..., 404)` (403 likewise): ngclient's root-rotation
  loop stops only on those; any other status is a `DownloadHTTPError` with that status;
- each request has a deadline (`timeout_s`, wall time on a monotonic clock); past it, `SlowRetrievalError`
  (ngclient sets no timeouts of its own);
- never more bytes than allowed: ngclient's maximum length for the file (passed through `download_bytes` /
  `download_file`) caps both the bytes received and the number of parts announced (parts x PART_BYTES), so an
  endless response is cut after at most one part too many; every part is at most PART_BYTES;
- parts come in order 0..parts-1, `parts` never changes; anything else is a `DownloadError`;
- every error leaves as a `tuf.api.exceptions.DownloadError` (ngclient's contract), chained to its cause.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from agent.errors import LinkError
from agent.ota.port import Message, RepoPort, close_quietly
from agent.release.formats import PART_BYTES, PROP_ERROR, PROP_PART, PROP_PARTS, PROP_STATUS, RepoRequest

SCHEME = "mqtt"
HOST = "repo"
METADATA_URL = f"{SCHEME}://{HOST}/metadata/"
TARGETS_URL = f"{SCHEME}://{HOST}/targets/"
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Cap for a download without a stated maximum (ngclient always states one; this is a second line)."""


def request_for(url: str) -> RepoRequest:
    """The repository request for a fetcher URL; DownloadError for a URL that is not ours."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or parts.netloc != HOST or parts.query or parts.fragment:
        raise exceptions.DownloadError(f"not a repository URL: {url}")
    section, _, path = parts.path.lstrip("/").partition("/")
    kinds = {"metadata": "metadata", "targets": "target"}
    if section not in kinds:
        raise exceptions.DownloadError(f"not a repository URL: {url}")
    try:
        return RepoRequest(kind=kinds[section], path=unquote(path))  # type: ignore[arg-type]
    except ValidationError:
        raise exceptions.DownloadError(f"not a repository file: {url}") from None


class RepoFetcher(FetcherInterface):
    """Fetches TUF metadata and small targets through a `RepoPort`, with a deadline and a byte cap per file."""

    def __init__(
        self, port: RepoPort, timeout_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._port = port
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._limit: int | None = None
        self.bytes_received = 0
        """Payload bytes received over this fetcher's life (metadata and small targets)."""

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """ngclient's download, with its maximum length made known to `_fetch` (parts are capped by it)."""
        previous, self._limit = self._limit, max_length
        try:
            with super().download_file(url, max_length) as handle:
                yield handle
        finally:
            self._limit = previous

    def _fetch(self, url: str) -> Iterator[bytes]:
        request = request_for(url)
        limit = min(self._limit if self._limit is not None else MAX_FILE_BYTES, MAX_FILE_BYTES)
        return self._parts(url, request, limit)

    def _parts(self, url: str, request: RepoRequest, limit: int) -> Iterator[bytes]:
        deadline = self._monotonic() + self._timeout_s
        max_parts = max(1, math.ceil(limit / PART_BYTES))
        try:
            messages = self._port.request(request, self._timeout_s)
        except (LinkError, OSError) as problem:
            raise exceptions.DownloadError(f"{url}: the repository cannot be reached: {problem}") from problem
        received = expected = 0
        parts: int | None = None
        try:
            while parts is None or expected < parts:
                props, payload = self._next(url, messages, deadline)
                parts = self._check_part(url, props, payload, expected, parts, max_parts)
                received += len(payload)
                if received > limit:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url}: more than the {limit} bytes allowed"
                    )
                self.bytes_received += len(payload)
                expected += 1
                yield payload
        finally:
            close_quietly(messages)

    def _next(self, url: str, messages: Iterator[Message], deadline: float) -> Message:
        try:
            message = next(messages)
        except StopIteration:
            raise exceptions.DownloadError(f"{url}: the response ended before its last part") from None
        except TimeoutError:
            raise exceptions.SlowRetrievalError(f"{url}: no answer within {self._timeout_s:g} s") from None
        except (LinkError, OSError) as problem:
            raise exceptions.DownloadError(f"{url}: the link failed: {problem}") from problem
        if self._monotonic() > deadline:
            raise exceptions.SlowRetrievalError(f"{url}: not complete within {self._timeout_s:g} s")
        return message

    @staticmethod
    def _check_part(
        url: str, props: Mapping[str, str], payload: bytes, expected: int, parts: int | None, max_parts: int
    ) -> int:
        get = props.get
        status = get(PROP_STATUS, "")
        if status != "200":
            code = int(status) if str(status).isdigit() else 0
            error = str(get(PROP_ERROR, "") or "no reason given")[:200]
            if expected == 0 and code:
                raise exceptions.DownloadHTTPError(f"{url}: {code} {error}", code)
            raise exceptions.DownloadError(f"{url}: status {status!r}: {error}")
        try:
            part, count = int(get(PROP_PART, "")), int(get(PROP_PARTS, ""))
        except ValueError:
            raise exceptions.DownloadError(f"{url}: a part without a valid part number") from None
        if part != expected or count < 1 or (parts is not None and count != parts):
            raise exceptions.DownloadError(f"{url}: part {part} of {count} where part {expected} was due")
        if count > max_parts:
            raise exceptions.DownloadLengthMismatchError(
                f"{url}: {count} parts announced, more than the {max_parts} its maximum length allows"
            )
        if len(payload) > PART_BYTES:
            raise exceptions.DownloadLengthMismatchError(f"{url}: a part over {PART_BYTES} bytes")
        return count


__all__ = ["METADATA_URL", "TARGETS_URL", "RepoFetcher", "request_for"]
