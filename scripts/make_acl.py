#!/usr/bin/env python3
"""Renders the fleet broker's Mosquitto ACL from an inventory (devices per fleet, operators, repository users).

    scripts/make_acl.py INVENTORY [-o FILE] [--prefix 'edge/{fleet}/']

Writes the ACL to FILE (atomically: a temporary file beside it, then a rename) or to stdout. Mosquitto reads its
acl_file at start and again on SIGHUP: `systemctl reload mosquitto` (or `kill -HUP $(pidof mosquitto)`) after
writing it admits a new device, or removes one, without a restart. The inventory format is
firmware-config/mosquitto/inventory.example.toml; an invalid inventory is one line per problem on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.fleet.acl import DEFAULT_PREFIX, InventoryError, parse_inventory, render_acl  # noqa: E402

__all__ = [
    "DEFAULT_PREFIX",
    "InventoryError",
    "main",
    "parse_inventory",
    "render_acl",
    "render_file",
    "write_acl",
]


def render_file(inventory: Path, prefix: str = DEFAULT_PREFIX) -> str:
    """The ACL text for the inventory file (InventoryError when it cannot be read or is invalid)."""
    try:
        text = inventory.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise InventoryError(f"{inventory}: cannot read: {problem}") from None
    return render_acl(parse_inventory(text, str(inventory)), prefix, source=str(inventory))


def write_acl(path: Path, text: str) -> None:
    """Writes `text` to `path` atomically (mode 0644: Mosquitto may drop privileges before reading it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("inventory", type=Path, help="the inventory (TOML)")
    parser.add_argument("-o", "--output", type=Path, help="write the ACL here (default: stdout)")
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"topic prefix template (default {DEFAULT_PREFIX!r})"
    )
    args = parser.parse_args(argv)
    try:
        text = render_file(args.inventory, args.prefix)
    except InventoryError as problem:
        for line in str(problem).splitlines():
            print(f"make_acl: error: {line}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_acl(args.output, text)
        print(f"ACL written to {args.output}; reload Mosquitto (SIGHUP) to apply it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
