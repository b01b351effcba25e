"""The link's public face for the operator side (`agent.fleet`): the wire contract and the paho boundary, one module.

What a tool on the fleet's side needs to speak to devices exactly as they speak, and nothing of the device's own
session, outbox, pacer or command router:
    payloads      Status, Telemetry, Event, Result, CommandRequest, CommandReply, the command args models and
                  COMMAND_ARGS, ModelRef, EventType, Severity, SCHEMA, parse, describe_validation_error
    topics        Topics, ParsedTopic, TopicKind, ID_PATTERN, render_prefix, validate_id, validate_topic_name
    errors        LinkError and its family (ConnectFailed, ConnectionRefused, TlsFailure, LinkSetupError, PayloadError,
                  TopicError, PublishFailed, CommandError)
    paho boundary build_client, attach(client, Callbacks), connect, loop, Connack, Reason, InboundMessage,
                  publish_properties, MQTTErrorCode, certificate_problem, with_certificate
    diagnosis     lost, refusal: the same words for the same cause on a device and at an operator's terminal
    config        LinkConfig, TlsConfig, resolve_password: to build a client the way the agent builds its own

Invariants: this module only re-exports (it holds no logic, so the operator and the agent cannot disagree on the
wire); importing it imports paho, so the daemon never imports it (it uses `agent.link`, whose names load lazily).
"""

from __future__ import annotations

from agent.link.config import LinkConfig, TlsConfig, resolve_password
from agent.link.diagnose import lost, refusal
from agent.link.errors import (
    CommandError,
    ConnectFailed,
    ConnectionRefused,
    LinkError,
    LinkSetupError,
    PayloadError,
    PublishFailed,
    TlsFailure,
    TopicError,
)
from agent.link.mqtt import (
    Callbacks,
    CertValidity,
    Client,
    Connack,
    InboundMessage,
    MQTTErrorCode,
    Reason,
    attach,
    build_client,
    certificate_problem,
    connect,
    loop,
    publish_properties,
    with_certificate,
)
from agent.link.payloads import (
    COMMAND_ARGS,
    SCHEMA,
    CommandReply,
    CommandRequest,
    Event,
    EventType,
    ModelRef,
    NoArgs,
    Payload,
    Result,
    SetConfigArgs,
    SetLogLevelArgs,
    SetResultsPolicyArgs,
    Severity,
    SnapshotArgs,
    Status,
    Telemetry,
    describe_validation_error,
    parse,
)
from agent.link.topics import (
    ID_PATTERN,
    ParsedTopic,
    TopicKind,
    Topics,
    render_prefix,
    validate_id,
    validate_topic_name,
)

__all__ = [
    "COMMAND_ARGS",
    "ID_PATTERN",
    "SCHEMA",
    "Callbacks",
    "CertValidity",
    "Client",
    "CommandError",
    "CommandReply",
    "CommandRequest",
    "Connack",
    "ConnectFailed",
    "ConnectionRefused",
    "Event",
    "EventType",
    "InboundMessage",
    "LinkConfig",
    "LinkError",
    "LinkSetupError",
    "MQTTErrorCode",
    "ModelRef",
    "NoArgs",
    "ParsedTopic",
    "Payload",
    "PayloadError",
    "PublishFailed",
    "Reason",
    "Result",
    "SetConfigArgs",
    "SetLogLevelArgs",
    "SetResultsPolicyArgs",
    "Severity",
    "SnapshotArgs",
    "Status",
    "Telemetry",
    "TlsConfig",
    "TlsFailure",
    "TopicError",
    "TopicKind",
    "Topics",
    "attach",
    "build_client",
    "certificate_problem",
    "connect",
    "describe_validation_error",
    "loop",
    "lost",
    "parse",
    "publish_properties",
    "refusal",
    "render_prefix",
    "resolve_password",
    "validate_id",
    "validate_topic_name",
    "with_certificate",
]
