"""The operator's side of the fleet link: `edge-fleet` (status table, event stream, commands over MQTT 5).

Public face:
    main(argv) -> exit status                       the `edge-fleet` console script (agent/fleet/cli.py)
    ConnectOptions, options_from_args               where and as whom to connect (flags, $EDGE_FLEET_*)
    FleetClient                                     an operator's MQTT 5 connection (paho wrapped; no thread)
    FleetTopics                                     the fleet's topic layout for any device, and reply topics
    FleetView, DeviceRow                            devices folded from status, telemetry and events (pure)
    EventStream                                     events de-duplicated by id and filtered by type (pure)
    FleetError, UsageError, CommandFailed, NoReply, BrokerRefused   what goes wrong, with its exit status
Signed model releases (files only, no broker; imported from their modules, not re-exported here, so that
`edge-fleet status` loads neither tuf nor the inference core):
    agent.fleet.keys        new_key_pair, load_public_key, load_signer, read_passphrase   ed25519 key files
    agent.fleet.repository  FileRepository (python-tuf's Repository over the store), Expiry   the store layout
    agent.fleet.trust       init_trust, add_key, remove_key, set_threshold, rotate_root, resign, resign_timestamp
    agent.fleet.release     publish, list_releases, revert, read_manifest, signable_custom
    agent.fleet.pack        pack_bundle (inference core check, golden self-test, archive, block index)
    KeyFileError, StoreError, SigningError, ReleaseRefused (agent.fleet.errors)
Hard examples and the retraining trigger (`edge-fleet samples`, `retrain-watch`; agent/fleet/hard_cli.py):
    agent.fleet.samples     DeviceSamples (sample-list/chunk/confirm, paced, hash-checked), pull, SampleCorrupt
    agent.fleet.retrain     DriftWatch, Episode (pure: drift share of a group, once per episode)
The wire contract is the agent's own, reached through the link's one public module for the operator side,
`agent.link.wire` (payloads, topics, errors, the paho boundary): the operator never re-states it. Nothing here imports
the device's running parts (`agent.cli`, `agent.daemon`, `agent.sources`, `agent.pipeline`, `agent.monitor`,
`agent.ota`) or any other module of `agent.link`; `bundle pack` uses the inference core (`agent.inference`) and the
releases the shared release format (`agent.release`); terminal output helpers come from `agent.term`.
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.fleet.client import ConnectionLost, FleetClient
from agent.fleet.errors import BrokerRefused, CommandFailed, FleetError, NoReply, UsageError
from agent.fleet.layout import FleetTopics
from agent.fleet.options import ConnectOptions, options_from_args
from agent.fleet.stream import EventStream
from agent.fleet.view import DeviceRow, FleetView


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `edge-fleet` (imported here on use, so `python -m agent.fleet.cli` does not import its module twice)."""
    from agent.fleet.cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "BrokerRefused",
    "CommandFailed",
    "ConnectOptions",
    "ConnectionLost",
    "DeviceRow",
    "EventStream",
    "FleetClient",
    "FleetError",
    "FleetTopics",
    "FleetView",
    "NoReply",
    "UsageError",
    "main",
    "options_from_args",
]
