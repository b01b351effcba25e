"""The updater's one door to the repository: a narrow transport port, implemented over MQTT 5 elsewhere.

Contract of `RepoPort.request(request, timeout_s)`:
- the request is sent before `request` returns (so several can be in flight); the iterator then yields each response
  message as `(user_properties, payload)`: for `metadata` and `target`, the parts 0..parts-1 in order
  (`PROP_PART`, `PROP_PARTS`); for `blocks`, one message per asked block in any order (`PROP_BLOCK`); a status other
  than 200 (`PROP_STATUS`) comes as one message with a `PROP_ERROR`;
- messages that have arrived are yielded even after the deadline; when none is waiting and `timeout_s` seconds have
  passed since the call, the iterator raises `TimeoutError`; it may also simply end once the response is complete;
- the caller may stop early and `close()` the iterator (a generator's close), which abandons the request;
- when the repository cannot be reached at all it raises `agent.errors.LinkError` (or an `OSError`).
The updater checks everything that comes back (sizes, order, hashes, deadlines) and trusts none of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from agent.release.formats import RepoRequest

Message = tuple[Mapping[str, str], bytes]
"""One response message: its MQTT 5 user properties and its raw payload."""


class RepoPort(Protocol):
    """Sends a repository request on repo/get and yields the messages that answer it."""

    def request(self, request: RepoRequest, timeout_s: float) -> Iterator[Message]:
        """Sends `request`; yields its response messages until complete, or raises TimeoutError at the deadline."""
        ...


def close_quietly(messages: Iterator[Message]) -> None:
    """Abandons a response (closes the generator, if it is one)."""
    close = getattr(messages, "close", None)
    if callable(close):
        close()


__all__ = ["Message", "RepoPort", "close_quietly"]
