"""`edge-fleet rollout start|status|pause|resume|abort`: staged rollouts of a signed release to a group, in waves that
advance on the devices' own verdicts and abort on failures, devices going offline, or model-quality figures.

Exit status: 0 completed (start, resume), done (pause, abort), or printed (status); 1 an error (connection, no such
rollout); 2 a usage error, or the rollout is driven by another operator (or was taken over); 3 the rollout aborted;
4 the rollout is paused (held by its rules, or by `rollout pause`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.fleet.argtypes import count
from agent.fleet.client import FleetClient
from agent.fleet.errors import EXIT_OK, FleetError, UsageError
from agent.fleet.layout import FleetTopics
from agent.fleet.options import ConnectOptions, add_connection_arguments
from agent.fleet.render import notice
from agent.fleet.rollout import (
    DISCOVER_S,
    OWNER_STALE_S,
    Driver,
    RecordStore,
    Release,
    RolloutRecord,
    control_topic,
    counts_of,
    default_state_dir,
    fold_status,
    new_record,
    read_record,
    rollout_topic,
)
from agent.fleet.rollout_policy import (
    STANDINGS,
    Policy,
    PolicyError,
    parse_conditions,
    parse_share,
    parse_waves,
)
from agent.fleet.stream import local_time
from agent.link.wire import Status, TopicError, validate_id
from agent.term import console, print_json

CONTROL_WAIT_S = 30.0
FINAL = ("completed", "aborted")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `rollout` (start, status, pause, resume, abort) to edge-fleet's command tree."""
    rollout = sub.add_parser(
        "rollout", help="staged rollout of a release to a group, in waves that judge the devices"
    )
    verbs = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    start = verbs.add_parser("start", help="plan the waves and drive them (in the foreground) to the end")
    start.add_argument(
        "release", metavar="NAME:VERSION", help="the release, e.g. digits-det:3 (published with `release`)"
    )
    start.add_argument("--group", required=True, metavar="G", help="the group whose devices receive it")
    start.add_argument(
        "--waves",
        default="1%,10%,50%,100%",
        metavar="P,P,...",
        help="cumulative shares (default 1%%,10%%,50%%,100%%)",
    )
    start.add_argument(
        "--min-devices", type=count, default=1, metavar="N", help="each wave judges at least N devices"
    )
    start.add_argument(
        "--success", default="95%", metavar="P", help="share of a wave that must commit (default 95%%)"
    )
    start.add_argument(
        "--abort-failures",
        default="5%",
        metavar="P",
        help="abort above this share of failed devices (default 5%%)",
    )
    start.add_argument(
        "--abort-offline",
        default="10%",
        metavar="P",
        help="abort above this share of devices offline after the update (default 10%%)",
    )
    start.add_argument(
        "--abort-on",
        metavar="COND,...",
        help="abort when a device reports e.g. 'agreement<0.9,latency_p95_ms>40,drift' (figures of its update)",
    )
    start.add_argument(
        "--soak", type=duration, default=600.0, metavar="T", help="hold after a wave succeeds (default 10m)"
    )
    start.add_argument(
        "--wave-timeout",
        type=duration,
        default=1800.0,
        metavar="T",
        help="hold a wave still undecided after T (30m)",
    )
    start.add_argument(
        "--offline-grace",
        type=duration,
        default=10.0,
        metavar="T",
        help="offline longer than T counts (default 10s)",
    )
    start.add_argument("--id", metavar="ID", help="rollout id (default NAME-vVERSION-GROUP)")
    start.set_defaults(handler=run_start)

    status = verbs.add_parser(
        "status", help="the waves, the devices per state, and the figures behind each decision"
    )
    status.add_argument(
        "id", nargs="?", metavar="ID", help="a rollout (default: list the rollouts on this machine)"
    )
    status.add_argument("--json", action="store_true", help="print the whole record as JSON")
    status.add_argument(
        "--watch", action="store_true", help="a live table until the rollout ends (Ctrl-C leaves)"
    )
    status.set_defaults(handler=run_status)

    for name, text, handler in (
        ("pause", "hold the rollout after the current decision (its driver exits with status 4)", run_pause),
        ("resume", "drive a paused rollout (or one whose driver died) on, in the foreground", run_resume),
        ("abort", "stop the rollout and roll back every device it updated", run_abort),
    ):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("id", metavar="ID", help="the rollout")
        if name != "resume":
            verb.add_argument(
                "--reason", default="by the operator", metavar="TEXT", help="why, for the record"
            )
        else:
            verb.add_argument(
                "--take-over",
                action="store_true",
                help="drive it even though its owner's heartbeat is fresh (that driver is known dead); "
                "the old driver, if alive, stops",
            )
        verb.set_defaults(handler=handler)

    for leaf in (start, status, *(verbs.choices[name] for name in ("pause", "resume", "abort"))):
        leaf.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            metavar="DIR",
            help="where this machine keeps rollout records (default $XDG_STATE_HOME/edge-fleet/rollouts)",
        )
        add_connection_arguments(leaf, suppress=True)


