"""The manual model controls' work on the main thread: list the installed versions, activate one, roll back.

`agent.daemon.model_commands` answers the requests (MQTT and the control socket) and runs these on the main thread.
Invariants: a refusal changes nothing and says why; a manual activation goes through the golden gate and a trial like
an update, and holds later updates until the desired state changes; a rollback marks the replaced release rejected.
"""

from __future__ import annotations

from typing import Any

from agent.daemon.activation import ActivationService, same_release
from agent.errors import AgentError
from agent.ota import links
from agent.ota.activation import FINISHED, PRE_SERVING, SERVING
from agent.ota.state import ReleaseId, UpdateState
from agent.release.formats import Activation


class ManualControl:
    """`models list | activate VERSION | rollback [VERSION]` on one activation service (main thread)."""

    def __init__(self, service: ActivationService) -> None:
        self._service = service

    def models_list(self) -> dict[str, Any]:
        """Installed versions per model, which is active and previous, the model in service, the record."""
        models: list[dict[str, Any]] = []
        folder = self._service.layout.models_dir
        for model_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            name = model_dir.name
            active = links.version_of(links.read_link(self._service.layout, name, links.ACTIVE))
            previous = links.version_of(links.read_link(self._service.layout, name, links.PREVIOUS))
            models.append(
                {
                    "name": name,
                    "installed": self._service.layout.installed_versions(name),
                    "active": active,
                    "previous": previous,
                }
            )
        serving = self._service.ports.models.active
        return {
            "serving": {
                "name": serving.model.name,
                "version": serving.model.version,
                "bundle": str(serving.model.bundle.path),
            }
            if serving is not None
            else None,
            "models": models,
            "activation": self._service.status(),
        }

    def activate_version(self, version: int) -> dict[str, Any]:
        """Puts installed version `version` of the model in service through the gate and a trial."""
        active = self._service.ports.models.active
        if active is None:
            raise AgentError("no model in service: nothing to compare a release with")
        record = self._service.record
        if record is not None and record.state in PRE_SERVING | {UpdateState.TRIAL}:
            raise AgentError(
                f"{record.release} is {record.state.value}: roll it back or wait for its verdict"
            )
        name = active.model.name
        if version == active.model.version:
            raise AgentError(f"{name} v{version} is already in service")
        bundle = self._service.layout.bundle(name, version)
        if not bundle.is_dir():
            installed = ", ".join(f"v{v}" for v in self._service.layout.installed_versions(name)) or "none"
            raise AgentError(f"{name} v{version} is not installed here (installed: {installed})")
        release = ReleaseId(name=name, version=version)
        delivery = self._service.ports.delivery()
        signed = delivery.activation if delivery is not None and delivery.release == release else None
        desired = self._service.ports.desired()
        begun = self._service.begin(
            release,
            bundle,
            signed or Activation(),
            "manual",
            delivery.ram_mb if delivery is not None and delivery.release == release else None,
            desired_version=desired.version if desired is not None else None,
        )
        return {
            "ok": True,
            "state": begun.state.value,
            "release": str(release),
            "message": f"{release}: golden gate next",
        }

    def rollback(self, version: int | None = None, reason: str | None = None) -> dict[str, Any]:
        """The previous model back in service; the replaced release marked rejected."""
        record = self._service.record
        active = self._service.ports.models.active
        in_progress = record.release.version if record is not None and record.state not in FINISHED else None
        if version is not None and version not in (in_progress, active.model.version if active else None):
            return {
                "ok": False,
                "message": f"v{version} is neither in service nor being activated: nothing done",
            }
        why = reason or "a rollback command"
        if record is not None and record.state in PRE_SERVING:
            self._service.abort(record, "rollback", why)
            return {
                "ok": True,
                "state": "rejected",
                "message": f"{record.release} rejected before serving: {why}",
            }
        if (
            record is None
            or record.state not in SERVING
            or active is None
            or not same_release(active.model, record.release)
        ):
            return {
                "ok": False,
                "message": "nothing to roll back: the model in service was not activated here",
            }
        if record.previous_bundle is None:
            return {"ok": False, "message": f"{record.release} has no previous model to return to"}
        self._service.abort(record, "rollback", why)
        return {
            "ok": True,
            "state": "rejected",
            "message": f"{record.release} rolled back to {record.previous}: {why}",
        }


__all__ = ["ManualControl"]
