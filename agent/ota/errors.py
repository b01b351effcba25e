"""The updater's errors: a refusal (the release is not for this device, or not genuine) and a failure (try again).

Both carry a short machine-readable `code` (it goes into the `update` event's evidence) and a one-line reason as
`str(error)`. python-tuf's exceptions and the transport's are wrapped into these at the updater's boundary.
"""

from __future__ import annotations

from agent.errors import AgentError, UpdateRejected


class UpdateRefused(UpdateRejected):
    """A release this device will not install: not listed, not meant for it, not newer, not genuine or unsafe."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class UpdateFailed(AgentError):
    """An update step that did not complete (link down, timeouts, disk); `retry` says whether a later check may."""

    def __init__(self, code: str, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.code = code
        self.retry = retry


class TransferFailed(UpdateFailed):
    """The block transfer gave up: a block missing after every try, the data budget spent, or the link lost."""


class InvalidTransition(AgentError):
    """An update step out of order (a state machine bug, never a remote input)."""


class Interrupted(AgentError):
    """The check was asked to stop (a newer desired state, the daemon stopping); the download resumes later."""


__all__ = ["Interrupted", "InvalidTransition", "TransferFailed", "UpdateFailed", "UpdateRefused"]
