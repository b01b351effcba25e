"""`edge-fleet samples list|pull DEVICE` (hard examples off a device) and `edge-fleet retrain-watch` (a hook when drift
persists across a share of a group): the operator's half of closing the loop to retraining.

Exit status as for every edge-fleet command: 0 done; 1 an error (no reply, a sample that failed its hash, a hook
that could not start); 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.fleet.acl import InventoryError, parse_inventory
from agent.fleet.argtypes import count, seconds
from agent.fleet.client import FleetClient
from agent.fleet.errors import EXIT_OK, FleetError, UsageError
from agent.fleet.options import ConnectOptions, add_connection_arguments
from agent.fleet.render import notice
from agent.fleet.retrain import DriftWatch, Episode, drifting_of
from agent.fleet.samples import DeviceSamples, pull
from agent.fleet.stream import local_time
from agent.link.wire import InboundMessage, PayloadError, Status, Telemetry, TopicError, parse, validate_id
from agent.term import print_json

CMD_TIMEOUT_S = 10.0
STALE_S = 180.0
HOOK_ENV = (
    "EDGE_FLEET_FLEET",
    "EDGE_FLEET_GROUP",
    "EDGE_FLEET_DEVICES",
    "EDGE_FLEET_MEMBERS",
    "EDGE_FLEET_SHARE",
)
"""What a retrain hook finds in its environment (the devices as comma-separated ids, the share as a decimal)."""


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1: {text!r}")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `samples` (list, pull) and `retrain-watch` to edge-fleet's command tree."""
    samples = sub.add_parser("samples", help="hard examples a device kept (drift, anomaly, low confidence)")
    verbs = samples.add_subparsers(dest="samples_command", required=True, metavar="ACTION")
    listing = verbs.add_parser("list", help="the samples a device holds")
    pulling = verbs.add_parser(
        "pull", help="fetch every sample (hash-checked), then let the device delete them"
    )
    for leaf in (listing, pulling):
        leaf.add_argument("device", metavar="DEVICE", help="device id")
        leaf.add_argument("--json", action="store_true", help="print the result as JSON")
        leaf.add_argument(
            "--timeout",
            type=seconds,
            default=CMD_TIMEOUT_S,
            metavar="S",
            help=f"seconds to wait for each reply (default {CMD_TIMEOUT_S:g}; each request is tried 3 times)",
        )
        add_connection_arguments(leaf, suppress=True)
    listing.set_defaults(handler=run_samples_list)
    pulling.add_argument(
        "--out",
        type=Path,
        default=Path("samples"),
        metavar="DIR",
        help="where to write them: DIR/DEVICE/{id}.jpg|.npy and {id}.json (default ./samples)",
    )
    pulling.set_defaults(handler=run_samples_pull)

    watch = sub.add_parser(
        "retrain-watch", help="run a hook command when drift persists across a share of a group's devices"
    )
    watch.add_argument("--group", required=True, metavar="NAME", help="the group to watch")
    members = watch.add_mutually_exclusive_group(required=True)
    members.add_argument("--devices", metavar="ID,ID,...", help="the group's devices")
    members.add_argument(
        "--inventory",
        type=Path,
        metavar="FILE",
        help="the fleet inventory (TOML, as for `acl`) naming the groups",
    )
    watch.add_argument(
        "--share",
        type=_share,
        required=True,
        metavar="X",
        help="share of the group's devices drifting (0 < X <= 1)",
    )
    watch.add_argument(
        "--hook",
        required=True,
        metavar="CMD",
        help=f"shell command run once per episode, with {', '.join(HOOK_ENV)} in its environment",
    )
    watch.add_argument(
        "--stale-s",
        type=seconds,
        default=STALE_S,
        metavar="S",
        help=f"a device's drift report counts for S seconds (default {STALE_S:g})",
    )
    watch.add_argument("--json", action="store_true", help="print each episode as one JSON line")
    watch.add_argument("--count", type=count, metavar="N", help="exit after N episodes (and their hooks)")
    watch.add_argument("--timeout", type=seconds, metavar="S", help="exit after S seconds")
    add_connection_arguments(watch, suppress=True)
    watch.set_defaults(handler=run_retrain_watch)


# -- samples ----------------------------------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> str:
    try:
        return validate_id(args.device, "device id")
    except TopicError as problem:
        raise UsageError(str(problem)) from None


