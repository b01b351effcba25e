"""Command dispatch: name -> (handler, args model), with size cap, rate limit and counted outcomes (no MQTT here).

A request goes through two steps:
1. `accept` (on the network thread, cheap): counts the request, applies the token-bucket rate limit (excess is
   dropped without a reply and counted as `rate_limited`, so a flood cannot make the device flood back) and the size
   cap (an oversize payload is discarded at once and answered with an error).
2. `run` (on the command worker thread): parses the JSON body (`CommandRequest`), validates `args` with the
   command's pydantic model, calls the handler, and turns every outcome into a `CommandReply`.

Invariants: `run` never raises; every request accepted gets exactly one reply; a handler's exception becomes an error
reply (CommandError: its reason; anything else: "internal error", logged with its traceback); counters only grow and
`received == ok + error + sum(dropped)` once the worker is idle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.link.config import CommandLimits
from agent.link.errors import CommandError, PayloadError
from agent.link.payloads import (
    COMMAND_ARGS,
    CommandReply,
    CommandRequest,
    NoArgs,
    describe_validation_error,
    parse,
)
from agent.link.policy import TokenBucket

log = logging.getLogger("agent.link")

A = TypeVar("A", bound=BaseModel)
Handler = Callable[[Any], "Mapping[str, Any] | None"]


@dataclass(frozen=True, slots=True)
class Request:
    """One accepted command request, waiting for the worker."""

    name: str
    payload: bytes
    correlation: bytes | None = None
    oversize_bytes: int | None = None
    """Set when the payload was over the cap (and discarded)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply and its wire form."""

    reply: CommandReply
    payload: bytes


class CommandRouter:
    """Holds the registered commands and the request counters; `ping` is built in."""

    def __init__(
        self, limits: CommandLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or CommandLimits()
        self._clock = clock
        self._started = clock()
        self._bucket = TokenBucket(self.limits.rate_per_min / 60.0, float(self.limits.burst), clock())
        self._handlers: dict[str, tuple[Handler, type[BaseModel]]] = {}
        self._lock = threading.Lock()
        self._received = 0
        self._ok = 0
        self._error = 0
        self._dropped: dict[str, int] = {}
        self.register("ping", self._ping, NoArgs)

    def register(
        self, name: str, handler: Callable[[A], Mapping[str, Any] | None], args_model: type[A]
    ) -> None:
        """Adds (or replaces) command `name`; `handler(args)` returns the reply data or raises CommandError."""
        known = COMMAND_ARGS.get(name)
        if known is not None and known is not args_model:
            log.debug(
                "command %s registered with %s instead of %s", name, args_model.__name__, known.__name__
            )
        with self._lock:
            self._handlers[name] = (handler, args_model)

    def names(self) -> list[str]:
        """Registered command names, sorted."""
        with self._lock:
            return sorted(self._handlers)

    def accept(self, name: str, payload: bytes, correlation: bytes | None = None) -> Request | None:
        """Counts a request; None if the rate limit drops it, else the request (payload discarded if oversize)."""
        with self._lock:
            self._received += 1
            if not self._bucket.take(self._clock()):
                self._dropped["rate_limited"] = self._dropped.get("rate_limited", 0) + 1
                dropped = self._dropped["rate_limited"]
            else:
                dropped = 0
        if dropped:
            if dropped == 1 or dropped % 100 == 0:
                log.warning(
                    "command %s dropped: over %.0f per minute (%d dropped so far)",
                    name,
                    self.limits.rate_per_min,
                    dropped,
                )
            return None
        if len(payload) > self.limits.max_payload_bytes:
            return Request(name, b"", correlation, oversize_bytes=len(payload))
        return Request(name, payload, correlation)

    def count_drop(self, reason: str) -> None:
        """Counts a request dropped outside the router (for example the worker queue was full)."""
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def run(self, request: Request) -> Reply:
        """Handles one accepted request; always returns a reply, never raises."""
        correlation = _correlation_text(request.correlation)
        try:
            reply = self._run(request, correlation)
        except Exception as problem:  # the router itself must never take the worker down
            log.exception("command %s: unexpected failure in the router", request.name)
            reply = _error(request.name, f"internal error: {type(problem).__name__}", correlation)
        try:
            payload = reply.to_bytes()
        except Exception as problem:  # the handler returned data that is not JSON
            reply = _error(
                request.name, f"reply not serializable: {type(problem).__name__}", reply.correlation
            )
            payload = reply.to_bytes()
        with self._lock:
            if reply.status == "ok":
                self._ok += 1
            else:
                self._error += 1
        return Reply(reply, payload)

    def _run(self, request: Request, correlation: str | None) -> CommandReply:
        name = request.name
        if request.oversize_bytes is not None:
            return _error(
                name,
                f"payload too large: {request.oversize_bytes} bytes, at most {self.limits.max_payload_bytes}",
                correlation,
            )
        try:
            body = parse(CommandRequest, request.payload) if request.payload.strip() else CommandRequest()
        except PayloadError as problem:
            return _error(name, problem.reason, correlation)
        correlation = body.id or correlation
        with self._lock:
            entry = self._handlers.get(name)
            known = sorted(self._handlers)
        if entry is None:
            return _error(name, f"unknown command {name!r}; known: {', '.join(known)}", correlation)
        handler, args_model = entry
        try:
            args = args_model.model_validate(body.args)
        except ValidationError as problem:
            return _error(name, f"bad args: {describe_validation_error(problem)}", correlation)
        try:
            data = handler(args)
        except CommandError as problem:
            return _error(name, problem.reason, correlation)
        except Exception as problem:
            log.exception("command %s failed", name)
            return _error(name, f"internal error: {type(problem).__name__}: {problem}", correlation)
        return CommandReply(command=name, status="ok", data=dict(data or {}), correlation=correlation)

    def stats(self) -> dict[str, Any]:
        """Requests received, answered ok, answered with an error, and dropped by reason."""
        with self._lock:
            return {
                "received": self._received,
                "ok": self._ok,
                "error": self._error,
                "dropped": dict(self._dropped),
            }

    def _ping(self, _args: NoArgs) -> dict[str, Any]:
        return {"pong": True, "time": time.time(), "uptime_s": round(self._clock() - self._started, 3)}


def _error(name: str, reason: str, correlation: str | None) -> CommandReply:
    return CommandReply(command=name, status="error", reason=reason, correlation=correlation)


def _correlation_text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex()
    return text if text.isprintable() else data.hex()


__all__ = ["CommandError", "CommandRouter", "Handler", "Reply", "Request"]
