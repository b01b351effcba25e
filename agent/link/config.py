"""Configuration of the fleet link and its outbox (pydantic v2; no I/O in the models).

Invariants: every model forbids unknown keys; every field has a description and a unit in its name; TLS is never
insecure unless the config says so; the password is never a config value that could be shown: it is resolved at
start by `resolve_password` (environment, then systemd credentials, then `password_file`) into a `SecretStr`, whose
repr and JSON form are masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from agent.backoff import BackoffConfig, InitialSeconds, Jitter, MaxSeconds
from agent.link.errors import LinkSetupError, TopicError
from agent.link.policy import ResultsPolicy
from agent.link.topics import render_prefix, validate_id

PASSWORD_ENV = "EDGE_AGENT_MQTT_PASSWORD"
"""Environment variable that overrides every other password source."""
CREDENTIAL_NAME = "mqtt-password"
"""Name of the systemd credential (`LoadCredential=mqtt-password:...`) read from `$CREDENTIALS_DIRECTORY`."""


class DeviceIdentity(BaseModel):
    """Who this device is: its id (MQTT client id and user name), its fleet and its group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(
        description="Device id: MQTT client id, user name, and the topic level under devices/."
    )
    fleet: str = Field(description="Fleet id, filled into the topic prefix.")
    group: str = Field("default", description="Group id: the device follows groups/{group}/desired.")

    @field_validator("device", "fleet", "group")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        try:
            return validate_id(value)
        except TopicError as problem:
            raise ValueError(str(problem)) from None


class TlsConfig(BaseModel):
    """TLS to the broker: server verification, and optionally a client certificate (mutual TLS)."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(
        None, description="CA bundle that signs the broker's certificate; null: system CAs."
    )
    cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS; CN = device id."
    )
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(
        False,
        description="Skip the broker host name check (never for production; the chain is still verified).",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class LinkBackoffConfig(BackoffConfig):
    """Delays between connection attempts: the shared backoff shape (`agent.backoff`) with the link's defaults.

    1 s doubling up to 60 s, each delay moved by up to ±50 % (never above max_s)."""

    initial_s: InitialSeconds = 1.0
    max_s: MaxSeconds = 60.0
    jitter: Jitter = 0.5


class OutboxRetryConfig(BackoffConfig):
    """Delays between attempts to open or write the outbox database again after a storage failure.

    1 s doubling up to 30 s, ±20 %: a remounted or cleaned-up state directory is found within half a minute."""

    initial_s: InitialSeconds = 1.0
    max_s: MaxSeconds = 30.0
    jitter: Jitter = 0.2


class TelemetryConfig(BaseModel):
    """Periodic metrics snapshots."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(30.0, gt=0, description="Seconds between telemetry snapshots.")


class CommandLimits(BaseModel):
    """Limits on commands received, so a flood or a huge request cannot hurt the device."""

    model_config = ConfigDict(extra="forbid")

    max_payload_bytes: int = Field(
        16384, gt=0, description="Largest request payload; larger ones get an error reply."
    )
    rate_per_min: float = Field(
        60.0, gt=0, description="Commands handled per minute (token bucket refill rate)."
    )
    burst: int = Field(
        10, ge=1, description="Commands that may arrive at once before the rate limit applies."
    )
    queue_max: int = Field(
        32, ge=1, description="Requests waiting for the command worker; more are dropped and counted."
    )