def run_samples_list(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet samples list DEVICE`: one line per sample, or the listing as JSON."""
    device = _device(args)
    with FleetClient(options) as client:
        listing = DeviceSamples(client, options.topics(), device, args.timeout, notice).listing()
    if args.json:
        print_json(
            {
                "device": device,
                "count": listing.count,
                "bytes": listing.bytes,
                "evicted": listing.evicted,
                "unreadable": listing.unreadable,
                "samples": [meta.model_dump(mode="json", by_alias=True) for meta in listing.samples],
            },
            flush=True,
        )
        return EXIT_OK
    for meta in listing.samples:
        model = f"{meta.model.name} v{meta.model.version}" if meta.model else "-"
        sys.stdout.write(
            f"{meta.id}  {meta.trigger:<14}  {meta.size:>9} B  {meta.format:<4}  {model}  {local_time(meta.time)}  "
            f"{meta.sha256[:12]}\n"
        )
    sys.stdout.write(
        f"{listing.count} sample{'s' if listing.count != 1 else ''}, {listing.bytes} bytes held on {device}; "
        f"{listing.evicted} evicted unconfirmed since the agent started\n"
    )
    for sample_id in listing.unreadable:
        sys.stdout.write(f"{sample_id}: unreadable metadata on the device (kept there)\n")
    sys.stdout.flush()
    return EXIT_OK


def run_samples_pull(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet samples pull DEVICE`: fetch, verify, write, confirm; exit 1 if any sample failed its hash."""
    device = _device(args)
    folder = args.out / device
    with FleetClient(options) as client:
        report = pull(DeviceSamples(client, options.topics(), device, args.timeout, notice), folder, notice)
    if args.json:
        print_json({"device": device, "folder": str(folder), **report.to_dict()}, flush=True)
    else:
        sys.stdout.write(
            f"{device}: {len(report.pulled)} pulled, {len(report.present)} already in {folder}, "
            f"{len(report.confirmed)} confirmed (deleted on the device), {len(report.failed)} failed\n"
        )
        for sample_id, why in report.not_confirmed.items():
            sys.stdout.write(f"{sample_id}: not confirmed: {why}\n")
        sys.stdout.flush()
    if report.failed:
        raise FleetError(
            f"{len(report.failed)} sample(s) failed their hash and stay on {device}: {', '.join(report.failed)}"
        )
    return EXIT_OK


# -- retrain-watch ----------------------------------------------------------------------------------------------------


def _members(args: argparse.Namespace, options: ConnectOptions) -> list[str]:
    try:
        validate_id(args.group, "group")
        if args.devices is not None:
            found = [
                validate_id(part.strip(), "device id") for part in args.devices.split(",") if part.strip()
            ]
        else:
            try:
                text = args.inventory.read_text(encoding="utf-8")
            except OSError as problem:
                raise UsageError(f"cannot read {args.inventory}: {problem.strerror or problem}") from None
            inventory = parse_inventory(text, str(args.inventory))
            fleet = inventory.fleets.get(options.fleet)
            if fleet is None:
                raise UsageError(f"{args.inventory} has no fleet {options.fleet}")
            found = [device.id for device in fleet.devices if args.group in device.groups]
    except (TopicError, InventoryError) as problem:
        raise UsageError(str(problem)) from None
    if not found:
        raise UsageError(f"group {args.group} has no devices")
    return found


def _apply(watch: DriftWatch, options: ConnectOptions, message: InboundMessage, now: float) -> None:
    parsed = options.topics().parse(message.topic)
    if parsed is None or parsed.device is None:
        return
    try:
        if parsed.kind == "telemetry":
            telemetry = parse(Telemetry, message.payload)
            if telemetry.device == parsed.device:
                watch.report(parsed.device, drifting_of(telemetry.metrics), now)
        elif (
            parsed.kind == "status"
            and message.payload.strip()
            and parse(Status, message.payload).state == "offline"
        ):
            watch.offline(parsed.device)
    except PayloadError:
        return  # not ours to judge: `edge-fleet status` counts invalid payloads


def _start_hook(command: str, episode: Episode, options: ConnectOptions) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "EDGE_FLEET_PASSWORD"}
    env |= dict(
        zip(
            HOOK_ENV,
            (
                options.fleet,
                episode.group,
                ",".join(episode.drifting),
                ",".join(episode.members),
                f"{episode.share:.4f}",
            ),
            strict=True,
        )
    )
    try:
        return subprocess.Popen(
            command, shell=True, env=env, stdin=subprocess.DEVNULL
        )  # the operator's own command line
    except OSError as problem:
        raise FleetError(f"cannot start the hook {command!r}: {problem.strerror or problem}") from None


def run_retrain_watch(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet retrain-watch`: one line and one hook run per drift episode of the group."""
    try:
        watch = DriftWatch(args.group, _members(args, options), args.share, args.stale_s)
    except ValueError as problem:
        raise UsageError(str(problem)) from None
    topics = options.topics()
    stop_at = None if args.timeout is None else time.monotonic() + args.timeout
    hook: subprocess.Popen[bytes] | None = None
    with FleetClient(options) as client:
        client.subscribe([topics.filter("telemetry"), topics.filter("status")])
        for message in client.messages(stop_at, tick_s=1.0, notice=notice):
            now = time.monotonic()
            if message is not None:
                _apply(watch, options, message, now)
            if hook is not None and hook.poll() is not None:
                _hook_done(hook)
                hook = None
            episode = watch.check(now)
            if episode is None:
                continue
            line = episode.to_dict()
            if args.json:
                print_json(line, flush=True)
            else:
                sys.stdout.write(
                    f"retrain: {len(episode.drifting)} of {len(episode.members)} devices of {episode.group} drift "
                    f"({episode.share:.0%}): {', '.join(episode.drifting)}\n"
                )
                sys.stdout.flush()
            if hook is not None:
                notice("the previous hook is still running; this episode's hook is skipped")
            else:
                hook = _start_hook(args.hook, episode, options)
            if args.count is not None and watch.fired >= args.count:
                if hook is not None:
                    hook.wait()
                    _hook_done(hook)
                return EXIT_OK
    if hook is not None:
        hook.wait()
        _hook_done(hook)
    if args.count is not None:
        raise FleetError(f"timed out after {args.timeout:g} s with {watch.fired} of {args.count} episodes")
    return EXIT_OK


def _hook_done(hook: subprocess.Popen[bytes]) -> None:
    if hook.returncode != 0:
        notice(f"the hook exited with status {hook.returncode}")


__all__ = ["HOOK_ENV", "add_commands", "run_retrain_watch", "run_samples_list", "run_samples_pull"]
