"""`edge-agent` entry point: parses the command line and turns every AgentError into one clear line and exit 1."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import daemon_cmd, inference, model_cmd, models_cmd
from agent.errors import AgentError
from agent.term import error

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Edge inference agent: run, test and manage models on this device."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    daemon_cmd.add_parsers(sub)
    inference.add_parsers(sub)
    model_cmd.add_parsers(sub)
    models_cmd.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        status: int = args.handler(args)
        return status
    except AgentError as problem:
        error(str(problem))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as problem:  # a bug: say so in one line; the traceback only on request
        if os.environ.get("EDGE_AGENT_DEBUG"):
            raise
        error(
            f"internal error: {type(problem).__name__}: {problem} (set EDGE_AGENT_DEBUG=1 for the traceback)"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
