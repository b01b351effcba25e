"""`edge-agent run`, `edge-agent status` and `edge-agent config validate|show`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.term import console, drift_summary, print_json, table

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

    from agent.config import AgentConfig


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers `run`, `status`, `baseline` and `config`."""
    run = sub.add_parser("run", help="run the daemon: source, model, monitors, fleet link")
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="agent.toml (default: /etc/edge-agent/agent.toml if present)",
    )
    run.add_argument("--live", action="store_true", help="show live figures on the terminal")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.set_defaults(handler=run_daemon)

    status = sub.add_parser("status", help="ask the running daemon what it is doing")
    status.add_argument("--config", type=Path, default=None, help="agent.toml, to find the control socket")
    status.add_argument(
        "--socket", type=Path, default=None, help="control socket path (overrides the config)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(handler=run_status)

    baseline = sub.add_parser("baseline", help="the running daemon's site drift baseline")
    baseline_sub = baseline.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    reset = baseline_sub.add_parser(
        "reset", help="forget the site baseline (the camera was moved): the daemon learns a new one"
    )
    reset.add_argument("--config", type=Path, default=None, help="agent.toml, to find the control socket")
    reset.add_argument("--socket", type=Path, default=None, help="control socket path (overrides the config)")
    reset.set_defaults(handler=run_baseline_reset)

    config = sub.add_parser("config", help="check or show the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    validate = config_sub.add_parser(
        "validate", help="check a config file; every error with its key path and line"
    )
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=run_validate)
    show = config_sub.add_parser(
        "show", help="print the effective config (defaults, file, overrides, environment)"
    )
    show.add_argument("--config", type=Path, default=None)
    show.set_defaults(handler=run_show)


def run_daemon(args: argparse.Namespace) -> int:
    """Runs the daemon in the foreground until SIGTERM/SIGINT (or --duration)."""
    from agent.config import load_config
    from agent.daemon.app import Daemon

    config = load_config(args.config)
    _setup_logging(config, args)
    daemon = Daemon(config, args.config)
    if not args.live:
        return daemon.run(args.duration)
    from rich.console import Group
    from rich.live import Live

    out = console()
    with Live(Group(), console=out, refresh_per_second=2, transient=False) as live:
        return daemon.run(args.duration, on_tick=lambda d: live.update(render_status(d.status())))


def _setup_logging(config: AgentConfig, args: argparse.Namespace) -> None:
    level = logging.DEBUG if getattr(args, "verbose", False) else getattr(logging, config.log_level.upper())
    root = logging.getLogger()
    root.setLevel(level)
    if args.live:
        from rich.logging import RichHandler

        for handler in list(root.handlers):
            root.removeHandler(handler)
        # the live table shows events; only warnings and worse scroll above it
        root.addHandler(RichHandler(console=console(), show_path=False, level=max(level, logging.WARNING)))
    else:
        for handler in root.handlers:
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def run_status(args: argparse.Namespace) -> int:
    """Prints the running daemon's status."""
    from agent.config import load_config

    socket_path = args.socket if args.socket is not None else load_config(args.config).resolved_socket()
    from agent.daemon.control import request

    data = request(socket_path, "status")
    if args.json:
        print_json(data)
    else:
        console().print(render_status(data))
    return 0


def run_baseline_reset(args: argparse.Namespace) -> int:
    """Asks the running daemon to forget its site drift baseline."""
    from agent.config import load_config
    from agent.daemon.control import request

    socket_path = args.socket if args.socket is not None else load_config(args.config).resolved_socket()
    data = request(socket_path, "reset-baseline")
    console().print(
        f"site baseline of {data['model']} v{data['version']} reset"
        f"{' (the stored one removed)' if data['removed_stored'] else ''}: learning a new one from the next items"
    )
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Checks one config file."""
    from agent.config import load_config

    config = load_config(args.file, environ={}, use_overrides=False)
    console().print(
        f"{args.file}: valid (source {config.source.type}, link {'on' if config.link.enabled else 'off'})"
    )
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Prints the effective config as JSON (secrets hidden)."""
    from agent.config import load_config

    print_json(load_config(args.config).public_dict())
    return 0


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _mb(value: Any) -> float | None:
    return round(value / 1e6, 1) if isinstance(value, int | float) else None


