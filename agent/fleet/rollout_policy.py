"""The decisions of a staged rollout, pure (no I/O): the waves' devices, each device's standing from its retained
status, and the judgement of a wave (wait, advance, hold, abort) with the figures behind it.

Invariants:
- The plan is deterministic: the members are ordered by SHA-256 of `{rollout id}:{device}`, so a re-run of the same
  rollout picks the same devices in the same waves, whatever order the statuses arrived in; waves are cumulative
  shares rounded up (1 % of 4 devices is 1), raised to `min_devices` (or the whole group), and never empty.
- A device's standing is read from what it reports about *this* release only (`Status.update` naming the release's
  name and version, or `Status.model` serving it); a report about another release leaves it pending.
- Offline is not a model failure: a device that goes offline is counted as offline (judged by `abort_offline`), never
  as failed; a device that was never online in the rollout is not in the plan.
- `abort_on` conditions gate the waves on the figures the devices report (shadow agreement, trial latency, drift):
  a condition holds when one device of the rollout reports a figure that meets it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.link.wire import Status

Standing = Literal["pending", "updating", "committed", "failed", "inconclusive", "offline"]
"""Where one device stands with the release: not started, on its way, done, refused/rejected/rolled back, held by an
inconclusive trial, or offline (its last will or a clean stop)."""
STANDINGS: tuple[Standing, ...] = ("pending", "updating", "committed", "failed", "inconclusive", "offline")
FAILED_STATES = frozenset({"refused", "failed", "rejected", "rolled-back"})
UPDATING_STATES = frozenset(
    {"offered", "downloading", "verifying", "installed", "self-testing", "shadow", "activating", "trial"}
)
Verdict = Literal["wait", "soak", "advance", "hold", "abort"]
OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
CONDITION = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:(<=|>=|<|>)\s*(-?[0-9]+(?:\.[0-9]+)?)\s*)?$")
FIGURES = (
    "agreement",
    "score_correlation",
    "mean_iou",
    "latency_p95_ms",
    "error_rate",
    "low_confidence_share",
    "drift",
    "anomalies",
    "crashes",
    "shadow_items",
    "trial_items",
)
"""The figures a device reports in `Status.update.figures` that `--abort-on` may name."""


class PolicyError(ValueError):
    """A wave list, a share or an `--abort-on` condition that cannot be read; the message says which and why."""


def parse_share(text: str, what: str) -> float:
    """`95%` or `0.95` as a share in [0, 1]."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise PolicyError(f"{what}: not a share: {text!r} (write 5% or 0.05)") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise PolicyError(f"{what}: must be between 0% and 100%: {text!r}")
    return value


def parse_waves(text: str) -> tuple[float, ...]:
    """`1%,10%,50%,100%`: growing cumulative shares, the last 100 %."""
    shares = tuple(parse_share(part, "--waves") for part in text.split(",") if part.strip())
    if not shares:
        raise PolicyError("--waves: give at least one share, e.g. 10%,50%,100%")
    if any(share <= 0 for share in shares):
        raise PolicyError(f"--waves: every share must be above 0%: {text!r}")
    if any(later <= earlier for earlier, later in itertools.pairwise(shares)):
        raise PolicyError(f"--waves: the shares must grow: {text!r}")
    if shares[-1] != 1.0:
        raise PolicyError(f"--waves: the last wave must be 100%: {text!r}")
    return shares


@dataclass(frozen=True)
class Condition:
    """One `--abort-on` condition: `figure < value` (or <=, >, >=), or a bare figure (holds when above 0)."""

    figure: str
    op: str | None = None
    value: float | None = None

    def holds(self, figures: Mapping[str, float | int | bool | None]) -> bool:
        found = figures.get(self.figure)
        if found is None:
            return False
        number = float(found)
        if self.op is None or self.value is None:
            return number > 0
        return bool(OPS[self.op](number, self.value))

    def __str__(self) -> str:
        return self.figure if self.op is None else f"{self.figure}{self.op}{self.value:g}"


def parse_conditions(text: str | None) -> tuple[Condition, ...]:
    """`agreement<0.9,latency_p95_ms>40,drift` (figures from FIGURES)."""
    if not text:
        return ()
    conditions = []
    for part in text.split(","):
        if not part.strip():
            continue
        match = CONDITION.match(part)
        if match is None:
            raise PolicyError(f"--abort-on: cannot read {part.strip()!r} (write e.g. agreement<0.9 or drift)")
        figure, op, value = match.groups()
        if figure not in FIGURES:
            raise PolicyError(f"--abort-on: unknown figure {figure!r} (known: {', '.join(FIGURES)})")
        conditions.append(Condition(figure, op, None if value is None else float(value)))
    return tuple(conditions)


@dataclass(frozen=True)
class Policy:
    """How the waves are judged."""

    waves: tuple[float, ...]
    min_devices: int = 1
    success: float = 0.95
    """Share of a wave's devices that must commit before it advances."""
    abort_failures: float = 0.05
    """The rollout aborts when more than this share of its devices failed (0: the first failure aborts)."""
    abort_offline: float = 0.10
    """The rollout aborts when more than this share of its devices went offline after the update (for longer than
    `offline_grace_s`)."""
    abort_on: tuple[Condition, ...] = ()
    soak_s: float = 600.0
    wave_timeout_s: float = 1800.0
    offline_grace_s: float = 10.0

    def describe(self) -> dict[str, object]:
        return {
            "waves": [round(share * 100, 3) for share in self.waves],
            "min_devices": self.min_devices,
            "success": self.success,
            "abort_failures": self.abort_failures,
            "abort_offline": self.abort_offline,
            "abort_on": [str(condition) for condition in self.abort_on],
            "soak_s": self.soak_s,
            "wave_timeout_s": self.wave_timeout_s,
            "offline_grace_s": self.offline_grace_s,
        }


