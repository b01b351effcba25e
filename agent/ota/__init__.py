"""The device's updater: signed model delivery over MQTT (TUF trust through python-tuf, block transfer, install).

Public face: `ModelUpdater.check` (one check of a desired release), its `OtaConfig`, the `RepoPort` transport it
needs, the update life cycle (`UpdateState`, `UpdateMachine`, `UpdateRecord`) and the errors it reports.
"""

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
