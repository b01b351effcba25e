"""The paho boundary of the device session and the operator client alike: the client, its callbacks, its errors.

Invariants:
- the client is MQTT 5 with callback API version 2, its client id is the device id (or the operator's), it never
  reconnects by itself (the caller's `agent.backoff.Backoff` is the only reconnection policy), TLS is verified (chain
  always; host name unless `tls.insecure`), and unreadable TLS files raise `LinkSetupError` here, at start, not later
  on a network thread;
- paho's six callbacks are wired in one place, `attach`: each translates what paho reports into the link's own terms
  (`Connack`, `Reason`, `InboundMessage`, one line of text) and hands it to the caller's `Callbacks`, which only
  record it; no paho callback type reaches a caller, and a failing message handler is logged, never raised into
  paho's loop;
- paho's and the socket's exceptions from `connect` and `loop` are wrapped here: `connect` raises a `ConnectFailed`
  subclass (the cause kept as `__cause__`), `loop` reports the exception as a socket error and returns False.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from agent.link import diagnose
from agent.link.config import LinkConfig
from agent.link.errors import ConnectFailed, ConnectionRefused, LinkSetupError, TlsFailure

log = logging.getLogger("agent.link")
paho_log = logging.getLogger("agent.link.paho")

MQTT_LOG_ERR = 8
"""paho's MQTT_LOG_ERR level: its log line then carries the socket error that ended a connection."""

new_properties: Callable[[int], Properties] = Properties
"""paho's `Properties(packet_type)`, typed (paho leaves its __init__ unannotated)."""

CertValidity = tuple[str, dt.datetime, dt.datetime]
"""A client certificate's file name, not-before and not-after (UTC)."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received on a subscribed topic."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reason:
    """An MQTT 5 reason code from an ack (CONNACK, PUBACK, SUBACK): its value and paho's name for it."""

    value: int
    name: str

    @property
    def is_failure(self) -> bool:
        """True for a failure code (0x80 and above)."""
        return self.value >= 0x80

    def __str__(self) -> str:
        return f"{self.name} ({self.value})"


@dataclass(frozen=True, slots=True)
class Connack:
    """The broker's answer to CONNECT."""

    reason: Reason
    session_present: bool
    receive_max: int | None = None
    """The broker's Receive Maximum, if it sent one."""

    def refusal(self) -> ConnectionRefused | None:
        """The diagnosed refusal when the broker refused us, else None."""
        if not self.reason.is_failure:
            return None
        return diagnose.refusal(self.reason.value, self.reason.name)


