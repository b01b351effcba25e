"""`edge-agent models list | activate VERSION | rollback [VERSION]`: the running daemon's model versions, by hand.

Each subcommand is one request on the control socket; the daemon does the work on its main thread (the activation
goes through the golden gate and a trial, exactly as an update does). A refusal prints its reason and exits 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.term import console, print_json, table


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `models`."""
    models = sub.add_parser(
        "models", help="the running daemon's installed model versions: list, activate, rollback"
    )
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="installed versions, the active and previous ones, the activation"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of tables")
    listing.set_defaults(handler=run_list)
    activate = actions.add_parser(
        "activate", help="put an installed version in service (through the golden gate and a trial)"
    )
    activate.add_argument("version", type=int, help="the installed version")
    activate.set_defaults(handler=run_activate)
    rollback = actions.add_parser(
        "rollback", help="the previous model back in service; the replaced one is marked rejected"
    )
    rollback.add_argument(
        "version", type=int, nargs="?", default=None, help="only if this is the version in service"
    )
    rollback.add_argument("--reason", default=None, help="why, for the event and the record")
    rollback.set_defaults(handler=run_rollback)
    for parser in (listing, activate, rollback):
        parser.add_argument(
            "--config", type=Path, default=None, help="agent.toml, to find the control socket"
        )
        parser.add_argument(
            "--socket", type=Path, default=None, help="control socket path (overrides the config)"
        )


def _request(args: argparse.Namespace, cmd: str, **fields: Any) -> Any:
    from agent.config import load_config
    from agent.daemon.control import request

    socket_path = args.socket if args.socket is not None else load_config(args.config).resolved_socket()
    return request(socket_path, cmd, timeout_s=15.0, **fields)


def run_list(args: argparse.Namespace) -> int:
    """Prints the installed versions and the activation record."""
    data = _request(args, "models-list")
    if args.json:
        print_json(data)
        return 0
    out = console()
    serving = data.get("serving")
    out.print(f"in service: {serving['name']} v{serving['version']}" if serving else "in service: no model")
    rows = [
        [
            model["name"],
            version,
            "active" if version == model["active"] else ("previous" if version == model["previous"] else ""),
        ]
        for model in data.get("models", [])
        for version in model["installed"]
    ]
    if rows:
        out.print(table("installed", ["model", "version", "link"], rows))
    activation = data.get("activation") or {}
    if activation.get("state"):
        release = activation["release"]
        line = f"activation: {release['name']} v{release['version']} {activation['state']}"
        if activation.get("verdict"):
            line += f" ({activation['verdict']})"
        if activation.get("reason"):
            line += f": {activation['reason']}"
        out.print(line)
    return 0


def _done(reply: Any) -> int:
    if not isinstance(reply, dict) or not reply.get("ok", False):
        message = reply.get("message") if isinstance(reply, dict) else reply
        raise AgentError(f"nothing done: {message}")
    console().print(str(reply.get("message", "done")))
    return 0


def run_activate(args: argparse.Namespace) -> int:
    """Asks the daemon to activate an installed version."""
    return _done(_request(args, "activate", version=args.version))


def run_rollback(args: argparse.Namespace) -> int:
    """Asks the daemon to put the previous model back."""
    fields: dict[str, Any] = {}
    if args.version is not None:
        fields["version"] = args.version
    if args.reason:
        fields["reason"] = args.reason
    return _done(_request(args, "rollback", **fields))


__all__ = ["add_parsers"]