def render_status(data: dict[str, Any]) -> Group:
    """The status as a few compact tables."""
    from rich.console import Group
    from rich.table import Table

    agent, model = data.get("agent", {}), data.get("model") or {}
    metrics = data.get("metrics") or {}
    header = Table.grid(padding=(0, 2))
    header.add_row(
        f"[bold]edge-agent {agent.get('version', '?')}[/] on {agent.get('device', '?')}",
        f"up {agent.get('uptime_s', 0):.0f} s",
        f"model [bold]{model.get('name', '-')}[/] v{model.get('version', '-')} "
        f"({model.get('runtime', '-')}, {model.get('task', '-')})",
    )
    if agent.get("state") == "no-model":
        from rich.markup import escape

        header.add_row(f"[bold red]no model in service[/]: {escape(str(agent.get('problem')))}")
    activation = (data.get("update") or {}).get("activation") or {}
    if activation.get("state"):
        from rich.markup import escape

        release = activation.get("release") or {}
        line = f"activation: {release.get('name')} v{release.get('version')} [bold]{activation['state']}[/]"
        if activation.get("verdict"):
            line += f" ({activation['verdict']})"
        if activation.get("reason"):
            line += f": {escape(str(activation['reason']))}"
        header.add_row(line)
    counters = metrics.get("counters", {})
    rates = metrics.get("rates", {})
    overview = table(
        None,
        [
            "frames in/s",
            "inferences/s",
            "processed",
            "dropped",
            "errors",
            "frame age p50 ms",
            "p99 ms",
            "drift",
        ],
        [
            [
                rates.get("in_per_s", 0.0),
                rates.get("processed_per_s", 0.0),
                counters.get("processed", 0),
                counters.get("dropped", 0),
                counters.get("errors", 0),
                _get(metrics, "frame_age_ms", "p50"),
                _get(metrics, "frame_age_ms", "p99"),
                drift_summary(metrics.get("drift")) or "?",
            ]
        ],
    )
    stages = metrics.get("latency_ms", {})
    stage_rows = [
        [name, s.get("p50"), s.get("p95"), s.get("p99"), s.get("count")]
        for name, s in stages.items()
        if s and s.get("count")
    ]
    stage_table = table(
        "latency (ms)", ["stage", "p50", "p95", "p99", "count"], stage_rows or [["-", None, None, None, 0]]
    )
    source_rows = [
        [
            s.get("name"),
            s.get("type"),
            s.get("state"),
            s.get("items"),
            s.get("rate_hz"),
            s.get("reconnects"),
            s.get("last_error") or "",
        ]
        for s in data.get("sources", [])
    ]
    sources = table(
        "sources",
        ["name", "type", "state", "items", "items/s", "reconnects", "last error"],
        source_rows or [["-"] * 7],
    )
    system = data.get("system") or {}
    link = data.get("link") or {}
    throttling = system.get("throttling")
    sys_table = table(
        None,
        [
            "process CPU %",
            "RSS MB",
            "system CPU %",
            "temp °C",
            "CPU MHz",
            "disk free MB",
            "throttled",
            "link",
            "outbox",
        ],
        [
            [
                _get(system, "process", "cpu_pct"),
                _mb(_get(system, "process", "rss_bytes")),
                _get(system, "cpu", "pct"),
                _get(system, "temperature", "max_c"),
                _get(system, "cpu", "freq_mhz"),
                _mb(_get(system, "disk", "free_bytes")),
                "-" if throttling is None else ", ".join(throttling.get("now", [])) or "no",
                link.get("state", "off") if link.get("enabled") else "off",
                link.get("outbox_depth", ""),
            ]
        ],
    )
    event_rows = [[e.get("type"), e.get("severity"), e.get("message")] for e in data.get("events", [])[-6:]]
    events = table("recent events", ["type", "severity", "message"], event_rows or [["-", "-", "none"]])
    return Group(header, overview, anomaly_table(metrics), stage_table, sources, sys_table, events)


def anomaly_table(metrics: dict[str, Any]) -> Table:
    """The anomaly episodes going on: kind, severity, how long, updates sent, why (or one 'none' row)."""
    active = _get(metrics, "anomaly", "active") or []
    rows = [
        [
            entry.get("kind"),
            entry.get("severity"),
            f"{entry.get('duration_s', 0):.0f} s",
            entry.get("updates"),
            entry.get("reason") or "",
        ]
        for entry in active
    ]
    title = f"anomalies: {len(active)} active" if active else "anomalies"
    return table(title, ["kind", "severity", "for", "updates", "why"], rows or [["none", "", "", "", ""]])