def duration(text: str) -> float:
    """`30s`, `10m`, `2h`, or seconds; 0 allowed (no soak)."""
    raw = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(raw[-1:])
    number = raw[:-1] if scale is not None else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (write 30s, 10m or 2h)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _store(args: argparse.Namespace) -> RecordStore:
    return RecordStore(args.state_dir or default_state_dir())


def _release(text: str) -> Release:
    name, _, version = text.partition(":")
    try:
        validate_id(name, "release name")
        number = int(version)
    except (TopicError, ValueError):
        raise UsageError(f"give the release as NAME:VERSION, e.g. digits-det:3, not {text!r}") from None
    if number < 1:
        raise UsageError(f"the version must be at least 1: {text!r}")
    return Release(name=name, version=number)


def _id(text: str) -> str:
    try:
        return validate_id(text, "rollout id")
    except TopicError as problem:
        raise UsageError(str(problem)) from None


def discover(
    client: FleetClient, topics: FleetTopics, rollout_id: str, wait_s: float = DISCOVER_S
) -> tuple[dict[str, Status], RolloutRecord | None]:
    """Subscribes to every status, the rollout's record and its control topic; collects the retained ones."""
    client.subscribe(
        [topics.filter("status"), rollout_topic(topics, rollout_id), control_topic(topics, rollout_id)]
    )
    statuses: dict[str, Status] = {}
    retained: RolloutRecord | None = None
    for message in client.messages(time.monotonic() + wait_s, tick_s=0.5):
        if message is None or not message.payload.strip():
            continue
        if message.topic == rollout_topic(topics, rollout_id):
            try:
                retained = read_record(message.payload, message.topic)
            except FleetError:
                continue
            continue
        fold_status(topics, statuses, message)
    return statuses, retained


def existing(
    client: FleetClient, topics: FleetTopics, store: RecordStore, rollout_id: str
) -> tuple[dict[str, Status], RolloutRecord | None, RolloutRecord]:
    """The statuses, the retained record and the newest record of a rollout (this machine's or the broker's);
    FleetError when neither has it."""
    statuses, retained = discover(client, topics, rollout_id)
    record = _newest(store.load(rollout_id), retained)
    if record is None:
        raise FleetError(f"no rollout {rollout_id} on this machine or on the broker")
    return statuses, retained, record


def _newest(local: RolloutRecord | None, retained: RolloutRecord | None) -> RolloutRecord | None:
    if local is None or (retained is not None and retained.updated > local.updated):
        return retained
    return local


def _alive(record: RolloutRecord) -> bool:
    owner = record.owner
    return owner is not None and owner.heartbeat is not None and time.time() - owner.heartbeat < OWNER_STALE_S


# -- start, resume ----------------------------------------------------------------------------------------------------


