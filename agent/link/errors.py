"""The fleet link's exceptions: every one is a `LinkError`, so callers catch one root.

paho, ssl, socket and sqlite3 exceptions never leave `agent.link`; they are wrapped here, at the edge, into one of these
classes, which carry the data a caller or a log line needs (`rc`, `reason`). `str(error)` is a one-line reason.
"""

from __future__ import annotations

from agent.errors import LinkError


class TopicError(LinkError):
    """A device, fleet or group id, or a topic, breaks the MQTT topic rules or the agent's layout."""


class PayloadError(LinkError):
    """A received payload is not valid JSON or does not match its model."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommandError(LinkError):
    """A command handler refuses a request; `reason` goes back to the caller in the error reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboxError(LinkError):
    """The outbox database cannot be opened or is unusable; `cause` is the underlying error, when there is one.

    The outbox itself never raises it for storage failures (it holds rows in memory and retries); opening does."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.cause = cause


class LinkSetupError(LinkError):
    """The link cannot be set up from its configuration (TLS files unreadable, bad options)."""


class ConnectFailed(LinkError):
    """One connection attempt failed; `rc` is the MQTT reason code or paho error code, when there is one."""

    def __init__(self, reason: str, rc: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rc = rc


class ConnectionRefused(ConnectFailed):
    """The broker answered CONNECT with a failure reason code (bad user name or password, not authorized...)."""


class TlsFailure(ConnectFailed):
    """The TLS handshake failed (untrusted or expired certificate, wrong host name, certificate required)."""


class PublishFailed(LinkError):
    """paho refused to queue a publish; `rc` is paho's error code."""

    def __init__(self, reason: str, rc: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rc = rc


__all__ = [
    "CommandError",
    "ConnectFailed",
    "ConnectionRefused",
    "LinkError",
    "LinkSetupError",
    "OutboxError",
    "PayloadError",
    "PublishFailed",
    "TlsFailure",
    "TopicError",
]
