"""The paho boundary: building the MQTT 5 client from the config, and the messages that cross threads.

Invariants: the client is MQTT 5 with callback API version 2, its client id is the device id, it never reconnects by
itself (the session's backoff is the only reconnection policy), TLS is verified (chain always; host name unless
`tls.insecure`), and unreadable TLS files raise `LinkSetupError` here, at start, not later on the network thread.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from agent.link import diagnose
from agent.link.config import LinkConfig
from agent.link.errors import LinkSetupError

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
class Outgoing:
    """A message another thread asks the network thread to publish (command replies)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation: bytes | None = None


def build_client(
    config: LinkConfig, device: str, password: SecretStr | None
) -> tuple[Client, CertValidity | None]:
    """A paho client for `config` (callbacks not set), and the validity of its client certificate, if any."""
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


def read_validity(path: Path) -> CertValidity | None:
    """The client certificate's file name and validity period, or None if it cannot be parsed (ssl says why)."""
    try:
        from cryptography import x509  # only here: the package costs ~9 MB of RSS to every daemon

        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return str(path), cert.not_valid_before_utc, cert.not_valid_after_utc


__all__ = [
    "CertValidity",
    "InboundMessage",
    "Outgoing",
    "build_client",
    "connect_properties",
    "new_properties",
]