def run_start(args: argparse.Namespace, options: ConnectOptions) -> int:
    release = _release(args.release)
    try:
        group = validate_id(args.group, "group")
        policy = Policy(
            waves=parse_waves(args.waves),
            min_devices=args.min_devices,
            success=parse_share(args.success, "--success"),
            abort_failures=parse_share(args.abort_failures, "--abort-failures"),
            abort_offline=parse_share(args.abort_offline, "--abort-offline"),
            abort_on=parse_conditions(args.abort_on),
            soak_s=args.soak,
            wave_timeout_s=args.wave_timeout,
            offline_grace_s=args.offline_grace,
        )
    except (PolicyError, TopicError) as problem:
        raise UsageError(str(problem)) from None
    rollout_id = _id(args.id or f"{release.name}-v{release.version}-{group}")
    store = _store(args)
    existing = store.load(rollout_id)
    if existing is not None:
        raise UsageError(_exists(existing))
    topics = options.topics()
    with FleetClient(options) as client:
        statuses, retained = discover(client, topics, rollout_id)
        if retained is not None:
            raise UsageError(_exists(retained))
        record = new_record(rollout_id, release, group, topics.fleet, policy, statuses)
        notice(
            f"rollout {rollout_id}: {release.name} v{release.version} to group {group}, waves "
            + " | ".join(", ".join(wave.devices) for wave in record.waves)
            + (f"; skipped (offline): {', '.join(record.skipped)}" if record.skipped else "")
        )
        driver = Driver(client, topics, store, record, notice, statuses)
        driver.claim(None)
        return driver.run()


def _exists(record: RolloutRecord) -> str:
    if record.state in FINAL:
        return f"rollout {record.id} already ran ({record.state}): give --id for a new one"
    return f"rollout {record.id} exists ({record.state}): `rollout resume {record.id}` or `rollout abort {record.id}`"


def run_resume(args: argparse.Namespace, options: ConnectOptions) -> int:
    rollout_id, store, topics = _id(args.id), _store(args), options.topics()
    with FleetClient(options) as client:
        statuses, retained, record = existing(client, topics, store, rollout_id)
        if record.state in FINAL:
            raise UsageError(f"rollout {rollout_id} is {record.state}: nothing to resume")
        if record.state == "running" and not _alive(record):
            notice(f"rollout {rollout_id}: its driver is gone; taking it over")
        driver = Driver(client, topics, store, record, notice, statuses)
        driver.claim(retained, force=args.take_over)
        wave = driver.record.waves[driver.record.wave]
        if wave.state == "held":
            wave.state, wave.started, wave.succeeded = "running", time.time(), None
        driver.record.state, driver.record.reason = "running", None
        driver.record.note("resumed")
        driver.save()
        return driver.run()


# -- pause, abort -----------------------------------------------------------------------------------------------------


def _control(args: argparse.Namespace, options: ConnectOptions, action: str) -> int:
    rollout_id, store, topics = _id(args.id), _store(args), options.topics()
    with FleetClient(options) as client:
        statuses, retained, record = existing(client, topics, store, rollout_id)
        allowed = ("running",) if action == "pause" else ("running", "paused")
        if record.state not in allowed:
            raise UsageError(f"rollout {rollout_id} is {record.state}: cannot {action} it")
        if record.state == "running" and _alive(record):
            request = {"action": action, "reason": args.reason}
            client.publish(control_topic(topics, rollout_id), json.dumps(request).encode())
            want = "paused" if action == "pause" else "aborted"
            for message in client.messages(time.monotonic() + CONTROL_WAIT_S, tick_s=0.5):
                if message is None or message.topic != rollout_topic(topics, rollout_id):
                    continue
                try:
                    seen = read_record(message.payload, message.topic)
                except FleetError:
                    continue
                if seen.state in (want, "aborted", "completed"):
                    if store.load(rollout_id) is not None:
                        store.save(seen)
                    notice(f"rollout {rollout_id} {seen.state}" + (f": {seen.reason}" if seen.reason else ""))
                    return EXIT_OK
            raise FleetError(
                f"rollout {rollout_id}: its driver did not answer the {action} within {CONTROL_WAIT_S:g} s"
            )
        driver = Driver(client, topics, store, record, notice, statuses)
        driver.claim(retained)
        if action == "pause":
            driver.pause(f"paused: {args.reason}")
        else:
            driver.abort(f"aborted by the operator: {args.reason}")
        return EXIT_OK


