"""The activation's judgements: the thresholds in force, the golden gate, the shadow comparison, the trial, memory.

Pure: figures in, a `Judgement` out (verdict, code, one line for a person, the figures behind it); the daemon measures
and acts (`agent.daemon.activation`). Invariants:
- the thresholds come from the signed release (`Activation` in the TUF target's custom); the local config may only
  tighten them (`tightened`), never loosen: a hostile broker or a careless config cannot let a worse model through;
- a judgement that needs N items never passes on fewer: the trial says *inconclusive* and holds, the shadow waits;
- a latency limit is `max_latency_percent` of the model's budget for this device class; without a budget the latency
  is reported and not judged (the manifest names none for this device);
- no floats from the release: shares there are whole per mille / per million (TUF signs canonical JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.ota.activation import Figures, Verdict
from agent.ota.config import ActivationConfig
from agent.release.formats import Activation

EARLY_ITEMS = 20
"""Trial items after which a latency or error rate far over its limit fails at once, before the window ends."""
EARLY_FACTOR = 2.0
"""How far over the limit counts as far (a model that breaks its budget typically breaks it by far more)."""
SLACK = 1e-9
"""Rounding room for the comparisons of differences and products of floats with a limit: 0.4 - 0.3 is
0.10000000000000003 and 115 / 3600 * 3600 is 114.99999999999999, so without it a value exactly at its limit fails."""


@dataclass(frozen=True)
class Judgement:
    """A decision: its verdict (None: not yet, keep measuring), a reason code, one line, the figures behind it."""

    verdict: Verdict | None
    code: str | None
    reason: str
    figures: Figures = field(default_factory=dict)


def tightened(signed: Activation, local: ActivationConfig) -> Activation:
    """The signed thresholds with the local config's stricter values (a looser local value is ignored)."""

    def most(key: str) -> int:
        mine = getattr(local, key)
        theirs: int = getattr(signed, key)
        return theirs if mine is None else max(theirs, int(mine))

    def least(key: str) -> int:
        mine = getattr(local, key)
        theirs: int = getattr(signed, key)
        return theirs if mine is None else min(theirs, int(mine))

    return signed.model_copy(
        update={
            "shadow": signed.shadow or local.shadow,
            "shadow_items": most("shadow_items"),
            "min_agreement_permille": most("min_agreement_permille"),
            "trial_s": most("trial_s"),
            "trial_min_items": most("trial_min_items"),
            "max_error_ppm": least("max_error_ppm"),
            "max_latency_percent": least("max_latency_percent"),
            "max_low_confidence_increase_permille": least("max_low_confidence_increase_permille"),
            "max_extra_episodes": least("max_extra_episodes"),
        }
    )


def latency_limit_ms(thresholds: Activation, budget_ms: float | None) -> float | None:
    """The p95 latency a candidate may take here, ms (None: no budget for this device class)."""
    return None if budget_ms is None else budget_ms * thresholds.max_latency_percent / 100.0


def _latency(
    thresholds: Activation, budget_ms: float | None, p95_ms: float | None, what: str
) -> Judgement | None:
    limit = latency_limit_ms(thresholds, budget_ms)
    if limit is None or p95_ms is None or p95_ms <= limit:
        return None
    return Judgement(
        "fail",
        "latency",
        f"{what} latency p95 {p95_ms:.1f} ms is over {limit:.1f} ms "
        f"({thresholds.max_latency_percent} % of the {budget_ms:g} ms budget)",
    )


def gate(
    *,
    golden_cases: int,
    golden_failed: int,
    golden_worst: float,
    tolerance: float,
    golden_error: str | None,
    latency_p95_ms: float | None,
    budget_ms: float | None,
    thresholds: Activation,
) -> Judgement:
    """The golden gate: the bundle's golden vectors within tolerance on this runtime, and the latency in budget."""
    figures: Figures = {"golden_cases": golden_cases, "golden_failed": golden_failed}
    if math.isfinite(golden_worst):
        figures["golden_deviation"] = round(golden_worst, 6)
    if latency_p95_ms is not None:
        figures["gate_latency_p95_ms"] = round(latency_p95_ms, 3)
    if budget_ms is not None:
        figures["budget_ms"] = budget_ms
    if golden_failed:
        why = golden_error or f"deviation {golden_worst:.4g} > tolerance {tolerance:.4g}"
        return Judgement(
            "fail",
            "golden",
            f"{golden_failed} of {golden_cases} golden cases fail on this device's runtime ({why})",
            figures,
        )
    slow = _latency(thresholds, budget_ms, latency_p95_ms, "gate")
    if slow is not None:
        return Judgement(slow.verdict, slow.code, slow.reason, figures)
    cases = f"{golden_cases} golden cases" if golden_cases else "no golden cases in the bundle"
    return Judgement("pass", None, f"{cases}; latency within budget", figures)


