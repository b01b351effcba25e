"""Terminal output shared by both command lines (`edge-agent`, `edge-fleet`): rich tables, JSON, one-line errors.

Invariants: importing this module imports no rich (it is imported on use: `edge-agent run` under systemd never draws
a table, about 2 MB less RSS); nothing here imports another part of the agent, so the device's CLI and the operator's
can both depend on it while neither core part depends on a CLI.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


def console() -> Console:
    """A console for stdout; wide enough not to wrap tables when stdout is a pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A simple table; numbers right-aligned."""
    from rich.table import Table

    result = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    first = rows[0] if rows else [""] * len(columns)
    for name, sample in zip(columns, first, strict=False):
        numeric = isinstance(sample, int | float) and not isinstance(sample, bool)
        result.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        result.add_row(*(fmt(v) for v in row))
    return result


def fmt(value: Any) -> str:
    """A table cell."""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "" if value is None else str(value)


def print_json(data: Any, *, flush: bool = False) -> None:
    """Pretty JSON on stdout (`flush`: at once, so a closed pipe shows up here as BrokenPipeError)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    if flush:
        sys.stdout.flush()


def error(message: str, prog: str = "edge-agent") -> None:
    """`PROG: error: ...` on stderr, one line per line of the message."""
    for line in str(message).splitlines() or [""]:
        sys.stderr.write(f"{prog}: error: {line}\n")
    sys.stderr.flush()


@contextmanager
def progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar on stderr, drawn only when stderr is a terminal; yields `update(what, done, total)`."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    err = Console(stderr=True, highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total or None)

        yield update


__all__ = ["console", "error", "fmt", "print_json", "progress_bar", "table"]


def drift_summary(drift: Any) -> str | None:
    """One word or two for a telemetry `drift` block: `off`, `learning 40%`, `calibrating`, `ok`, `DRIFT <stat>`."""
    if drift is None:
        return "off"
    if not isinstance(drift, dict):
        return None
    if drift.get("drifting"):
        last = drift.get("last")
        last = last if isinstance(last, dict) else {}
        return f"DRIFT {last.get('worst') or ''}".rstrip()
    state = drift.get("state")
    if state == "learning":
        baseline = drift.get("baseline")
        baseline = baseline if isinstance(baseline, dict) else {}
        done, total = _count(baseline.get("items")), _count(baseline.get("of"))
        return f"learning {100 * done / total:.0f}%" if done is not None and total else "learning"
    if state == "calibrating":
        return "calibrating"
    return "ok" if state == "watching" else None


def _count(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