def run_pause(args: argparse.Namespace, options: ConnectOptions) -> int:
    return _control(args, options, "pause")


def run_abort(args: argparse.Namespace, options: ConnectOptions) -> int:
    return _control(args, options, "abort")


# -- status -----------------------------------------------------------------------------------------------------------


def _fetch(options: ConnectOptions, rollout_id: str) -> RolloutRecord | None:
    topics = options.topics()
    with FleetClient(options) as client:
        client.subscribe([rollout_topic(topics, rollout_id)])
        for message in client.messages(time.monotonic() + DISCOVER_S, tick_s=0.5):
            if message is not None and message.payload.strip():
                return read_record(message.payload, message.topic)
    return None


def run_status(args: argparse.Namespace, options: ConnectOptions) -> int:
    store = _store(args)
    if args.id is None:
        table = Table(
            "rollout", "release", "group", "state", "wave", "updated", title=f"rollouts in {store.folder}"
        )
        for rollout_id in store.ids():
            try:
                record = store.load(rollout_id)
            except FleetError:
                continue
            if record is not None:
                table.add_row(
                    record.id,
                    f"{record.release.name} v{record.release.version}",
                    record.group,
                    record.state,
                    f"{record.wave + 1}/{len(record.waves)}",
                    local_time(record.updated),
                )
        if args.json:
            records = [store.load(rollout_id) for rollout_id in store.ids()]
            print_json(
                [record.model_dump(by_alias=True) for record in records if record is not None], flush=True
            )
        else:
            console().print(table)
        return EXIT_OK
    rollout_id = _id(args.id)

    def current() -> RolloutRecord:
        record = store.load(rollout_id) or _fetch(options, rollout_id)
        if record is None:
            raise FleetError(f"no rollout {rollout_id} in {store.folder} or on the broker")
        return record

    record = current()
    if args.json:
        print_json(record.model_dump(by_alias=True), flush=True)
        return EXIT_OK
    if not args.watch:
        console().print(render(record))
        return EXIT_OK
    with Live(render(record), console=console(), auto_refresh=False) as live:
        while record.state not in FINAL:
            time.sleep(1.0)
            record = current()
            live.update(render(record), refresh=True)
    return EXIT_OK


def render(record: RolloutRecord) -> Group:
    """The rollout as a header, a table of waves and a table of devices."""
    release = f"{record.release.name} v{record.release.version}"
    owner = record.owner
    driven = (
        f", driven by {owner.host} pid {owner.pid} (epoch {owner.epoch})"
        if owner is not None and _alive(record)
        else ""
    )
    header = Text(
        f"rollout {record.id}: {release} to group {record.group} - {record.state}"
        + (f" ({record.reason})" if record.reason else "")
        + driven
    )
    waves = Table("wave", "share", *STANDINGS, "decision", title="waves")
    for index, wave in enumerate(record.waves):
        counts = counts_of(record, wave) if wave.state != "pending" else dict.fromkeys(STANDINGS, 0)
        decision: str = wave.state
        if wave.judgement:
            decision += ": " + "; ".join(wave.judgement.get("reasons", []))
        waves.add_row(
            f"{index + 1}{' <' if index == record.wave and record.state == 'running' else ''}",
            f"{wave.share:.0%} ({len(wave.devices)})",
            *(str(counts[name]) for name in STANDINGS),
            decision,
        )
    devices = Table(
        "device",
        "wave",
        "standing",
        "update",
        "agreement",
        "p95 ms",
        "budget ms",
        "rollback",
        title="devices",
    )
    for name, device in sorted(record.devices.items(), key=lambda item: (item[1].wave or 0, item[0])):
        figures = device.figures
        devices.add_row(
            name,
            str((device.wave or 0) + 1),
            device.standing,
            (device.update or "") + (f" ({device.reason})" if device.reason else ""),
            _figure(figures.get("agreement")),
            _figure(figures.get("latency_p95_ms")),
            _figure(figures.get("budget_ms")),
            device.rollback or "",
        )
    return Group(header, waves, devices)


def _figure(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


__all__ = ["add_commands", "duration", "render"]
