"""`edge-fleet keys ...` and `edge-fleet trust ...`: key pairs and the repository's roots, as subcommands.

These work on files only (no broker): each handler takes the parsed arguments and returns the exit status; every
failure is a `FleetError` (one line, exit 1) or a `UsageError` (exit 2). The signing flags shared with `release`
(`--repo`, `--sign ROLE=KEYFILE`, `--passphrase-file`, `--expires ROLE=DAYS`) are defined and read here.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.fleet.argtypes import count
from agent.fleet.errors import EXIT_OK, UsageError
from agent.fleet.render import notice

if TYPE_CHECKING:  # imported on use below: `edge-fleet status` need not load tuf and cryptography
    from securesystemslib.signer import Key, Signer

    from agent.fleet.repository import Expiry
    from agent.fleet.trust import RootChange

ROLE_NAMES = ("root", "targets", "snapshot", "timestamp")


# -- argument types ---------------------------------------------------------------------------------------------------


def role_file(text: str) -> tuple[str, Path]:
    """`ROLE=FILE`, for --sign."""
    role, sep, path = text.partition("=")
    if not sep or role not in ROLE_NAMES or not path:
        raise argparse.ArgumentTypeError(
            f"expected ROLE=KEYFILE with ROLE one of {', '.join(ROLE_NAMES)}: {text!r}"
        )
    return role, Path(path).expanduser()


def role_days(text: str) -> tuple[str, float]:
    """`ROLE=DAYS`, for --expires."""
    role, sep, days = text.partition("=")
    try:
        value = float(days)
    except ValueError:
        value = float("nan")
    if not sep or role not in ROLE_NAMES or not value > 0 or value > 36500:
        raise argparse.ArgumentTypeError(
            f"expected ROLE=DAYS (more than 0) with ROLE one of {', '.join(ROLE_NAMES)}: {text!r}"
        )
    return role, value


def add_signing_arguments(parser: argparse.ArgumentParser, *, repo: bool = True) -> None:
    """--repo, --sign ROLE=KEYFILE (repeatable), --passphrase-file, --expires ROLE=DAYS (repeatable)."""
    if repo:
        parser.add_argument(
            "--repo", type=Path, required=True, metavar="DIR", help="the release repository (store)"
        )
    group = parser.add_argument_group("signing")
    group.add_argument(
        "--sign",
        type=role_file,
        action="append",
        default=[],
        metavar="ROLE=KEYFILE",
        help="sign ROLE (root, targets, snapshot, timestamp) with this private key file; repeatable",
    )
    group.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="passphrase of the encrypted key files (else $EDGE_FLEET_KEY_PASSPHRASE)",
    )
    group.add_argument(
        "--expires",
        type=role_days,
        action="append",
        default=[],
        metavar="ROLE=DAYS",
        help="validity of ROLE's new metadata (defaults: root 365, targets 90, snapshot 7, timestamp 1)",
    )


def signing_from_args(args: argparse.Namespace) -> tuple[dict[str, list[Signer]], Expiry]:
    """The signers (role -> signers, each key file read once) and the Expiry the signing flags ask for."""
    from agent.fleet.keys import load_signer, read_passphrase
    from agent.fleet.repository import Expiry

    passphrase = read_passphrase(args.passphrase_file, os.environ) if args.sign else None
    loaded: dict[Path, Signer] = {}
    signers: dict[str, list[Signer]] = {}
    for role, path in args.sign:
        key = path.resolve()
        if key not in loaded:
            loaded[key] = load_signer(path, passphrase)
        signers.setdefault(role, []).append(loaded[key])
    return signers, Expiry().with_days(dict(args.expires))


def warn_expiring(repo: Path, within: timedelta = timedelta(days=30)) -> None:
    """A notice on stderr for each offline role (root, targets) that expires within `within`."""
    from agent.fleet.repository import utc_now
    from agent.fleet.trust import describe_trust

    horizon = utc_now() + within
    for role in describe_trust(repo):
        if role.role in ("root", "targets") and role.expires <= horizon:
            notice(
                f"{role.role} v{role.version} expires at {role.expires:%Y-%m-%d %H:%M}Z: "
                f"`edge-fleet trust resign {role.role}` gives it a new version before devices refuse it"
            )


# -- keys -------------------------------------------------------------------------------------------------------------


def run_keys_new(args: argparse.Namespace) -> int:
    """`edge-fleet keys new NAME --out DIR`: an ed25519 key pair."""
    from agent.fleet.keys import new_key_pair, read_passphrase

    pair = new_key_pair(args.name, args.out, read_passphrase(args.passphrase_file, os.environ))
    state = "encrypted" if pair.encrypted else "not encrypted"
    sys.stdout.write(
        f"private  {pair.private} (mode 0600, {state})\npublic   {pair.public}\nkeyid    {pair.keyid}\n"
    )
    if not pair.encrypted:
        notice(f"{pair.private} is not encrypted: keep it offline (or make it with --passphrase-file)")
    return EXIT_OK


# -- trust ------------------------------------------------------------------------------------------------------------


def _public_keys(paths: list[Path]) -> tuple[Key, ...]:
    from agent.fleet.keys import load_public_key

    return tuple(load_public_key(path) for path in paths)


def run_trust_init(args: argparse.Namespace) -> int:
    """`edge-fleet trust init`: version 1 of every role; prints the bootstrap root's path."""
    from agent.fleet.trust import RoleKeys, init_trust

    roles = {
        "root": RoleKeys(_public_keys(args.root_key), args.root_threshold),
        "targets": RoleKeys(_public_keys(args.targets_key), args.targets_threshold),
        "snapshot": RoleKeys(_public_keys(args.snapshot_key), args.snapshot_threshold),
        "timestamp": RoleKeys(_public_keys(args.timestamp_key), args.timestamp_threshold),
    }
    signers, expiry = signing_from_args(args)
    root = init_trust(args.repo, roles, signers, expiry)
    sys.stdout.write(f"{root}\n")
    notice(
        f"{root} is the bootstrap root: ship it as firmware-config/trust/root.json (/etc/edge-agent/trust/root.json)"
    )
    return EXIT_OK


