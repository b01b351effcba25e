"""The fleet link: MQTT 5 to the fleet broker, with a durable outbox, commands and a results policy.

Public face (see firmware-config/PROTOCOL.md for the wire contract):
    Link(config, identity, state_dir, *, outbox=None, router=None, telemetry_source=None)
        .start() / .stop() / .state() -> LinkStatus / .stats()
        .publish_event(Event) / .publish_result(result, seq=, key=, score=) / .publish_telemetry(metrics)
        .set_status(model=, sources=) / .set_results_policy(policy) / .subscribe(filter, handler)
        .router: CommandRouter (register(name, handler, args_model))
Importing this package starts no thread and touches no file.
"""

from agent.link.client import InboundMessage, Link, MessageHandler, TelemetrySource
from agent.link.commands import CommandRouter
from agent.link.config import (
    BackoffConfig,
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
from agent.link.outbox import Outbox, OutboxStats, open_outbox
from agent.link.payloads import (
    COMMAND_ARGS,
    SCHEMA,
    CommandReply,
    CommandRequest,
    Event,
    ModelRef,
    NoArgs,
    Result,
    SetConfigArgs,
    SetLogLevelArgs,
    SetResultsPolicyArgs,
    SnapshotArgs,
    Status,
    Telemetry,
    parse,
)
from agent.link.policy import ResultGate, ResultsPolicy
from agent.link.state import LinkState, LinkStatus
from agent.link.topics import Topics

__all__ = [
    "COMMAND_ARGS",
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
    "SetConfigArgs",
    "SetLogLevelArgs",
    "SetResultsPolicyArgs",
    "SnapshotArgs",
    "Status",
    "Telemetry",
    "TelemetryConfig",
    "TelemetrySource",
    "TlsConfig",
    "TlsFailure",
    "TopicError",
    "Topics",
    "open_outbox",
    "parse",
    "resolve_password",
]