def shadow(
    *,
    items: int,
    agreement: float | None,
    latency_p95_ms: float | None,
    budget_ms: float | None,
    thresholds: Activation,
    extra: Figures | None = None,
) -> Judgement:
    """The shadow comparison over `thresholds.shadow_items` live items: agreement and the candidate's latency."""
    figures: Figures = {"shadow_items": items, **(extra or {})}
    if agreement is not None:
        figures["agreement"] = round(agreement, 4)
    if latency_p95_ms is not None:
        figures["latency_p95_ms"] = round(latency_p95_ms, 3)
    if budget_ms is not None:
        figures["budget_ms"] = budget_ms
    slow = _latency(thresholds, budget_ms, latency_p95_ms, "shadow")
    if slow is not None and items >= min(EARLY_ITEMS, thresholds.shadow_items):
        return Judgement(slow.verdict, slow.code, slow.reason, figures)
    need = thresholds.shadow_items
    if items < need or agreement is None:
        return Judgement(None, None, f"shadow: {items} of {need} items compared", figures)
    floor = thresholds.min_agreement_permille / 1000.0
    if agreement < floor:
        return Judgement(
            "fail",
            "agreement",
            f"shadow agreement {agreement:.3f} over {items} items is below {floor:.3f}",
            figures,
        )
    return Judgement("pass", None, f"shadow agreement {agreement:.3f} over {items} items", figures)


@dataclass(frozen=True)
class TrialFigures:
    """What the trial window measured on the candidate, and the previous model's figures to compare with."""

    elapsed_s: float
    items: int
    errors: int
    latency_p95_ms: float | None
    low_confidence_share: float | None
    episodes: int
    """Drift and anomaly episodes that started during the trial."""
    drift: int = 0
    anomalies: int = 0
    crashes: int = 0
    budget_ms: float | None = None
    previous_low_confidence_share: float | None = None
    previous_episode_rate_per_s: float | None = None
    """The previous model's drift and anomaly episodes per second of service (None: not measured)."""

    def as_figures(self) -> Figures:
        """The figures on the wire (absent when not measured)."""
        out: Figures = {
            "trial_items": self.items,
            "trial_s": round(self.elapsed_s, 1),
            "drift": self.drift,
            "anomalies": self.anomalies,
            "crashes": self.crashes,
        }
        total = self.items + self.errors
        if total:
            out["error_rate"] = round(self.errors / total, 6)
        if self.latency_p95_ms is not None:
            out["latency_p95_ms"] = round(self.latency_p95_ms, 3)
        if self.budget_ms is not None:
            out["budget_ms"] = self.budget_ms
        if self.low_confidence_share is not None:
            out["low_confidence_share"] = round(self.low_confidence_share, 4)
        if self.previous_low_confidence_share is not None:
            out["previous_low_confidence_share"] = round(self.previous_low_confidence_share, 4)
        return out


