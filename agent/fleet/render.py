"""Output for edge-fleet: the fleet table (rich), ages, and one-line errors on stderr (`edge-fleet: error: ...`)."""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table

from agent.fleet.stream import local_time
from agent.fleet.view import DeviceRow, FleetView
from agent.term import error as term_error
from agent.term import fmt

PROG = "edge-fleet"
COLUMNS = ("device", "state", "model", "fps", "p95 ms", "drops", "drift", "last anomaly", "last seen")
NUMERIC = {"fps", "p95 ms", "drops"}
STATE_STYLE = {"online": "green", "offline": "red", "unknown": "yellow"}


def error(message: str) -> None:
    """`edge-fleet: error: ...` on stderr, one line per line of the message."""
    term_error(message, PROG)


def notice(message: str) -> None:
    """`edge-fleet: ...` on stderr: something the operator should know that is not a failure."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def age(seconds: float | None) -> str:
    """`4s ago`, `3m ago`, `2h ago`, `5d ago`; empty when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def state_cell(row: DeviceRow) -> str:
    """`online #3`, `offline #3 (lost)`, `unknown` (styled)."""
    text = row.state if row.birth is None else f"{row.state} #{row.birth}"
    if row.state == "offline" and row.reason:
        text += f" ({row.reason})"
    return f"[{STATE_STYLE[row.state]}]{escape(text)}[/]"


def row_cells(row: DeviceRow, now: float) -> list[str]:
    """The table cells of one device."""
    model = "" if row.model is None else f"{row.model.name} v{row.model.version}"
    anomaly = ""
    if row.anomaly is not None:
        anomaly = f"{local_time(row.anomaly.time)} {' '.join(row.anomaly.message.split())}"
    if row.active_anomalies:
        anomaly = f"ACTIVE {', '.join(row.active_anomalies)}; {anomaly}".rstrip("; ")
    last_seen = None if row.last_seen is None else now - row.last_seen
    return [
        escape(row.device),
        state_cell(row),
        escape(model),
        fmt(row.fps),
        fmt(row.latency_p95_ms),
        fmt(row.dropped),
        escape(row.drift or ""),
        escape(anomaly),
        age(last_seen),
    ]


def fleet_table(view: FleetView, now: float, where: str) -> Table:
    """The fleet table, titled with the prefix, the broker and the time."""
    rows = view.rows()
    online = sum(1 for row in rows if row.state == "online")
    title = (
        f"{escape(view.topics.prefix)} on {escape(where)}: {len(rows)} device{'' if len(rows) == 1 else 's'}, "
        f"{online} online "
        f"({local_time(now)})"
    )
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in NUMERIC else "left", overflow="fold")
    for row in rows:
        table.add_row(*row_cells(row, now))
    return table


__all__ = ["PROG", "age", "error", "fleet_table", "notice", "row_cells", "state_cell"]
