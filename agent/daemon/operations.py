"""The anomaly rules from the config, and the operational anomaly watch of one pipeline: cuts monitoring windows out of the loop metrics, the source's status and
the latest system sample, and feeds them to the pure `OperationalMonitor`.

Threads: `watch` runs on the main thread (the model service's tick, every `TICK_S`); `follow` at a model swap (the
inference thread, between two items: it only replaces the budget); `status` on any thread (it reads small immutable
entries). The monitor's clock is the caller's monotonic time; wall-clock times appear only in `status`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from agent.config import AnomalyConfig, OperationalConfig
from agent.events import AgentEvent
from agent.inference.manifest import Manifest
from agent.monitor.anomaly import AnomalyRules
from agent.monitor.metrics import LoopMetrics
from agent.monitor.operational import OperationalMonitor, OperationalRules, Window, WindowMeter, budget_for


def anomaly_rules(config: AnomalyConfig) -> AnomalyRules:
    """The result anomaly tracker's rules from the `[monitor.anomaly]` section."""
    return AnomalyRules(
        cooldown_s=config.cooldown_s,
        labels=config.labels,
        min_score=config.min_score,
        rise_after=config.rise_after,
        clear_after=config.clear_after,
        clear_s=config.clear_s,
        max_objects=config.max_objects,
    )


def rules_of(config: OperationalConfig, budget_ms: float | None) -> OperationalRules:
    """The pure monitor's rules from the `[monitor.operational]` section and the model's latency budget."""
    return OperationalRules(
        window_s=config.window_s,
        latency_budget_ms=budget_ms,
        latency_windows=config.latency_windows,
        min_results=config.min_results,
        max_errors=config.max_errors,
        max_temp_c=config.max_temp_c,
        stalled_s=config.stalled_s,
        max_drop_ratio=config.max_drop_ratio,
        drop_windows=config.drop_windows,
        min_frames=config.min_frames,
        clear_windows=config.clear_windows,
        clear_s=config.clear_s,
        cooldown_s=config.cooldown_s,
    )


class OperationsWatch:
    """Operational anomalies of one pipeline: latency over budget, error bursts, throttling, a stalled source, drops."""

    def __init__(
        self, config: OperationalConfig, metrics: LoopMetrics, manifest: Manifest, now: float
    ) -> None:
        self._config = config
        self._metrics = metrics
        budget, source = self._budget(manifest)
        self.monitor = OperationalMonitor(rules_of(config, budget), now, source)
        self._meter = WindowMeter(*metrics.totals("invoke"))
        self._window_start = now

    def _budget(self, manifest: Manifest) -> tuple[float | None, str]:
        return budget_for(manifest.latency_budgets, self._config.device_class, self._config.latency_budget_ms)

    def follow(self, manifest: Manifest) -> None:
        """The new model's latency budget, after a swap."""
        self.monitor.set_budget(*self._budget(manifest))

    def watch(
        self, now: float, source: Mapping[str, Any] | None, system: Mapping[str, Any]
    ) -> list[AgentEvent]:
        """Main thread: judges the window that ended at `now`, if one did; returns the events to report."""
        if not self._config.enabled or not self.monitor.due(now):
            return []
        deltas, p99_ms = self._meter.take(*self._metrics.totals("invoke"))
        window = Window(
            duration_s=now - self._window_start,
            results=deltas.get("processed", 0),
            invoke_p99_ms=p99_ms,
            errors=deltas.get("errors", 0),
            frames_in=deltas.get("frames_in", 0),
            dropped=deltas.get("dropped", 0),
            source_state=None if source is None else source.get("state"),
            source_quiet_s=_quiet_s(source),
            throttling=tuple((system.get("throttling") or {}).get("now") or ()),
            temperature_c=_number((system.get("temperature") or {}).get("cpu_c")),
        )
        self._window_start = now
        return self.monitor.observe(now, window)

    def status(self, now: float) -> list[dict[str, Any]]:
        """The active operational episodes, with the wall-clock time each started (`since`)."""
        wall = time.time()
        return [
            {**entry, "since": round(wall - entry["duration_s"], 3)} for entry in self.monitor.status(now)
        ]


def _quiet_s(source: Mapping[str, Any] | None) -> float | None:
    """Seconds since the source's last item, or since its state changed before the first item."""
    if source is None:
        return None
    since_item = _number(source.get("since_item_s"))
    if since_item is not None:
        return since_item
    changed = _number(source.get("since"))
    return max(0.0, time.time() - changed) if changed is not None else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


__all__ = ["OperationsWatch", "anomaly_rules", "rules_of"]
