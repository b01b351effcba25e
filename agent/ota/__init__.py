"""The device's updater: signed model delivery over MQTT (TUF trust through python-tuf, block transfer, install).

Public face: `ModelUpdater.check` (one check of a desired release), its `OtaConfig`, the `RepoPort` transport it
needs, the update life cycle (`UpdateState`, `UpdateMachine`, `UpdateRecord`) and the errors it reports.
Importing this package loads nothing heavy: the names are imported on first use (PEP 562), so the config tree can read
`agent.ota.config` without pulling in python-tuf and cryptography on a device whose updater is off.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.ota.checks import DeviceFacts
    from agent.ota.config import OtaConfig
    from agent.ota.errors import Interrupted, InvalidTransition, TransferFailed, UpdateFailed, UpdateRefused
    from agent.ota.fetcher import RepoFetcher
    from agent.ota.layout import Layout
    from agent.ota.port import Message, RepoPort
    from agent.ota.state import ReleaseId, UpdateMachine, UpdateRecord, UpdateState
    from agent.ota.store import RecordDamaged, load_record, save_record
    from agent.ota.transfer import TransferReport
    from agent.ota.updater import CheckOutcome, CheckStatus, ModelUpdater

_LAZY: dict[str, str] = {
    "CheckOutcome": "agent.ota.updater",
    "CheckStatus": "agent.ota.updater",
    "DeviceFacts": "agent.ota.checks",
    "Interrupted": "agent.ota.errors",
    "InvalidTransition": "agent.ota.errors",
    "Layout": "agent.ota.layout",
    "Message": "agent.ota.port",
    "ModelUpdater": "agent.ota.updater",
    "OtaConfig": "agent.ota.config",
    "RecordDamaged": "agent.ota.store",
    "ReleaseId": "agent.ota.state",
    "RepoFetcher": "agent.ota.fetcher",
    "RepoPort": "agent.ota.port",
    "TransferFailed": "agent.ota.errors",
    "TransferReport": "agent.ota.transfer",
    "UpdateFailed": "agent.ota.errors",
    "UpdateMachine": "agent.ota.state",
    "UpdateRecord": "agent.ota.state",
    "UpdateRefused": "agent.ota.errors",
    "UpdateState": "agent.ota.state",
    "load_record": "agent.ota.store",
    "save_record": "agent.ota.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.ota' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CheckOutcome",
    "CheckStatus",
    "DeviceFacts",
    "Interrupted",
    "InvalidTransition",
    "Layout",
    "Message",
    "ModelUpdater",
    "OtaConfig",
    "RecordDamaged",
    "ReleaseId",
    "RepoFetcher",
    "RepoPort",
    "TransferFailed",
    "TransferReport",
    "UpdateFailed",
    "UpdateMachine",
    "UpdateRecord",
    "UpdateRefused",
    "UpdateState",
    "load_record",
    "save_record",
]
