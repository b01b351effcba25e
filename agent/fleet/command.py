"""Sending one command to a device and waiting for its reply (`edge-fleet cmd`).

The request goes to `devices/{device}/cmd/{name}` with an MQTT 5 Response Topic under `devices/{device}/reply/` (where
the shipped ACL lets the device answer) and random Correlation Data; the body's `id` carries the same token, for
devices whose replies lose the property.

Invariants: arguments are checked before anything is sent (malformed JSON, a non-object, or args the command's model
in `COMMAND_ARGS` refuses are a `UsageError`, exit status 2); a reply counts only if it arrives on our response topic
and its correlation (property, else the echoed `correlation`) is ours; the reply topic is subscribed before the
request goes out, so a fast device cannot answer into the void.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.fleet.client import FleetClient
from agent.fleet.errors import CommandFailed, NoReply, UsageError
from agent.fleet.layout import FleetTopics
from agent.fleet.stream import local_time
from agent.link.wire import (
    COMMAND_ARGS,
    CommandReply,
    CommandRequest,
    InboundMessage,
    PayloadError,
    Status,
    TopicError,
    describe_validation_error,
    parse,
    validate_id,
)


@dataclass(frozen=True)
class Call:
    """One command to send: where, what, and its request body."""

    device: str
    name: str
    request: CommandRequest


def build_call(device: str, name: str, args_json: str | None, token: str) -> Call:
    """Checks the ids and the JSON args (against the command's model when the name is known); UsageError if bad."""
    try:
        validate_id(device, "device id")
        validate_id(name, "command name")
    except TopicError as problem:
        raise UsageError(str(problem)) from None
    args: Any = {}
    if args_json is not None and args_json.strip():
        try:
            args = json.loads(args_json)
        except json.JSONDecodeError as problem:
            raise UsageError(f"malformed JSON args: {problem}") from None
        if not isinstance(args, dict):
            raise UsageError(
                f"the JSON args must be an object, not {type(args).__name__}: {args_json.strip()}"
            )
    model = COMMAND_ARGS.get(name)
    if model is not None:
        try:
            model.model_validate(args)
        except ValidationError as problem:
            raise UsageError(f"bad args for {name}: {describe_validation_error(problem)}") from None
    return Call(device, name, CommandRequest(id=token, args=args))


def send(client: FleetClient, topics: FleetTopics, call: Call, timeout_s: float) -> CommandReply:
    """Sends the request and returns the device's ok reply; CommandFailed for an error reply, NoReply on timeout."""
    assert call.request.id is not None
    token = call.request.id
    device = topics.device(call.device)
    reply_topic = topics.reply(call.device, token)
    client.subscribe([reply_topic, device.status])
    client.publish(
        device.cmd(call.name), call.request.to_bytes(), response_topic=reply_topic, correlation=token.encode()
    )
    status: Status | None = None
    stop_at = time.monotonic() + timeout_s
    for message in client.messages(stop_at, tick_s=0.5):
        if message is None:
            continue
        if message.topic == device.status:
            status = _status(message) or status
            continue
        if message.topic == reply_topic:
            reply = _reply_if_ours(message, token)
            if reply is None:
                continue
            if reply.status == "error":
                raise CommandFailed(reply)
            return reply
    raise NoReply(
        f"no reply from {call.device} to {call.name} within {timeout_s:g} s: {_presence(call, status)}"
    )


def _reply_if_ours(message: InboundMessage, token: str) -> CommandReply | None:
    try:
        reply = parse(CommandReply, message.payload)
    except PayloadError:
        return None
    if message.correlation is not None:
        return reply if message.correlation == token.encode() else None
    return reply if reply.correlation == token else None


def _status(message: InboundMessage) -> Status | None:
    if not message.payload.strip():
        return None
    try:
        return parse(Status, message.payload)
    except PayloadError:
        return None


def _presence(call: Call, status: Status | None) -> str:
    """What the retained status says about the device, for the timeout message."""
    if status is None:
        return f"{call.device} has never reported a status in this fleet (check the device id, --fleet and --prefix)"
    if status.state == "offline":
        why = f", {status.reason}" if status.reason else ""
        return (
            f"{call.device} is offline (since {local_time(status.time)}{why}); the broker may keep the request for "
            "its session, so the device can still run it when it comes back"
        )
    return f"{call.device} is online (birth {status.birth}) but did not answer (busy, rate-limited, or no such handler)"


def snapshot_jpeg(reply: CommandReply) -> bytes:
    """The JPEG bytes of a snapshot reply; PayloadError if it carries none or they are not base64."""
    data = reply.data.get("jpeg_base64")
    if not isinstance(data, str):
        raise PayloadError("the snapshot reply carries no jpeg_base64")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as problem:
        raise PayloadError(f"the snapshot reply's jpeg_base64 is not valid base64: {problem}") from None


__all__ = ["Call", "build_call", "send", "snapshot_jpeg"]