class LinkConfig(BaseModel):
    """The MQTT link to the fleet broker."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Connect to the fleet broker; off, the agent runs stand-alone.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int | None = Field(
        None, ge=1, le=65535, description="Broker port; null: 8883 with TLS, 1883 without."
    )
    transport: Literal["tcp", "websockets"] = Field("tcp", description="tcp, or MQTT over websockets.")
    websocket_path: str = Field(
        "/mqtt", description="HTTP path of the websocket endpoint (transport websockets)."
    )
    keepalive_s: int = Field(60, ge=5, le=65535, description="MQTT keep-alive, seconds.")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Longest wait for TCP, TLS and CONNACK, seconds."
    )
    topic_prefix: str = Field("edge/{fleet}/", description="Prefix of every topic; {fleet} is filled in.")
    tls: TlsConfig | None = Field(None, description="TLS settings; null: plain TCP (test benches only).")
    username: str | None = Field(None, description="MQTT user name; null: the device id.")
    password_file: Path | None = Field(
        None,
        description=f"File holding the MQTT password. ${PASSWORD_ENV} and the systemd credential "
        f"'{CREDENTIAL_NAME}' take precedence.",
    )
    clean_start: bool = Field(
        False,
        description="Start a fresh MQTT session on every connect (false keeps subscriptions and queued commands).",
    )
    session_expiry_s: int = Field(
        600,
        ge=0,
        le=0xFFFFFFFF,
        description="How long the broker keeps the session after a disconnect, seconds.",
    )
    backoff: LinkBackoffConfig = Field(
        default_factory=LinkBackoffConfig, description="Reconnection delays (1 s doubling to 60 s, ±50 %)."
    )
    max_packet_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=268435460,
        description="Largest MQTT packet the broker may send us (MQTT 5 Maximum Packet Size), bytes.",
    )
    max_inflight: int = Field(
        16,
        ge=1,
        le=65535,
        description="Outbox messages sent and not yet acknowledged, at most (paced by PUBACKs).",
    )
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Telemetry snapshots.")
    results: ResultsPolicy = Field(default_factory=ResultsPolicy, description="Which results are published.")
    commands: CommandLimits = Field(default_factory=CommandLimits, description="Command request limits.")

    @field_validator("username")
    @classmethod
    def _username_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("username must not be blank (leave it out to use the device id)")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_renders(cls, value: str) -> str:
        try:
            render_prefix(value, "fleet")
        except TopicError as problem:
            raise ValueError(str(problem)) from None
        return value

    @property
    def effective_port(self) -> int:
        """The port to connect to: the configured one, else 8883 with TLS and 1883 without."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883


class OutboxConfig(BaseModel):
    """The durable outbox that holds events, results and telemetry until the broker acknowledges them."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(None, description="SQLite file; null: outbox.sqlite in the state directory.")
    max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=4096,
        description="Payload bytes kept at most; beyond, telemetry goes first, events last.",
    )
    max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Messages older than this are dropped, seconds."
    )
    sync: Literal["normal", "full"] = Field(
        "normal",
        description="normal: a power cut loses at most checkpoint_interval_s of messages (fewer SD card writes); "
        "full: every put is fsynced.",
    )
    checkpoint_interval_s: float = Field(
        5.0,
        gt=0,
        description="With sync normal, seconds between WAL checkpoints (each one makes prior puts durable).",
    )
    memory_max_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="While the database cannot be written (read-only, full, missing): payload bytes held in memory "
        "at most, events kept first, sent from memory and written to the database once it can be; 0: none.",
    )
    reserve_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Disk reserve next to the database (NAME.ballast), given back when the disk is full so that lower "
        "classes can still be evicted for events; made again when the disk has twice that free; 0: none.",
    )
    retry: OutboxRetryConfig = Field(
        default_factory=OutboxRetryConfig,
        description="Delays between attempts to open or write the database again after a failure (1 s to 30 s).",
    )

    def resolve_path(self, state_dir: Path) -> Path:
        """The database file: `path`, or `state_dir/outbox.sqlite`."""
        return self.path if self.path is not None else state_dir / "outbox.sqlite"


def resolve_password(config: LinkConfig, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The MQTT password from $EDGE_AGENT_MQTT_PASSWORD, $CREDENTIALS_DIRECTORY/mqtt-password or password_file."""
    env = os.environ if environ is None else environ
    if env.get(PASSWORD_ENV):
        return SecretStr(env[PASSWORD_ENV])
    candidates: list[Path] = []
    if env.get("CREDENTIALS_DIRECTORY"):
        credential = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if credential.is_file():
            candidates.append(credential)
    if config.password_file is not None:
        candidates.append(config.password_file)
    if not candidates:
        return None
    source = candidates[0]
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        # The message names the file, never its content.
        raise LinkSetupError(
            f"cannot read the MQTT password file {source}: {type(problem).__name__}"
        ) from None
    password = text.rstrip("\r\n")
    if not password:
        raise LinkSetupError(f"the MQTT password file {source} is empty")
    return SecretStr(password)


__all__ = [
    "CREDENTIAL_NAME",
    "PASSWORD_ENV",
    "CommandLimits",
    "DeviceIdentity",
    "LinkBackoffConfig",
    "LinkConfig",
    "OutboxConfig",
    "OutboxRetryConfig",
    "TelemetryConfig",
    "TlsConfig",
    "resolve_password",
]
