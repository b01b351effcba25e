"""The manual model controls: `models-list`, `activate VERSION`, `rollback [VERSION]`, remote (MQTT commands) and local
(the control socket: `edge-agent models list|activate|rollback`).

Handlers run on the link's command thread or the control socket's; the work runs on the main thread (the activation
is the main thread's), and the handler waits for it at most `WAIT_S`. Invariants: every request gets one reply; a
refusal (a version not installed, an activation under way, nothing to roll back to, a version that is not the one in
service) changes nothing and says why (`CommandError` remotely, `ok: false` locally).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.daemon.activation_control import ManualControl
from agent.daemon.ports import MainThread
from agent.errors import AgentError
from agent.link import CommandError, NoArgs
from agent.link.commands import CommandRouter
from agent.link.payloads import ActivateArgs, RollbackArgs

if TYPE_CHECKING:
    from agent.daemon.activation import ActivationService

WAIT_S = 8.0
"""How long a command waits for the main thread (a gate runs at the next tick, so activate returns at once)."""


class ModelCommands:
    """Answers the model controls through the main thread."""

    def __init__(self, activation: ActivationService, main: MainThread) -> None:
        self._activation = ManualControl(activation)
        self._main = main

    def register(self, router: CommandRouter) -> None:
        """Adds models-list, activate and rollback to the link's router."""
        router.register("models-list", self.models_list, NoArgs)
        router.register("activate", self.activate, ActivateArgs)
        router.register("rollback", self.rollback, RollbackArgs)

    def control_handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """The same controls for the local control socket (requests like {"cmd": "activate", "version": 3})."""
        return {
            "models-list": lambda _request: self._call(self._activation.models_list),
            "activate": lambda request: self._local(self.activate, ActivateArgs, request),
            "rollback": lambda request: self._local(self.rollback, RollbackArgs, request),
        }

    def models_list(self, _: NoArgs) -> dict[str, Any]:
        """Installed versions, which is active and previous, the activation record."""
        return self._call(self._activation.models_list)

    def activate(self, args: ActivateArgs) -> dict[str, Any]:
        """Puts an installed version in service through the golden gate and a trial."""
        return self._call(lambda: self._activation.activate_version(args.version))

    def rollback(self, args: RollbackArgs) -> dict[str, Any]:
        """The previous model back in service; the replaced one marked rejected."""
        reply = self._call(lambda: self._activation.rollback(args.version, args.reason))
        if not reply.get("ok", False):
            raise CommandError(str(reply.get("message", "nothing done")))
        return reply

    def _call(self, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            return self._main.call(work, WAIT_S)
        except AgentError as problem:
            raise CommandError(str(problem)) from None

    @staticmethod
    def _local(
        handler: Callable[[Any], dict[str, Any]],
        kind: type[ActivateArgs] | type[RollbackArgs],
        request: dict[str, Any],
    ) -> dict[str, Any]:
        fields = {key: value for key, value in request.items() if key != "cmd"}
        try:
            args = kind.model_validate(fields)
        except ValueError as problem:
            return {"ok": False, "message": f"bad arguments: {problem}"}
        try:
            return handler(args)
        except CommandError as problem:
            return {"ok": False, "message": str(problem)}


__all__ = ["ModelCommands"]