def _report_root_change(change: RootChange) -> int:
    sys.stdout.write(f"{change.root_path}\n")
    if change.resigned:
        notice("re-signed " + ", ".join(f"{role} v{version}" for role, version in change.resigned.items()))
    return EXIT_OK


def run_trust_add_key(args: argparse.Namespace) -> int:
    """`edge-fleet trust add-key ROLE PUB`."""
    from agent.fleet.trust import add_key

    (key,) = _public_keys([args.key])
    signers, expiry = signing_from_args(args)
    return _report_root_change(add_key(args.repo, args.role, key, signers, expiry))


def run_trust_remove_key(args: argparse.Namespace) -> int:
    """`edge-fleet trust remove-key ROLE KEYID`."""
    from agent.fleet.trust import remove_key

    signers, expiry = signing_from_args(args)
    return _report_root_change(remove_key(args.repo, args.role, args.keyid, signers, expiry))


def run_trust_set_threshold(args: argparse.Namespace) -> int:
    """`edge-fleet trust set-threshold ROLE N`."""
    from agent.fleet.trust import set_threshold

    signers, expiry = signing_from_args(args)
    return _report_root_change(set_threshold(args.repo, args.role, args.threshold, signers, expiry))


def run_trust_rotate(args: argparse.Namespace) -> int:
    """`edge-fleet trust rotate --root-key PUB ... --root-threshold N`: new root keys."""
    from agent.fleet.trust import rotate_root

    keys = _public_keys(args.root_key)
    if len({key.keyid for key in keys}) != len(keys):
        raise UsageError("a --root-key is given twice")
    signers, expiry = signing_from_args(args)
    return _report_root_change(rotate_root(args.repo, keys, args.root_threshold, signers, expiry))


def run_trust_resign(args: argparse.Namespace) -> int:
    """`edge-fleet trust resign ROLE`: fresh expiries for ROLE and the roles above it."""
    from agent.fleet.trust import resign

    signers, expiry = signing_from_args(args)
    versions = resign(args.repo, args.role, signers, expiry)
    if args.role == "root":
        sys.stdout.write(f"{args.repo / 'metadata' / f'{versions[args.role]}.root.json'}\n")
    else:
        sys.stdout.write(
            "re-signed " + ", ".join(f"{role} v{version}" for role, version in versions.items()) + "\n"
        )
    return EXIT_OK