@dataclass(frozen=True, slots=True)
class Callbacks:
    """What the client reports, in the link's terms; each runs inside `Client.loop` and should only record it."""

    connack: Callable[[Connack], None]
    message: Callable[[InboundMessage], None]
    puback: Callable[[int, Reason], None]
    """A PUBACK (QoS 1) or a QoS 0 publish written: its mid and reason."""
    suback: Callable[[int, list[Reason]], None]
    server_disconnect: Callable[[str], None]
    """The broker sent DISCONNECT: 'the broker disconnected us: NAME (CODE)'."""
    socket_error: Callable[[str], None]
    """The socket error that ended a connection, as paho logged it (or the exception `loop` caught)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message another thread asks the network thread to publish (command replies, repository requests)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation: bytes | None = None
    response_topic: str | None = None


def build_client(
    config: LinkConfig, device: str, password: SecretStr | None
) -> tuple[Client, CertValidity | None]:
    """A paho client for `config` (callbacks: `attach`), and the validity of its client certificate, if any."""
    client = Client(
        CallbackAPIVersion.VERSION2,
        client_id=device,
        protocol=MQTTProtocolVersion.MQTTv5,
        transport=config.transport,
        reconnect_on_failure=False,
    )
    client.connect_timeout = config.connect_timeout_s
    # paho holds back (queues) publishes beyond this many in flight: outbox rows, replies and status together.
    # paho cannot change it once a connection has existed, so the broker's Receive Maximum is honoured by the
    # outbox window instead (the rare reply or status on top stays within Mosquitto's default of 20).
    client.max_inflight_messages_set(config.max_inflight)
    if config.transport == "websockets":
        client.ws_set_options(path=config.websocket_path)
    client.username_pw_set(
        config.username or device, password.get_secret_value() if password is not None else None
    )
    validity: CertValidity | None = None
    if config.tls is not None:
        tls = config.tls
        try:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
            if tls.cert_file is not None and tls.key_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError, ValueError) as problem:
            raise LinkSetupError(f"cannot load the TLS files: {problem}") from None
        if tls.cert_file is not None:
            validity = read_validity(tls.cert_file)
        if tls.insecure:
            context.check_hostname = False
            client.tls_insecure_set(True)
        client.tls_set_context(context)
    return client, validity


def attach(client: Client, callbacks: Callbacks) -> None:
    """Wires paho's callbacks (connect, disconnect, message, publish, subscribe, log) to `callbacks`."""

    def on_connect(
        _c: Client, _u: object, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        callbacks.connack(Connack(_reason(reason), bool(flags.session_present), receive_max))

    def on_disconnect(
        _c: Client, _u: object, flags: DisconnectFlags, reason: ReasonCode, _p: Properties | None
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            callbacks.server_disconnect(f"the broker disconnected us: {reason.getName()} ({reason.value})")

    def on_message(_c: Client, _u: object, message: MQTTMessage) -> None:
        try:
            callbacks.message(inbound(message))
        except Exception:  # a delivery bug must not kill the network loop
            log.exception("inbound message on %s could not be delivered", message.topic)

    def on_publish(_c: Client, _u: object, mid: int, reason: ReasonCode, _p: Properties) -> None:
        callbacks.puback(mid, _reason(reason))

    def on_subscribe(
        _c: Client, _u: object, mid: int, reasons: list[ReasonCode], _p: Properties | None
    ) -> None:
        callbacks.suback(mid, [_reason(reason) for reason in reasons])

    def on_log(_c: Client, _u: object, level: int, text: str) -> None:
        if level == MQTT_LOG_ERR:
            callbacks.socket_error(text.removeprefix("failed to receive on socket: "))
        paho_log.debug("%s", text)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.on_log = on_log


def inbound(message: MQTTMessage) -> InboundMessage:
    """paho's message as an `InboundMessage` (MQTT 5 response topic, correlation data and user properties kept)."""
    props = message.properties
    response = getattr(props, "ResponseTopic", None) if props is not None else None
    correlation = getattr(props, "CorrelationData", None) if props is not None else None
    user = getattr(props, "UserProperty", None) if props is not None else None
    return InboundMessage(
        topic=message.topic,
        payload=bytes(message.payload),
        retain=bool(message.retain),
        response_topic=response if isinstance(response, str) else None,
        correlation=bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
        user_properties=tuple((str(k), str(v)) for k, v in user) if user else (),
    )


def _reason(code: ReasonCode) -> Reason:
    return Reason(code.value, code.getName())


def connect(
    client: Client,
    host: str,
    port: int,
    *,
    keepalive_s: int,
    clean_start: bool,
    properties: Properties | None = None,
) -> MQTTErrorCode:
    """Opens the connection and sends CONNECT; a socket, ssl or paho exception becomes a `ConnectFailed` subclass."""
    try:
        return client.connect(
            host, port, keepalive=keepalive_s, clean_start=clean_start, properties=properties
        )
    except Exception as problem:  # socket, ssl and paho errors alike: one diagnosis
        raise diagnose.connect_exception(problem, f"{host}:{port}") from problem


def loop(client: Client, timeout_s: float, callbacks: Callbacks) -> bool:
    """Runs paho's network loop once (up to `timeout_s`); False when the connection is gone."""
    try:
        return client.loop(timeout=timeout_s) == MQTTErrorCode.MQTT_ERR_SUCCESS
    except Exception as problem:  # paho raises for some socket states: a lost connection
        callbacks.socket_error(f"{type(problem).__name__}: {problem}")
        return False


def publish_properties(
    response_topic: str | None = None,
    correlation: bytes | None = None,
    user_properties: Sequence[tuple[str, str]] = (),
) -> Properties | None:
    """PUBLISH properties with an MQTT 5 response topic, correlation data and user properties (None: none given)."""
    if response_topic is None and correlation is None and not user_properties:
        return None
    properties = new_properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    if correlation is not None:
        properties.CorrelationData = correlation
    if user_properties:
        properties.UserProperty = list(user_properties)
    return properties


def connect_properties(config: LinkConfig) -> Properties:
    """CONNECT properties: session expiry and the largest packet we accept."""
    properties = new_properties(PacketTypes.CONNECT)
    if config.session_expiry_s > 0:
        properties.SessionExpiryInterval = config.session_expiry_s
    properties.MaximumPacketSize = config.max_packet_bytes
    return properties


def certificate_problem(validity: CertValidity | None, now: dt.datetime | None = None) -> str | None:
    """'our client certificate FILE expired on ...' (or not yet valid), or None if it is valid or unknown."""
    if validity is None:
        return None
    name, not_before, not_after = validity
    problem = diagnose.certificate_validity(not_before, not_after, now or dt.datetime.now(dt.timezone.utc))
    return None if problem is None else f"our client certificate {name} {problem}"


def with_certificate(problem: ConnectFailed, validity: CertValidity | None) -> ConnectFailed:
    """The failure; a TLS failure names our own client certificate's validity problem first, when it has one."""
    if isinstance(problem, TlsFailure):
        return diagnose.with_client_certificate(problem, certificate_problem(validity))
    return problem


def read_validity(path: Path) -> CertValidity | None:
    """The client certificate's file name and validity period, or None if it cannot be parsed (ssl says why)."""
    try:
        from cryptography import x509  # only here: the package costs ~9 MB of RSS to every daemon

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return str(path), cert.not_valid_before_utc, cert.not_valid_after_utc


__all__ = [
    "MQTT_LOG_ERR",
    "Callbacks",
    "CertValidity",
    "Client",
    "Connack",
    "InboundMessage",
    "MQTTErrorCode",
    "Outgoing",
    "Reason",
    "attach",
    "build_client",
    "certificate_problem",
    "connect",
    "connect_properties",
    "inbound",
    "loop",
    "new_properties",
    "publish_properties",
    "read_validity",
    "with_certificate",
]
