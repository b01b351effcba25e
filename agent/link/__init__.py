"""The fleet link: MQTT 5 to the fleet broker, with a durable outbox, commands and a results policy.

Public face (see "The MQTT protocol" in README.md for the wire contract):
    Link(config, identity, state_dir, *, outbox=None, router=None, telemetry_source=None)
        .start() / .stop() / .state() -> LinkStatus / .stats()
        .publish_event(Event) / .publish_result(result, seq=, key=, score=) / .publish_telemetry(metrics)
        .set_status(model=, sources=) / .set_results_policy(policy) / .subscribe(filter, handler)
        .router: CommandRouter (register(name, handler, args_model))
Importing this package starts no thread, touches no file and loads nothing heavy: the names are imported on first
use (PEP 562), so the config tree can read `agent.link.config` without pulling in paho, ssl and sqlite on a device
whose link is disabled.

The operator's side (`agent.fleet`) reaches the wire through one module, `agent.link.wire` (payloads, topics, errors,
the paho boundary, the config helpers to build a client), and imports no other module of this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.backoff import BackoffConfig
    from agent.link.client import InboundMessage, Link, MessageHandler, TelemetrySource
    from agent.link.commands import CommandRouter
    from agent.link.config import (
        CommandLimits,
        DeviceIdentity,
        LinkConfig,
        OutboxConfig,
        TelemetryConfig,
        TlsConfig,
        resolve_password,
    )
    from agent.link.errors import (
        CommandError,
        ConnectFailed,
        ConnectionRefused,
        LinkError,
        LinkSetupError,
        OutboxError,
        PayloadError,
        PublishFailed,
        TlsFailure,
        TopicError,
    )
    from agent.link.outbox import Outbox, open_outbox
    from agent.link.outboxstats import OutboxStats, StorageStatus
    from agent.link.payloads import (
        COMMAND_ARGS,
        MAX_SAMPLE_CHUNK,
        SCHEMA,
        CommandReply,
        CommandRequest,
        Event,
        ModelRef,
        NoArgs,
        Result,
        SampleChunkArgs,
        SampleChunkReply,
        SampleConfirmArgs,
        SampleListArgs,
        SampleListReply,
        SampleMeta,
        SetConfigArgs,
        SetLogLevelArgs,
        SetResultsPolicyArgs,
        SnapshotArgs,
        Status,
        Telemetry,
        UpdateBrief,
        parse,
    )
    from agent.link.policy import ResultGate, ResultsPolicy
    from agent.link.state import LinkState, LinkStatus
    from agent.link.topics import Topics

_MODULES = {
    "BackoffConfig": "agent.backoff",
    "COMMAND_ARGS": "agent.link.payloads",
    "CommandError": "agent.link.errors",
    "CommandLimits": "agent.link.config",
    "CommandReply": "agent.link.payloads",
    "CommandRequest": "agent.link.payloads",
    "CommandRouter": "agent.link.commands",
    "ConnectFailed": "agent.link.errors",
    "ConnectionRefused": "agent.link.errors",
    "DeviceIdentity": "agent.link.config",
    "Event": "agent.link.payloads",
    "InboundMessage": "agent.link.client",
    "Link": "agent.link.client",
    "LinkConfig": "agent.link.config",
    "LinkError": "agent.link.errors",
    "LinkSetupError": "agent.link.errors",
    "LinkState": "agent.link.state",
    "LinkStatus": "agent.link.state",
    "MessageHandler": "agent.link.client",
    "ModelRef": "agent.link.payloads",
    "UpdateBrief": "agent.link.payloads",
    "NoArgs": "agent.link.payloads",
    "Outbox": "agent.link.outbox",
    "OutboxConfig": "agent.link.config",
    "OutboxError": "agent.link.errors",
    "OutboxStats": "agent.link.outboxstats",
    "PayloadError": "agent.link.errors",
    "PublishFailed": "agent.link.errors",
    "Result": "agent.link.payloads",
    "ResultGate": "agent.link.policy",
    "ResultsPolicy": "agent.link.policy",
    "SCHEMA": "agent.link.payloads",
    "MAX_SAMPLE_CHUNK": "agent.link.payloads",
    "SampleChunkArgs": "agent.link.payloads",
    "SampleChunkReply": "agent.link.payloads",
    "SampleConfirmArgs": "agent.link.payloads",
    "SampleListArgs": "agent.link.payloads",
    "SampleListReply": "agent.link.payloads",
    "SampleMeta": "agent.link.payloads",
    "SetConfigArgs": "agent.link.payloads",
    "SetLogLevelArgs": "agent.link.payloads",
    "SetResultsPolicyArgs": "agent.link.payloads",
    "SnapshotArgs": "agent.link.payloads",
    "Status": "agent.link.payloads",
    "StorageStatus": "agent.link.outboxstats",
    "Telemetry": "agent.link.payloads",
    "TelemetryConfig": "agent.link.config",
    "TelemetrySource": "agent.link.client",
    "TlsConfig": "agent.link.config",
    "TlsFailure": "agent.link.errors",
    "TopicError": "agent.link.errors",
    "Topics": "agent.link.topics",
    "open_outbox": "agent.link.outbox",
    "parse": "agent.link.payloads",
    "resolve_password": "agent.link.config",
}


def __getattr__(name: str) -> Any:
    """Imports a public name on first use."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "COMMAND_ARGS",
    "MAX_SAMPLE_CHUNK",
    "SCHEMA",
    "BackoffConfig",
    "CommandError",
    "CommandLimits",
    "CommandReply",
    "CommandRequest",
    "CommandRouter",
    "ConnectFailed",
    "ConnectionRefused",
    "DeviceIdentity",
    "Event",
    "InboundMessage",
    "Link",
    "LinkConfig",
    "LinkError",
    "LinkSetupError",
    "LinkState",
    "LinkStatus",
    "MessageHandler",
    "ModelRef",
    "NoArgs",
    "Outbox",
    "OutboxConfig",
    "OutboxError",
    "OutboxStats",
    "PayloadError",
    "PublishFailed",
    "Result",
    "ResultGate",
    "ResultsPolicy",
    "SampleChunkArgs",
    "SampleChunkReply",
    "SampleConfirmArgs",
    "SampleListArgs",
    "SampleListReply",
    "SampleMeta",
    "SetConfigArgs",
    "SetLogLevelArgs",
    "SetResultsPolicyArgs",
    "SnapshotArgs",
    "Status",
    "StorageStatus",
    "Telemetry",
    "TelemetryConfig",
    "TelemetrySource",
    "TlsConfig",
    "TlsFailure",
    "TopicError",
    "Topics",
    "UpdateBrief",
    "open_outbox",
    "parse",
    "resolve_password",
]