def trial(now: TrialFigures, thresholds: Activation) -> Judgement:
    """The trial verdict: fail at once when a limit is broken by far, else judged when the window ends; too few
    items by then is inconclusive (held, judged again as items come)."""
    figures = now.as_figures()
    total = now.items + now.errors
    error_limit = thresholds.max_error_ppm / 1_000_000
    error_rate = now.errors / total if total else 0.0
    limit = latency_limit_ms(thresholds, now.budget_ms)
    early = total >= min(EARLY_ITEMS, thresholds.trial_min_items)
    if early and error_rate > max(error_limit * EARLY_FACTOR, error_limit + 0.05):
        return Judgement(
            "fail",
            "errors",
            f"{now.errors} of {total} trial items failed ({error_rate:.1%}; at most {error_limit:.2%} allowed)",
            figures,
        )
    p95 = now.latency_p95_ms
    if early and limit is not None and p95 is not None and p95 > limit * EARLY_FACTOR:
        return Judgement(
            "fail",
            "latency",
            f"trial latency p95 {p95:.1f} ms is far over {limit:.1f} ms "
            f"({thresholds.max_latency_percent} % of the {now.budget_ms:g} ms budget)",
            figures,
        )
    if now.elapsed_s < thresholds.trial_s:
        return Judgement(
            None, None, f"trial: {now.items} items in {now.elapsed_s:.0f} of {thresholds.trial_s} s", figures
        )
    if total < thresholds.trial_min_items:
        return Judgement(
            "inconclusive",
            "too-few-items",
            f"trial window over with {now.items} of {thresholds.trial_min_items} items: holding, not judged",
            figures,
        )
    if error_rate > error_limit:
        return Judgement(
            "fail",
            "errors",
            f"{now.errors} of {total} trial items failed ({error_rate:.2%}; at most {error_limit:.2%} allowed)",
            figures,
        )
    slow = _latency(thresholds, now.budget_ms, p95, "trial")
    if slow is not None:
        return Judgement(slow.verdict, slow.code, slow.reason, figures)
    low, before = now.low_confidence_share, now.previous_low_confidence_share
    allowed = thresholds.max_low_confidence_increase_permille / 1000.0
    if low is not None and before is not None and low - before > allowed + SLACK:
        return Judgement(
            "fail",
            "low-confidence",
            f"low-confidence share {low:.1%} against the previous model's {before:.1%} "
            f"(at most {allowed * 100:.1f} points more)",
            figures,
        )
    expected = (now.previous_episode_rate_per_s or 0.0) * now.elapsed_s
    if now.episodes > expected + thresholds.max_extra_episodes + SLACK:
        kind = "drift" if now.drift >= now.anomalies else "anomalies"
        return Judgement(
            "fail",
            kind,
            f"{now.drift} drift and {now.anomalies} anomaly episodes in the trial, where the previous model's rate "
            f"predicts {expected:.1f} (at most {thresholds.max_extra_episodes} more)",
            figures,
        )
    return Judgement("pass", None, f"trial passed over {now.items} items in {now.elapsed_s:.0f} s", figures)


@dataclass(frozen=True)
class MemoryPlan:
    """Whether the candidate can be loaded beside the active model (gate, shadow, hot swap, previous kept loaded)."""

    fits: bool
    limit_mb: float | None
    used_mb: float | None
    candidate_mb: float | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (status)."""
        return {
            "fits": self.fits,
            "limit_mb": self.limit_mb,
            "used_mb": self.used_mb,
            "candidate_mb": self.candidate_mb,
            "shadow": self.fits,
            "keep_previous": self.fits,
            "reason": self.reason,
        }


def memory_plan(limit_mb: float | None, used_mb: float | None, candidate_mb: float | None) -> MemoryPlan:
    """Decides from the release's RAM figure whether a second model fits under the unit's memory limit.

    The model a swap replaced earlier is released before a candidate loads, so at most two models are ever loaded:
    the active one and the candidate during the gate and the shadow, the candidate and the previous one after the
    swap. If two do not fit, the release cannot be activated hot (and is rejected with the figures)."""
    if limit_mb is None:
        return MemoryPlan(True, None, used_mb, candidate_mb, "no memory limit on the unit")
    if candidate_mb is None:
        return MemoryPlan(True, limit_mb, used_mb, None, "the release gives no RAM figure")
    if used_mb is None:
        return MemoryPlan(True, limit_mb, None, candidate_mb, "the agent's memory use is unknown")
    room = limit_mb - used_mb
    if candidate_mb <= room:
        return MemoryPlan(
            True,
            limit_mb,
            used_mb,
            candidate_mb,
            f"{candidate_mb:g} MiB fits in the {room:.0f} MiB left under {limit_mb:.0f} MiB: shadow allowed, "
            "previous model kept loaded",
        )
    return MemoryPlan(
        False,
        limit_mb,
        used_mb,
        candidate_mb,
        f"{candidate_mb:g} MiB does not fit in the {room:.0f} MiB left under {limit_mb:.0f} MiB beside the active model",
    )


__all__ = [
    "EARLY_FACTOR",
    "EARLY_ITEMS",
    "SLACK",
    "Judgement",
    "MemoryPlan",
    "TrialFigures",
    "gate",
    "latency_limit_ms",
    "memory_plan",
    "shadow",
    "tightened",
    "trial",
]
