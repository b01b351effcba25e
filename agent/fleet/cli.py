"""`edge-fleet`: the operator's view of an edge-agent fleet over MQTT (status table, event stream, commands, hard
examples and the retraining trigger: agent/fleet/hard_cli.py), and
the operator's offline tools for signed model releases (`keys`, `trust`, `bundle`, `release`: agent/fleet/trust_cli.py
and release_cli.py), which touch files only and read no connection option.

Exit status: 0 success; 1 an error (connection refused, TLS, no reply, the device answered with an error), one line
on stderr `edge-fleet: error: ...`; 2 a usage error (argparse's, malformed JSON args); 130 Ctrl-C. Never a traceback
(`EDGE_FLEET_DEBUG=1` shows one for an internal error).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from rich.live import Live

from agent import __version__
from agent.errors import AgentError
from agent.fleet import command, hard_cli, release_cli, rollout_cli, trust_cli
from agent.fleet.argtypes import count, seconds
from agent.fleet.client import FleetClient
from agent.fleet.errors import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandFailed,
    FleetError,
    UsageError,
)
from agent.fleet.options import ConnectOptions, add_connection_arguments, new_token, options_from_args
from agent.fleet.render import error, fleet_table, notice
from agent.fleet.stream import EventStream, event_json, event_line
from agent.fleet.view import FleetView
from agent.fsutil import write_atomic
from agent.link.wire import EventType
from agent.release.formats import Desired
from agent.term import console, print_json

STATUS_ONCE_S = 2.0
CMD_TIMEOUT_S = 10.0
REFRESH_S = 0.5
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree; connection flags go before or after the subcommand."""
    parser = argparse.ArgumentParser(
        prog="edge-fleet",
        description="Operate an edge-agent fleet over MQTT: device status, events, commands; "
        "signing keys, TUF trust and signed model releases.",
    )
    parser.add_argument("--version", action="version", version=f"edge-fleet {__version__}")
    add_connection_arguments(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser(
        "status", help="table of devices: online/offline, model, fps, latency, drops, anomalies"
    )
    mode = status.add_mutually_exclusive_group()
    mode.add_argument(
        "--watch", action="store_true", help="live, refreshing table until Ctrl-C (the default)"
    )
    mode.add_argument("--once", action="store_true", help="collect for --timeout seconds, print once, exit")
    status.add_argument(
        "--timeout",
        type=seconds,
        metavar="S",
        help=f"--once: seconds to collect (default {STATUS_ONCE_S:g}); live: stop after S seconds",
    )
    status.add_argument("--json", action="store_true", help="print the view as JSON (implies --once)")
    add_connection_arguments(status, suppress=True)
    status.set_defaults(handler=run_status)

    watch = sub.add_parser("watch", help="live stream of events, each event id once")
    watch.add_argument("device", nargs="?", metavar="DEVICE", help="only this device (default: every device)")
    watch.add_argument(
        "--type",
        action="append",
        choices=EVENT_TYPES,
        dest="types",
        help="only events of this type (repeatable)",
    )
    watch.add_argument("--json", action="store_true", help="print each event's payload as one JSON line")
    watch.add_argument(
        "--count", type=count, metavar="N", help="exit after N events (exit 1 if --timeout ends first)"
    )
    watch.add_argument("--timeout", type=seconds, metavar="S", help="exit after S seconds")
    add_connection_arguments(watch, suppress=True)
    watch.set_defaults(handler=run_watch)

    cmd = sub.add_parser("cmd", help="send a command to a device and print its reply")
    cmd.add_argument("device", metavar="DEVICE", help="device id")
    cmd.add_argument("name", metavar="NAME", help="command: ping, get-config, set-config, snapshot, ...")
    cmd.add_argument(
        "args", nargs="?", metavar="JSON", help="arguments as a JSON object, e.g. '{\"max_bytes\": 50000}'"
    )
    cmd.add_argument(
        "--timeout",
        type=seconds,
        default=CMD_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the reply (default 10)",
    )
    cmd.add_argument("--json", action="store_true", help="print the whole reply as JSON")
    cmd.add_argument("--out", type=Path, metavar="FILE", help="snapshot: write the JPEG to FILE")
    add_connection_arguments(cmd, suppress=True)
    cmd.set_defaults(handler=run_cmd)

    desire = sub.add_parser(
        "desire", help="set (retained) the model release a device or a group should run; --clear removes it"
    )
    target = desire.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", metavar="ID", help="this device (overrides its group's)")
    target.add_argument("--group", metavar="NAME", help="every device of this group")
    desire.add_argument("model", nargs="?", metavar="NAME", help="model name")
    desire.add_argument("version", nargs="?", type=count, metavar="VERSION", help="model version")
    desire.add_argument("--clear", action="store_true", help="remove the desired state instead")
    add_connection_arguments(desire, suppress=True)
    desire.set_defaults(handler=run_desire)

    hard_cli.add_commands(sub)
    trust_cli.add_commands(sub)
    release_cli.add_commands(sub)
    rollout_cli.add_commands(sub)
    from agent.fleet.serve import add_serve_parser  # the block repository (agent/fleet/serve.py)

    add_serve_parser(sub)
    return parser


# -- status -----------------------------------------------------------------------------------------------------------


def run_status(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet status`: collect and print once, or keep a live table."""
    if args.json and args.watch:
        raise UsageError("--json prints the view once: leave out --watch")
    topics = options.topics()
    view = FleetView(topics)
    filters = [topics.filter(kind) for kind in ("status", "telemetry", "events")]
    with FleetClient(options) as client:
        client.subscribe(filters)
        if args.once or args.json:
            collect_s: float = args.timeout or STATUS_ONCE_S
            stop_at = time.monotonic() + collect_s
            for message in client.messages(stop_at, tick_s=1.0):
                if message is not None:
                    view.apply(message)
            now = time.time()
            if args.json:
                print_json(view.to_dict(now), flush=True)
            else:
                console().print(fleet_table(view, now, options.where))
            return EXIT_OK
        until = None if args.timeout is None else time.monotonic() + args.timeout
        out = console()
        with Live(fleet_table(view, time.time(), options.where), console=out, auto_refresh=False) as live:
            for message in client.messages(until, tick_s=REFRESH_S, notice=notice):
                if message is not None:
                    view.apply(message)
                else:
                    live.update(fleet_table(view, time.time(), options.where), refresh=True)
            live.update(fleet_table(view, time.time(), options.where), refresh=True)
        if not out.is_terminal:
            out.line()  # rich leaves the last frame without its newline when stdout is a pipe
    return EXIT_OK


# -- watch ------------------------------------------------------------------------------------------------------------


def run_watch(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet watch`: one line (or JSON line) per new event."""
    topics = options.topics()
    stream = EventStream(topics, set(args.types) if args.types else None)
    topic_filter = topics.filter("events", args.device or "+")
    shown = 0
    stop_at = None if args.timeout is None else time.monotonic() + args.timeout
    with FleetClient(options) as client:
        client.subscribe([topic_filter])
        for message in client.messages(stop_at, tick_s=1.0, notice=notice):
            event = None if message is None else stream.accept(message)
            if event is None:
                continue
            sys.stdout.write((event_json(event) if args.json else event_line(event)) + "\n")
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                return EXIT_OK
    if args.count is not None:
        raise FleetError(f"timed out after {args.timeout:g} s with {shown} of {args.count} events")
    return EXIT_OK


# -- cmd --------------------------------------------------------------------------------------------------------------


def run_desire(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet desire`: publishes (retained) or clears the desired state of a device or a group."""
    if args.clear == (args.model is not None):
        raise UsageError("give NAME VERSION, or --clear alone")
    if args.model is not None and args.version is None:
        raise UsageError("give the model version too")
    layout = options.topics()
    topic = (
        layout.device(args.device).desired if args.device else layout.device("x").group_desired(args.group)
    )
    payload = (
        b""
        if args.clear
        else Desired(model=args.model, version=args.version).model_dump_json(by_alias=True).encode()
    )
    with FleetClient(options) as client:
        client.publish(topic, payload, retain=True)
    notice(
        f"{'cleared' if args.clear else 'set'} {topic}"
        + ("" if args.clear else f": {args.model} v{args.version}")
    )
    return EXIT_OK


def run_cmd(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet cmd`: send, wait for the reply, print it (and save a snapshot's JPEG with --out)."""
    if args.out is not None and args.name != "snapshot":
        raise UsageError("--out is only for the snapshot command")
    call = command.build_call(args.device, args.name, args.args, new_token())  # checked before connecting
    with FleetClient(options) as client:
        try:
            reply = command.send(client, options.topics(), call, args.timeout)
        except CommandFailed as failed:
            if args.json:
                print_json(failed.reply.model_dump(by_alias=True), flush=True)
            raise
    data: dict[str, Any] = dict(reply.data)
    if args.out is not None:
        jpeg = command.snapshot_jpeg(reply)
        try:
            write_atomic(args.out, jpeg, mode=0o644)
        except OSError as problem:
            raise FleetError(f"cannot write {args.out}: {problem.strerror or problem}") from None
        data["jpeg_base64"] = f"<{len(jpeg)} bytes written to {args.out}>"
    elif isinstance(data.get("jpeg_base64"), str) and not args.json:
        data["jpeg_base64"] = f"<{len(data['jpeg_base64'])} base64 characters; --out FILE saves the JPEG>"
    if args.json:
        print_json(
            reply.model_dump(by_alias=True) | ({"data": data} if args.out is not None else {}), flush=True
        )
    else:
        print_json(data, flush=True)
    return EXIT_OK


# -- keys, trust, bundle, release ----------------------------------------------------------------------------------


def run_offline(args: argparse.Namespace) -> int:
    """Runs a files-only subcommand; a file system error becomes one line naming the file."""
    try:
        status: int = args.handler(args)
        return status
    except BrokenPipeError:
        raise
    except OSError as problem:
        where = f"{problem.filename}: " if problem.filename else ""
        raise FleetError(f"{where}{problem.strerror or problem}") from None


# -- entry point ------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "offline", False):
            return run_offline(args)
        options = options_from_args(args, os.environ)
        status: int = args.handler(args, options)
        return status
    except FleetError as problem:
        error(str(problem))
        return problem.exit_status
    except (
        AgentError
    ) as problem:  # the link's errors: connection refused, TLS, unreadable password or TLS files
        error(str(problem))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `edge-fleet watch | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as problem:  # a bug: one line; the traceback only on request
        if os.environ.get("EDGE_FLEET_DEBUG"):
            raise
        error(
            f"internal error: {type(problem).__name__}: {problem} (set EDGE_FLEET_DEBUG=1 for the traceback)"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
