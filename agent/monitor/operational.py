"""Operational anomalies: the agent's own health judged once per monitoring window. Pure: figures and times in, events out.

Every `window_s` (the caller's monotonic clock) the caller hands a `Window` of what the loop, the source and the
host measured; each condition is judged on it and feeds its own `Episode` (see `agent.monitor.episodes`):
- `latency`: the window's invoke p99 over the model's budget (the manifest's budget for the configured device class,
  or a configured value), for `latency_windows` windows in a row; a window with fewer than `min_results` results is
  inconclusive (it neither extends nor clears the episode);
- `errors`: more than `max_errors` failed items in one window (an error burst);
- `thermal`: the firmware says the CPU is throttled or capped (Raspberry Pi), or the CPU is at `max_temp_c` or above;
- `stalled`: the source claims to run but no item came for `stalled_s` seconds;
- `drops`: the share of items the single-slot mailbox overwrote above `max_drop_ratio` for `drop_windows` windows
  in a row (a latest-wins mailbox drops by design when the source outpaces the model: the bound is on the share).
Each condition is one episode: a start, updates at most once per `cooldown_s`, an end after `clear_windows` normal
windows and `clear_s` quiet seconds. Events are `anomaly` events whose evidence names the `kind`, the measured
`value` (the last breached window's), the `bound`, the `windows` in a row it was breached, the `peak`; an end adds the
`current` value of the window that ended it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.events import AgentEvent, Severity
from agent.monitor.episodes import Episode, Hysteresis
from agent.monitor.histogram import LatencyHistogram

KINDS = ("latency", "errors", "thermal", "stalled", "drops")
THROTTLE_FLAGS = ("throttled", "freq_capped", "soft_temp_limit")
"""The firmware's current-state flags that mean the CPU runs slower than it should (under-voltage alone does not)."""
RUNNING_STATES = ("connected", "stalled")
"""Source states in which the source claims to deliver."""


@dataclass(frozen=True)
class OperationalRules:
    """The bounds of each operational condition and the timing of its episodes."""

    window_s: float = 10.0
    latency_budget_ms: float | None = None
    latency_windows: int = 3
    min_results: int = 10
    max_errors: int = 10
    max_temp_c: float | None = 85.0
    stalled_s: float = 30.0
    max_drop_ratio: float | None = 0.9
    drop_windows: int = 3
    min_frames: int = 10
    clear_windows: int = 2
    clear_s: float = 30.0
    cooldown_s: float = 60.0


@dataclass(frozen=True)
class Window:
    """What one monitoring window measured (the caller takes it from the loop metrics, the source, the host)."""

    duration_s: float
    results: int = 0
    invoke_p99_ms: float | None = None
    errors: int = 0
    frames_in: int = 0
    dropped: int = 0
    source_state: str | None = None
    source_quiet_s: float | None = None
    """Seconds since the source's last item (or since it connected, before its first)."""
    throttling: tuple[str, ...] = ()
    """The firmware's current throttling flags (`SystemProbe.throttling()["now"]`)."""
    temperature_c: float | None = None


@dataclass(frozen=True)
class Check:
    """One condition judged on one window: breached or not, the measured value and the bound; None: inconclusive."""

    breached: bool
    value: float | str | None
    bound: float | str | None
    unit: str
    text: str
    details: dict[str, Any] = field(default_factory=dict)


class WindowMeter:
    """Cumulative loop counters and the invoke histogram in, the figures of the window since the previous call out."""

    def __init__(self, counters: Mapping[str, int], invoke: LatencyHistogram) -> None:
        self._counters = dict(counters)
        self._invoke = invoke

    def take(
        self, counters: Mapping[str, int], invoke: LatencyHistogram
    ) -> tuple[dict[str, int], float | None]:
        """The counter deltas and the invoke p99 (ms) since the previous call; moves the baseline."""
        deltas = {key: value - self._counters.get(key, 0) for key, value in counters.items()}
        p99 = invoke.since(self._invoke).p99
        self._counters, self._invoke = dict(counters), invoke
        return deltas, None if p99 is None else round(p99 * 1000.0, 3)


class _Condition:
    def __init__(self, kind: str, hysteresis: Hysteresis) -> None:
        self.kind = kind
        self.episode = Episode(hysteresis)
        self.in_a_row = 0
        self.peak: float | None = None
        self.last: Check | None = None


