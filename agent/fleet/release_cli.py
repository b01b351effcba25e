"""`edge-fleet bundle pack` and `edge-fleet release publish|list|revert`, as subcommands.

Files only (no broker). Pack and publish draw a progress bar on stderr when it is a terminal (`agent.term`); what they
made is printed on stdout. Every failure is one line (exit 1), a usage error exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.fleet.errors import EXIT_OK, UsageError
from agent.fleet.trust_cli import add_signing_arguments, signing_from_args, warn_expiring
from agent.term import progress_bar

if TYPE_CHECKING:
    from agent.fleet.release import Published

FLEET_ENV = "EDGE_FLEET_FLEET"


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` for --activation; VALUE read as JSON when it is (600, 0.95, true), else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not raw:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE: {text!r}")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def _fleet(args: argparse.Namespace, required: bool) -> str | None:
    fleet = getattr(args, "fleet", None) or os.environ.get(FLEET_ENV) or None
    if fleet is None and required:
        raise UsageError(f"--fleet (${FLEET_ENV}) names the fleet the release is for")
    return fleet


def _activation(args: argparse.Namespace) -> Any:
    if not args.activation:
        return None
    from agent.fleet.release import activation_from

    values: dict[str, object] = {}
    for key, value in args.activation:
        if key in values:
            raise UsageError(f"--activation {key} is given twice")
        values[key] = value
    return activation_from(values)


def _report(published: Published, repo: Path) -> int:
    groups = ", ".join(published.groups) if published.groups else "every group"
    versions = ", ".join(f"{role} v{version}" for role, version in published.versions.items())
    sys.stdout.write(
        f"published {published.name} v{published.version} for fleet {published.fleet} ({groups})\n"
        f"archive   {published.archive_target} ({published.length} bytes, sha256 {published.sha256}, "
        f"{published.blocks} blocks)\n"
        f"index     {published.index_target}\n"
        f"signed    {versions}\n"
    )
    warn_expiring(repo)
    return EXIT_OK


def run_bundle_pack(args: argparse.Namespace) -> int:
    """`edge-fleet bundle pack MODEL_DIR -o OUT.tar`."""
    from agent.fleet.pack import pack_bundle

    with progress_bar() as progress:
        packed = pack_bundle(args.model_dir, args.out, progress)
    golden = packed.golden
    sys.stdout.write(
        f"archive  {packed.archive}\n"
        f"bundle   {packed.name} v{packed.version} ({packed.runtime}, {packed.input_kind} input)\n"
        f"golden   {len(golden.cases)} case(s) passed (worst deviation {golden.worst:.3g}, tolerance {golden.tolerance:g})\n"
        f"size     {packed.size} bytes\n"
        f"sha256   {packed.sha256}\n"
        f"blocks   {packed.blocks} ({packed.chunking})\n"
        f"drift    {packed.drift}\n"
    )
    return EXIT_OK


def run_release_publish(args: argparse.Namespace) -> int:
    """`edge-fleet release publish ARCHIVE`."""
    from agent.fleet.release import publish

    fleet = _fleet(args, required=True)
    assert fleet is not None
    activation = _activation(args)
    signers, expiry = signing_from_args(args)
    with progress_bar() as progress:
        published = publish(
            args.repo,
            args.archive,
            fleet=fleet,
            groups=args.groups,
            min_agent_version=args.min_agent_version or "0",
            activation=activation,
            signers=signers,
            expiry=expiry,
            progress=progress,
        )
    return _report(published, args.repo)


def run_release_revert(args: argparse.Namespace) -> int:
    """`edge-fleet release revert NAME --to VERSION`."""
    from agent.fleet.release import revert

    activation = _activation(args)
    signers, expiry = signing_from_args(args)
    with progress_bar() as progress:
        published = revert(
            args.repo,
            args.name,
            args.to,
            fleet=_fleet(args, required=False),
            groups=args.groups or None,
            min_agent_version=args.min_agent_version,
            activation=activation,
            signers=signers,
            expiry=expiry,
            progress=progress,
        )
    return _report(published, args.repo)


def run_release_list(args: argparse.Namespace) -> int:
    """`edge-fleet release list`: name, version, fleet, groups, size, published."""
    from agent.fleet.release import list_releases
    from agent.term import console, print_json, table

    rows = list_releases(args.repo)
    if args.json:
        print_json(
            [
                row.custom.model_dump(mode="json", by_alias=True)
                | {"size": row.size, "sha256": row.sha256, "published": row.published}
                for row in rows
            ]
        )
        return EXIT_OK
    cells = [
        [row.name, row.version, row.fleet, " ".join(row.groups) or "(all)", row.size, row.published or ""]
        for row in rows
    ]
    console().print(table(str(args.repo), ("name", "version", "fleet", "groups", "size", "published"), cells))
    return EXIT_OK


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"versions start at 1: {text!r}")
    return value


def _release_arguments(parser: argparse.ArgumentParser, *, for_revert: bool) -> None:
    default = " (default: the old release's)" if for_revert else ""
    parser.add_argument(
        "--fleet",
        default=argparse.SUPPRESS,
        metavar="FLEET",
        help=f"the fleet the release is for (else ${FLEET_ENV}){default}",
    )
    parser.add_argument(
        "--group",
        dest="groups",
        action="append",
        default=[],
        metavar="GROUP",
        help=f"a group it is for; repeatable (none: every group of the fleet){default}",
    )
    parser.add_argument(
        "--min-agent-version", metavar="V", help=f"oldest edge-agent that may run it (default 0){default}"
    )
    parser.add_argument(
        "--activation",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"an activation threshold, e.g. trial_s=600 or shadow=true; repeatable{default}",
    )
    add_signing_arguments(parser)


def add_commands(sub: Any) -> None:
    """Adds `bundle` and `release` to the subcommands."""
    bundle = sub.add_parser("bundle", help="model bundles: check, golden-test and pack for release")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    pack = bundle_sub.add_parser(
        "pack", help="check the bundle against its model, run its golden test, pack it"
    )
    pack.add_argument(
        "model_dir", type=Path, metavar="MODEL_DIR", help="the bundle folder (with manifest.json)"
    )
    pack.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.tar", help="the archive to write")
    pack.set_defaults(handler=run_bundle_pack, offline=True)

    release = sub.add_parser("release", help="signed model releases in the repository")
    release_sub = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    publish = release_sub.add_parser("publish", help="sign and publish a bundle archive")
    publish.add_argument(
        "archive", type=Path, metavar="ARCHIVE", help="an archive from `edge-fleet bundle pack`"
    )
    _release_arguments(publish, for_revert=False)
    publish.set_defaults(handler=run_release_publish, offline=True)

    listing = release_sub.add_parser("list", help="the published releases")
    listing.add_argument(
        "--repo", type=Path, required=True, metavar="DIR", help="the release repository (store)"
    )
    listing.add_argument("--json", action="store_true", help="print each release's signed fields as JSON")
    listing.set_defaults(handler=run_release_list, offline=True)

    revert = release_sub.add_parser("revert", help="re-release an old bundle under a new version")
    revert.add_argument("name", metavar="NAME", help="model name")
    revert.add_argument(
        "--to", type=_version, required=True, metavar="VERSION", help="the published version to go back to"
    )
    _release_arguments(revert, for_revert=True)
    revert.set_defaults(handler=run_release_revert, offline=True)


__all__ = ["add_commands"]
