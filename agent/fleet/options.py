"""Connection options shared by every subcommand: flags, their environment variables, defaults, and the password.

Precedence for each option: the flag, then its environment variable (`EDGE_FLEET_HOST`, ...), then the default. The
password is never a flag (it would show in `ps`): `--password-file`, else `$EDGE_FLEET_PASSWORD`, else
`$EDGE_FLEET_PASSWORD_FILE`. The password is held as a `SecretStr` and never printed. Reading the options does no
network I/O; a bad value is a `UsageError` (exit status 2) naming the flag and its environment variable.
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr, ValidationError

from agent.fleet.errors import UsageError
from agent.fleet.layout import FleetTopics
from agent.link.wire import LinkConfig, TlsConfig, TopicError, describe_validation_error, resolve_password

PASSWORD_ENV = "EDGE_FLEET_PASSWORD"
PASSWORD_FILE_ENV = "EDGE_FLEET_PASSWORD_FILE"
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30

# (flag, dest, environment variable, help)
_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--host", "host", "EDGE_FLEET_HOST", "broker host name or address (default localhost)"),
    ("--port", "port", "EDGE_FLEET_PORT", "broker port (default 8883 with TLS, 1883 without)"),
    ("--fleet", "fleet", "EDGE_FLEET_FLEET", "fleet id, filled into the topic prefix (default 'default')"),
    ("--prefix", "prefix", "EDGE_FLEET_PREFIX", "topic prefix template (default 'edge/{fleet}/')"),
    ("--username", "username", "EDGE_FLEET_USERNAME", "MQTT user name (default: none)"),
    (
        "--password-file",
        "password_file",
        PASSWORD_FILE_ENV,
        f"file holding the MQTT password (or set ${PASSWORD_ENV})",
    ),
    (
        "--ca-file",
        "ca_file",
        "EDGE_FLEET_CA_FILE",
        "CA bundle that signs the broker's certificate (turns on TLS)",
    ),
    (
        "--cert-file",
        "cert_file",
        "EDGE_FLEET_CERT_FILE",
        "client certificate for mutual TLS (with --key-file)",
    ),
    ("--key-file", "key_file", "EDGE_FLEET_KEY_FILE", "private key of the client certificate"),
    ("--client-id", "client_id", "EDGE_FLEET_CLIENT_ID", "MQTT client id (default edge-fleet-<random>)"),
)


def add_connection_arguments(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Adds the connection flags; `suppress`: leave them unset when absent (subcommands, so they can follow it)."""
    group = parser.add_argument_group("connection (each flag also reads its environment variable)")
    default = argparse.SUPPRESS if suppress else None
    for flag, dest, env, text in _OPTIONS:
        group.add_argument(flag, dest=dest, default=default, metavar=dest.upper(), help=f"{text}; ${env}")
    group.add_argument(
        "--tls",
        dest="tls",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="use TLS with the system's CAs (implied by --ca-file); $EDGE_FLEET_TLS=1",
    )


@dataclass(frozen=True)
class ConnectOptions:
    """Where and as whom to connect; `password` is already resolved."""

    host: str = "localhost"
    port: int | None = None
    fleet: str = "default"
    prefix_template: str = "edge/{fleet}/"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls: bool = False
    client_id: str = "edge-fleet"
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    keepalive_s: int = KEEPALIVE_S
    max_inflight: int | None = None
    """QoS 1 publishes paho lets out unacknowledged at once (None: the link's default); `serve` raises it."""

    @property
    def uses_tls(self) -> bool:
        """True when any TLS option is set."""
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def effective_port(self) -> int:
        """The given port, else 8883 with TLS and 1883 without."""
        if self.port is not None:
            return self.port
        return 8883 if self.uses_tls else 1883

    @property
    def where(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.effective_port}"

    def topics(self) -> FleetTopics:
        """The fleet's topic layout."""
        return FleetTopics(self.fleet, self.prefix_template)

    def link_config(self) -> LinkConfig:
        """The same options as the agent's link config, to build the paho client the same way."""
        tls = None
        if self.uses_tls:
            tls = TlsConfig(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)
        return LinkConfig(
            enabled=True,
            host=self.host,
            port=self.port,
            tls=tls,
            username=self.username,
            topic_prefix=self.prefix_template,
            connect_timeout_s=self.connect_timeout_s,
            keepalive_s=self.keepalive_s,
            **({} if self.max_inflight is None else {"max_inflight": self.max_inflight}),
        )


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ConnectOptions:
    """The connection options from parsed flags and the environment; UsageError for a bad value."""
    values: dict[str, str | None] = {}
    for flag, dest, env, _text in _OPTIONS:
        given = getattr(args, dest, None)
        values[dest] = given if given is not None else (environ.get(env) or None)
        if values[dest] is not None and not str(values[dest]).strip():
            raise UsageError(f"{flag} (${env}) must not be blank")
    port = _port(values["port"])
    tls = bool(getattr(args, "tls", False)) or environ.get("EDGE_FLEET_TLS", "") in ("1", "true", "yes")
    cert_file, key_file = _path(values["cert_file"]), _path(values["key_file"])
    if (cert_file is None) != (key_file is None):
        raise UsageError("--cert-file and --key-file go together (mutual TLS needs both)")
    fleet = values["fleet"] or "default"
    prefix = values["prefix"] if values["prefix"] is not None else "edge/{fleet}/"
    try:
        FleetTopics(fleet, prefix)
    except TopicError as problem:
        raise UsageError(f"--fleet/--prefix: {problem}") from None
    options = ConnectOptions(
        host=values["host"] or "localhost",
        port=port,
        fleet=fleet,
        prefix_template=prefix,
        username=values["username"],
        password=_password(getattr(args, "password_file", None), environ),
        ca_file=_path(values["ca_file"]),
        cert_file=cert_file,
        key_file=key_file,
        tls=tls,
        client_id=values["client_id"] or f"edge-fleet-{secrets.token_hex(4)}",
    )
    try:
        options.link_config()
    except ValidationError as problem:
        raise UsageError(f"connection options: {describe_validation_error(problem)}") from None
    return options


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        port = int(text)
    except ValueError:
        raise UsageError(f"--port ($EDGE_FLEET_PORT): not a number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"--port ($EDGE_FLEET_PORT): {port} is not between 1 and 65535")
    return port


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text).expanduser()


def _password(flag_file: str | None, environ: Mapping[str, str]) -> SecretStr | None:
    """--password-file, else $EDGE_FLEET_PASSWORD, else $EDGE_FLEET_PASSWORD_FILE (LinkSetupError if unreadable)."""
    if flag_file is None and environ.get(PASSWORD_ENV):
        return SecretStr(environ[PASSWORD_ENV])
    source = flag_file if flag_file is not None else environ.get(PASSWORD_FILE_ENV)
    if not source:
        return None
    # The agent's reader: trailing newline stripped, empty or unreadable file refused, naming the file only.
    return resolve_password(LinkConfig(password_file=Path(source).expanduser()), environ={})


def new_token() -> str:
    """A random id for a reply topic and its correlation data."""
    return secrets.token_hex(8)


__all__ = [
    "PASSWORD_ENV",
    "PASSWORD_FILE_ENV",
    "ConnectOptions",
    "add_connection_arguments",
    "new_token",
    "options_from_args",
]