def order(rollout_id: str, devices: Iterable[str]) -> list[str]:
    """The members in the rollout's stable order."""
    return sorted(set(devices), key=lambda device: hashlib.sha256(f"{rollout_id}:{device}".encode()).digest())


def plan(rollout_id: str, devices: Iterable[str], policy: Policy) -> list[list[str]]:
    """The devices each wave adds, in the stable order; a wave that would add none is dropped."""
    ordered = order(rollout_id, devices)
    total = len(ordered)
    waves: list[list[str]] = []
    done = 0
    for share in policy.waves:
        upto = min(total, max(math.ceil(share * total - 1e-9), min(policy.min_devices, total), done))
        if upto > done:
            waves.append(ordered[done:upto])
            done = upto
    return waves


def standing(status: Status | None, name: str, version: int) -> Standing:
    """Where a device stands with release `name` v`version`, from its latest retained status."""
    if status is None:
        return "pending"
    if status.state == "offline":
        return "offline"
    update = status.update
    if update is not None and update.name == name and update.version == version:
        if update.state in FAILED_STATES:
            return "failed"
        if update.state == "committed":
            return "committed"
        if update.state == "trial" and update.verdict == "inconclusive":
            return "inconclusive"
        if update.state in UPDATING_STATES:
            return "updating"
    serving = status.model is not None and status.model.name == name and status.model.version == version
    if serving and (update is None or update.name != name or update.version != version):
        return "committed"  # serving it with no update under way about it: it was already there
    return "pending"


def figures_of(status: Status | None, name: str, version: int) -> dict[str, float | int | bool | None]:
    """The figures a device reports about this release (empty when it reports about another)."""
    if status is None or status.update is None:
        return {}
    update = status.update
    if update.name != name or update.version != version:
        return {}
    return dict(update.figures)


@dataclass
class Judgement:
    """A wave's verdict and the figures behind it."""

    verdict: Verdict
    counts: dict[str, int]
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"verdict": self.verdict, "counts": dict(self.counts), "reasons": list(self.reasons)}


def judge(
    policy: Policy,
    wave: Sequence[str],
    touched: Sequence[str],
    standings: Mapping[str, Standing],
    figures: Mapping[str, Mapping[str, float | int | bool | None]],
    offline_s: Mapping[str, float],
    *,
    wave_age_s: float,
    soaked_s: float | None,
) -> Judgement:
    """Judges the current wave (`wave`: its devices; `touched`: every device the rollout updated so far, this wave's
    included). `offline_s`: how long each offline device has been offline; `soaked_s`: seconds since the wave
    succeeded (None: it has not yet)."""
    counts: dict[str, int] = dict.fromkeys(STANDINGS, 0)
    for device in wave:
        counts[standings.get(device, "pending")] += 1
    reasons: list[str] = []
    failed = [device for device in touched if standings.get(device) == "failed"]
    if failed and len(failed) > policy.abort_failures * len(touched):
        reasons.append(
            f"{len(failed)} of {len(touched)} devices failed the release ({', '.join(sorted(failed)[:5])}), "
            f"more than --abort-failures {policy.abort_failures:.0%}"
        )
    gone = [
        device
        for device in touched
        if standings.get(device) == "offline" and offline_s.get(device, 0.0) >= policy.offline_grace_s
    ]
    if gone and len(gone) > policy.abort_offline * len(touched):
        reasons.append(
            f"{len(gone)} of {len(touched)} devices went offline after the update ({', '.join(sorted(gone)[:5])}), "
            f"more than --abort-offline {policy.abort_offline:.0%}"
        )
    for condition in policy.abort_on:
        hit = sorted(device for device in touched if condition.holds(figures.get(device, {})))
        if hit:
            value = figures[hit[0]].get(condition.figure)
            reasons.append(f"--abort-on {condition}: {hit[0]} reports {condition.figure}={value}")
    if reasons:
        return Judgement("abort", counts, reasons)
    size = len(wave)
    settled_offline = sum(
        1
        for device in wave
        if standings.get(device) == "offline" and offline_s.get(device, 0.0) >= policy.offline_grace_s
    )
    decided = counts["committed"] + counts["failed"] + counts["inconclusive"] + settled_offline
    succeeded = counts["committed"] >= math.ceil(policy.success * size - 1e-9)
    if succeeded:
        if policy.soak_s > 0 and (soaked_s is None or soaked_s < policy.soak_s):
            return Judgement("soak", counts, [f"{counts['committed']} of {size} committed; soaking"])
        return Judgement(
            "advance", counts, [f"{counts['committed']} of {size} committed, soaked {soaked_s or 0:.0f} s"]
        )
    if decided == size:
        return Judgement(
            "hold",
            counts,
            [
                f"{counts['committed']} of {size} committed, below --success {policy.success:.0%} "
                f"({counts['inconclusive']} inconclusive, {counts['offline']} offline): held for the operator"
            ],
        )
    if wave_age_s >= policy.wave_timeout_s:
        return Judgement(
            "hold",
            counts,
            [f"{size - decided} of {size} devices undecided after {wave_age_s:.0f} s (--wave-timeout)"],
        )
    return Judgement(
        "wait", counts, [f"{counts['committed']} of {size} committed, {size - decided} undecided"]
    )


__all__ = [
    "FIGURES",
    "STANDINGS",
    "Condition",
    "Judgement",
    "Policy",
    "PolicyError",
    "Standing",
    "Verdict",
    "figures_of",
    "judge",
    "order",
    "parse_conditions",
    "parse_share",
    "parse_waves",
    "plan",
    "standing",
]