def run_trust_show(args: argparse.Namespace) -> int:
    """`edge-fleet trust show`: each role's version, expiry, threshold and keys."""
    from agent.fleet.trust import describe_trust
    from agent.term import console, print_json, table

    roles = describe_trust(args.repo)
    if args.json:
        print_json(
            [
                {
                    "role": r.role,
                    "version": r.version,
                    "expires": r.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "threshold": r.threshold,
                    "keyids": list(r.keyids),
                }
                for r in roles
            ]
        )
        return EXIT_OK
    rows = [
        [
            r.role,
            r.version,
            r.expires.strftime("%Y-%m-%d %H:%M:%SZ"),
            f"{r.threshold} of {len(r.keyids)}",
            " ".join(r.keyids),
        ]
        for r in roles
    ]
    console().print(table(str(args.repo), ("role", "version", "expires", "threshold", "keyids"), rows))
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Adds `keys` and `trust` to the subcommands."""
    keys = sub.add_parser("keys", help="signing key pairs (ed25519)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = keys_sub.add_parser("new", help="make a key pair: NAME.key (0600) and NAME.pub.json")
    new.add_argument("name", metavar="NAME", help="file name of the pair")
    new.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the pair in")
    new.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="encrypt the private key (else $EDGE_FLEET_KEY_PASSPHRASE)",
    )
    new.set_defaults(handler=run_keys_new, offline=True)

    trust = sub.add_parser("trust", help="the release repository's TUF roots: keys and thresholds")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True, metavar="COMMAND")
    init = trust_sub.add_parser("init", help="version 1 of root, targets, snapshot and timestamp")
    for role, required_threshold in (
        ("root", True),
        ("targets", False),
        ("snapshot", False),
        ("timestamp", False),
    ):
        init.add_argument(
            f"--{role}-key",
            type=Path,
            action="append",
            required=True,
            metavar="PUB",
            help=f"a {role} public key; repeatable",
        )
        init.add_argument(
            f"--{role}-threshold",
            type=count,
            required=required_threshold,
            default=None if required_threshold else 1,
            metavar="N",
            help=f"{role} signatures needed" + ("" if required_threshold else " (default 1)"),
        )
    add_signing_arguments(init)
    init.set_defaults(handler=run_trust_init, offline=True)

    add = trust_sub.add_parser("add-key", help="a new root with one more key for ROLE")
    add.add_argument("role", choices=ROLE_NAMES, metavar="ROLE", help="root, targets, snapshot or timestamp")
    add.add_argument("key", type=Path, metavar="PUB", help="the public key file (NAME.pub.json)")
    add_signing_arguments(add)
    add.set_defaults(handler=run_trust_add_key, offline=True)

    remove = trust_sub.add_parser("remove-key", help="a new root without one key of ROLE")
    remove.add_argument(
        "role", choices=ROLE_NAMES, metavar="ROLE", help="root, targets, snapshot or timestamp"
    )
    remove.add_argument(
        "keyid", metavar="KEYID", help="the keyid (or a unique prefix of 8 characters or more)"
    )
    add_signing_arguments(remove)
    remove.set_defaults(handler=run_trust_remove_key, offline=True)

    setter = trust_sub.add_parser("set-threshold", help="a new root with another threshold for ROLE")
    setter.add_argument(
        "role", choices=ROLE_NAMES, metavar="ROLE", help="root, targets, snapshot or timestamp"
    )
    setter.add_argument("threshold", type=count, metavar="N", help="signatures needed")
    add_signing_arguments(setter)
    setter.set_defaults(handler=run_trust_set_threshold, offline=True)

    rotate = trust_sub.add_parser(
        "rotate", help="a new root with new root keys (signed by the old and the new)"
    )
    rotate.add_argument(
        "--root-key",
        type=Path,
        action="append",
        required=True,
        metavar="PUB",
        help="a new root public key; repeatable",
    )
    rotate.add_argument(
        "--root-threshold", type=count, required=True, metavar="N", help="root signatures needed"
    )
    add_signing_arguments(rotate)
    rotate.set_defaults(handler=run_trust_rotate, offline=True)

    again = trust_sub.add_parser(
        "resign", help="new versions of ROLE and the roles above it, with fresh expiries"
    )
    again.add_argument(
        "role", choices=ROLE_NAMES, metavar="ROLE", help="root, targets, snapshot or timestamp"
    )
    add_signing_arguments(again)
    again.set_defaults(handler=run_trust_resign, offline=True)

    show = trust_sub.add_parser("show", help="each role's version, expiry, threshold and keyids")
    show.add_argument(
        "--repo", type=Path, required=True, metavar="DIR", help="the release repository (store)"
    )
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(handler=run_trust_show, offline=True)


__all__ = ["ROLE_NAMES", "add_commands", "add_signing_arguments", "signing_from_args", "warn_expiring"]
