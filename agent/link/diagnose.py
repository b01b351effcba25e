"""Turns connection failures into one clear line for the log and for `LinkStatus.reason` (pure: no I/O).

Invariant: the text names the cause and what to check, and never contains a password (only reason codes, TLS error
strings from OpenSSL, socket errors and file names go in).
"""

from __future__ import annotations

import datetime as dt
import ssl

from agent.link.errors import ConnectFailed, ConnectionRefused, TlsFailure

CONNACK_HINTS: dict[int, str] = {
    0x80: "the broker gave no reason",
    0x81: "the broker could not parse our CONNECT",
    0x82: "protocol error: the broker may not speak MQTT 5",
    0x84: "the broker does not support MQTT 5",
    0x85: "client id not valid: check the device id and the broker's client id rules",
    0x86: "bad user name or password: check the password source (EDGE_AGENT_MQTT_PASSWORD, the systemd credential "
    "'mqtt-password' or password_file) and the broker's password file",
    0x87: "not authorized: the broker refuses this device's credentials (user name and password, or certificate); "
    "check the password source (EDGE_AGENT_MQTT_PASSWORD, the systemd credential 'mqtt-password' or password_file) "
    "and the broker's password file and ACL",
    0x88: "server unavailable",
    0x89: "server busy: try again later",
    0x8A: "banned by the broker",
    0x8C: "bad authentication method",
    0x95: "packet too large for the broker",
    0x97: "quota exceeded",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9F: "connection rate exceeded",
}

TLS_HINTS: tuple[tuple[str, str], ...] = (
    ("certificate has expired", "the broker's certificate has expired"),
    ("certificate is not yet valid", "the broker's certificate is not yet valid (is the device clock set?)"),
    ("self-signed certificate", "the broker's certificate is not signed by tls.ca_file"),
    ("unable to get local issuer certificate", "the broker's certificate is not signed by tls.ca_file"),
    ("unable to verify the first certificate", "the broker's certificate is not signed by tls.ca_file"),
    ("hostname mismatch", "the broker's certificate does not name the host we connect to"),
    ("ip address mismatch", "the broker's certificate does not name the address we connect to"),
    ("alert certificate expired", "the broker refused our client certificate: it has expired"),
    (
        "alert certificate required",
        "the broker requires a client certificate (set tls.cert_file and tls.key_file)",
    ),
    ("alert unknown ca", "the broker does not trust the CA that signed our client certificate"),
    ("alert bad certificate", "the broker refused our client certificate"),
    ("alert certificate revoked", "our client certificate has been revoked"),
    ("alert handshake failure", "TLS handshake failure: no common protocol or cipher"),
    ("wrong version number", "the port does not speak TLS (plain MQTT port?)"),
    (
        "eof occurred in violation of protocol",
        "the broker closed the TLS connection: it does not accept our client certificate (unknown CA, revoked, "
        "missing)",
    ),
)


def refusal(rc: int, name: str) -> ConnectionRefused:
    """The error for a CONNACK failure reason code (`name` is paho's text for it)."""
    hint = CONNACK_HINTS.get(rc, name)
    return ConnectionRefused(f"broker refused the connection: {name} (reason code {rc}): {hint}", rc=rc)


def is_tls_text(text: str) -> bool:
    """True if an error text comes from OpenSSL."""
    lowered = text.lower()
    return "ssl" in lowered or "tls" in lowered or "certificate" in lowered


def tls_failure(text: str) -> TlsFailure:
    """The error for a TLS failure, from OpenSSL's message."""
    lowered = text.lower()
    for needle, hint in TLS_HINTS:
        if needle in lowered:
            return TlsFailure(f"TLS failed: {hint} ({text})")
    return TlsFailure(f"TLS failed: {text}")


def connect_exception(problem: BaseException, where: str) -> ConnectFailed:
    """The error for an exception raised while opening the connection to `where` (host:port)."""
    if isinstance(problem, ssl.SSLCertVerificationError):
        detail = problem.verify_message or str(problem)
        return tls_failure(f"certificate verify failed: {detail}")
    if isinstance(problem, (ssl.SSLError, ssl.CertificateError)) or is_tls_text(str(problem)):
        return tls_failure(str(problem))
    if isinstance(problem, TimeoutError):
        return ConnectFailed(f"cannot reach the broker at {where}: timed out")
    if isinstance(problem, OSError):
        return ConnectFailed(f"cannot reach the broker at {where}: {problem.strerror or problem}")
    return ConnectFailed(f"cannot connect to the broker at {where}: {type(problem).__name__}: {problem}")


def certificate_validity(not_before: dt.datetime, not_after: dt.datetime, now: dt.datetime) -> str | None:
    """What is wrong with a certificate's validity period at `now` (aware datetimes), or None."""
    if now > not_after:
        return f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
    if now < not_before:
        return f"is not valid before {not_before:%Y-%m-%d %H:%M} UTC (is the device clock set? it reads {now:%Y-%m-%d})"
    return None


def with_client_certificate(problem: TlsFailure, certificate_problem: str | None) -> TlsFailure:
    """The TLS failure, naming our own client certificate's validity problem first when there is one.

    A broker that refuses an expired certificate may close the connection before its alert is read, so the device
    checks its own certificate rather than rely on the broker's message."""
    if certificate_problem is None:
        return problem
    return TlsFailure(f"TLS failed: {certificate_problem} ({problem.reason})")


def lost(text: str | None, connected: bool) -> ConnectFailed:
    """The error for a connection that closed: `text` is the last socket error paho reported, if any."""
    if text and is_tls_text(text):
        return tls_failure(text)
    if connected:
        return ConnectFailed(f"connection lost: {text}" if text else "connection lost")
    return ConnectFailed(
        f"the broker closed the connection before CONNACK: {text}"
        if text
        else "the broker closed the connection before CONNACK"
    )


__all__ = [
    "CONNACK_HINTS",
    "certificate_validity",
    "connect_exception",
    "is_tls_text",
    "lost",
    "refusal",
    "tls_failure",
    "with_client_certificate",
]
