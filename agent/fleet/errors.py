"""edge-fleet's exceptions: one root, `FleetError`, each kind carrying the exit status it means.

Connection failures are the link's own `ConnectFailed` family, made by the same diagnosis code as the agent's (both
reached through `agent.link.wire`), so an operator and a device read the same words for the same cause. paho, ssl and
socket exceptions never leave `agent.fleet.client`.
"""

from __future__ import annotations

from agent.errors import AgentError
from agent.link.wire import CommandReply

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70


class FleetError(AgentError):
    """Root of every error edge-fleet reports as one line; `exit_status` is the process exit status it means."""

    exit_status = EXIT_ERROR


class UsageError(FleetError):
    """The command line is wrong in a way argparse cannot see (malformed JSON args, a bad id, options that clash)."""

    exit_status = EXIT_USAGE


class BrokerRefused(FleetError):
    """The broker refused a subscription or a publish (reason code in the SUBACK or PUBACK)."""


class CommandFailed(FleetError):
    """The device answered a command with an error reply; `reply` is that reply."""

    def __init__(self, reply: CommandReply) -> None:
        super().__init__(f"{reply.command}: {reply.reason or 'the device gave no reason'}")
        self.reply = reply


class NoReply(FleetError):
    """No reply to a command arrived within the timeout."""


class KeyFileError(FleetError):
    """A key file is missing, unreadable or malformed, or its passphrase is missing or wrong."""


class StoreError(FleetError):
    """The repository store is missing, not initialised, locked, or holds metadata that cannot be read."""


class SigningError(FleetError):
    """The `--sign` keys are not keys of the role, or do not reach its threshold (as python-tuf counts it)."""


class ReleaseRefused(FleetError):
    """A release cannot be published: a version not above the published ones, an archive that is not a bundle."""


__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "BrokerRefused",
    "CommandFailed",
    "FleetError",
    "KeyFileError",
    "NoReply",
    "ReleaseRefused",
    "SigningError",
    "StoreError",
    "UsageError",
]