class OperationalMonitor:
    """Operational anomaly episodes, one per condition (see the module docstring)."""

    def __init__(self, rules: OperationalRules, now: float, budget_source: str = "config") -> None:
        self.rules = rules
        self.budget_source = budget_source
        """Where the latency budget comes from: `config`, or the manifest's device class."""
        self._next = now + rules.window_s
        self._conditions = {kind: _Condition(kind, self._hysteresis(kind)) for kind in KINDS}

    def set_budget(self, budget_ms: float | None, source: str) -> None:
        """Follows a model swap: the new model's latency budget (the latency episode goes on if still breached)."""
        self.rules = replace(self.rules, latency_budget_ms=budget_ms)
        self.budget_source = source

    def _hysteresis(self, kind: str) -> Hysteresis:
        rules = self.rules
        rise = {"latency": rules.latency_windows, "drops": rules.drop_windows}.get(kind, 1)
        return Hysteresis(rise, rules.clear_windows, rules.clear_s, rules.cooldown_s)

    def due(self, now: float) -> bool:
        """Whether a window has ended at `now` (the caller then measures it and calls `observe`)."""
        return now >= self._next

    def observe(self, now: float, window: Window) -> list[AgentEvent]:
        """Judges one window; returns the events of the episodes it starts, updates or ends."""
        self._next = now + self.rules.window_s
        events: list[AgentEvent] = []
        for kind, condition in self._conditions.items():
            check = self._check(kind, window)
            if check is None:
                continue
            condition.in_a_row = condition.in_a_row + 1 if check.breached else 0
            phase = condition.episode.step(check.breached, now)
            if check.breached:
                if phase == "start":
                    condition.peak = None
                if isinstance(check.value, int | float):
                    condition.peak = (
                        check.value if condition.peak is None else max(condition.peak, check.value)
                    )
                condition.last = check
            if phase is not None:
                events.append(self._event(condition, check, phase, now))
        return events

    def status(self, now: float) -> list[dict[str, Any]]:
        """The active operational episodes, JSON-ready."""
        active: list[dict[str, Any]] = []
        for kind, condition in self._conditions.items():
            if not condition.episode.active:
                continue
            last = condition.last
            entry: dict[str, Any] = {
                "kind": kind,
                "severity": _severity(kind),
                **condition.episode.status(now),
            }
            if last is not None:
                entry.update(reason=last.text, value=last.value, bound=last.bound, peak=condition.peak)
            active.append(entry)
        return active

    def episodes(self) -> dict[str, int]:
        """Episodes started so far, by kind."""
        return {kind: condition.episode.count for kind, condition in self._conditions.items()}

    # ------------------------------------------------------------------ the conditions

    def _check(self, kind: str, window: Window) -> Check | None:
        rules = self.rules
        if kind == "latency":
            budget, p99 = rules.latency_budget_ms, window.invoke_p99_ms
            if budget is None or p99 is None or window.results < rules.min_results:
                return None
            text = f"invoke p99 {p99:g} ms over the {budget:g} ms budget ({self.budget_source})"
            return Check(p99 > budget, p99, budget, "ms", text, {"results": window.results})
        if kind == "errors":
            text = f"{window.errors} failed items in {window.duration_s:.0f} s (bound {rules.max_errors})"
            return Check(window.errors > rules.max_errors, window.errors, rules.max_errors, "errors", text)
        if kind == "thermal":
            return _thermal(window, rules.max_temp_c)
        if kind == "stalled":
            quiet = window.source_quiet_s
            if window.source_state not in RUNNING_STATES or quiet is None:
                return Check(False, quiet, rules.stalled_s, "s", "source not running")
            text = f"no item from the {window.source_state} source for {quiet:.0f} s (bound {rules.stalled_s:g} s)"
            return Check(quiet >= rules.stalled_s, round(quiet, 3), rules.stalled_s, "s", text)
        bound = rules.max_drop_ratio
        if bound is None or window.frames_in < rules.min_frames:
            return None
        ratio = round(window.dropped / window.frames_in, 4)
        text = f"{window.dropped} of {window.frames_in} items dropped ({ratio:.0%}, bound {bound:.0%})"
        return Check(ratio > bound, ratio, bound, "ratio", text, {"dropped": window.dropped})

    def _event(self, condition: _Condition, check: Check, phase: str, now: float) -> AgentEvent:
        episode, kind = condition.episode, condition.kind
        shown = condition.last or check
        evidence: dict[str, Any] = {
            "kind": kind,
            "value": shown.value,
            "bound": shown.bound,
            "unit": shown.unit,
            "windows": condition.in_a_row,
            "window_s": self.rules.window_s,
            "peak": condition.peak,
            **shown.details,
            "episode": episode.count,
            "duration_s": round(episode.duration_s(now), 3),
            "breaches": episode.breaches,
            "updates": episode.updates,
        }
        if phase == "end":
            evidence["current"] = check.value  # what the window that ended it measured
            message = (
                f"{kind} anomaly ended after {episode.duration_s(now):.0f} s ({episode.breaches} windows)"
            )
            return AgentEvent("anomaly", "info", message, evidence, phase="end")
        if phase == "start":
            return AgentEvent(
                "anomaly", _severity(kind), f"{kind} anomaly: {check.text}", evidence, phase="start"
            )
        message = f"{kind} anomaly continues ({episode.breaches} windows in {episode.duration_s(now):.0f} s): {check.text}"
        return AgentEvent("anomaly", _severity(kind), message, evidence, phase="ongoing")


def _thermal(window: Window, max_temp_c: float | None) -> Check | None:
    flags = [flag for flag in window.throttling if flag in THROTTLE_FLAGS]
    temperature = window.temperature_c
    hot = max_temp_c is not None and temperature is not None and temperature >= max_temp_c
    if not flags and temperature is None and not window.throttling:
        return None  # the host tells neither: inconclusive
    details = {"throttling": list(window.throttling), "temperature_c": temperature}
    if flags:
        return Check(
            True,
            ", ".join(flags),
            "none",
            "flags",
            f"CPU throttled by the firmware ({', '.join(flags)})",
            details,
        )
    if hot:
        text = f"CPU at {temperature:g} °C (bound {max_temp_c:g} °C)"
        return Check(True, temperature, max_temp_c, "°C", text, details)
    return Check(False, temperature, max_temp_c, "°C", "not throttled", details)


def _severity(kind: str) -> Severity:
    return "error" if kind == "errors" else "warning"


def budget_for(
    budgets: Any, device_class: str | None, configured_ms: float | None
) -> tuple[float | None, str]:
    """The latency budget that applies (a configured value wins) and where it comes from."""
    if configured_ms is not None:
        return configured_ms, "config"
    for budget in budgets or ():
        if device_class is not None and getattr(budget, "device_class", None) == device_class:
            return float(budget.p99_ms), f"manifest, {device_class}"
    return None, "none"


__all__ = ["KINDS", "Check", "OperationalMonitor", "OperationalRules", "Window", "WindowMeter", "budget_for"]
