"""Drift thresholds with a stated false-alarm rate, by block bootstrap of per-item features. Pure numpy, no I/O.

The question a threshold answers: how far can a window of `every_n` items stray from the baseline, on data that has
not changed, before it is unusual enough to alarm? Given the items of a baseline (a site's own first items, or a
bundle's calibration samples) as per-item feature vectors (`agent.monitor.features`):

1. The items are split in order: the first `1 - held_out` part calibrates, the rest is kept to measure.
2. The baseline profile is the calibration part's mean of each `mean` statistic and its pooled shares of each
   `shares` statistic.
3. No-drift windows are simulated by a circular block bootstrap: windows are stitched from blocks of consecutive items
   whose length follows the data's autocorrelation (four times the longest integrated autocorrelation time of any
   feature, at most a window: shorter blocks cut correlations a real window has and make thresholds too low). Consecutive frames are alike; a bootstrap that drew single items would see windows vary less
   than real ones do and set thresholds too low. A bundle's samples are a population, not a stream: they are drawn
   one by one (`sequential=False`).
4. Each statistic's simulated window values give it a tail: a normal one (their RMS), or their own distribution up
   to its 97.5th percentile with an exponential tail beyond (peaks over a threshold), whichever better predicts the
   simulated exceedances of their 99th percentile. The tails turn every window value into a p-value, so statistics
   of different units compare.
5. The budget is shared: the overall false-alarm probability per window is `every_n / ert_items` (an expected run
   time of `ert_items` items between false alarms, one check per window). The per-statistic level `q` is set so that
   the simulated windows alarm (any statistic over its threshold at `q`, floors included) with that probability;
   where the bootstrap cannot resolve the level (fewer than 50 simulated alarms: the device defaults, 1e-4 per
   window), `q` is the level divided by the number of statistics (the union bound; on independent synthetic
   statistics the measured rate was 0.86-1.09 of the target, correlated ones make it err on the quiet side).
   Where the level is resolved, correlated statistics (brightness and colour) share it fairly.
6. A statistic's threshold is its tail's quantile at `q`, floored at its `resolution` (a feature that never
   varied in the baseline must not alarm on the smallest change).

The held-out part's tumbling windows are then counted against the thresholds (`held_out_windows`,
`held_out_alarms`): a baseline that was not stationary shows there first. A population's held-out samples are too few
for whole windows: 1000 windows are drawn from them alone (never from the calibration part).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.monitor.features import FeatureSpec, Statistic

PSI_FLOOR = 1e-3
RESOLVABLE_ALARMS = 50
HELD_OUT_DRAWS = 1000
_NORMAL = NormalDist()
_erfc = np.frompyfunc(math.erfc, 1, 1)


class Profile(BaseModel):
    """The baseline a window is compared with."""

    model_config = ConfigDict(extra="forbid")
    means: dict[str, float] = Field(
        default_factory=dict, description="Baseline mean of each `mean` statistic."
    )
    shares: dict[str, list[float]] = Field(
        default_factory=dict, description="Baseline shares of each `shares` statistic."
    )


class Calibration(BaseModel):
    """Thresholds for one window size and one expected run time, and what they were derived from."""

    model_config = ConfigDict(extra="forbid")
    fingerprint: str
    every_n: int = Field(
        description="Items per window (outputs); inputs are every `input_every`-th item of it."
    )
    input_every: int
    ert_items: float = Field(description="Expected run time between false alarms, in items.")
    window_level: float = Field(description="False-alarm probability per window: every_n / ert_items.")
    level: float = Field(
        description="Per-statistic level that spends the window's budget across all statistics."
    )
    block_items: int = Field(description="Bootstrap block length, items.")
    items: int = Field(description="Baseline items the thresholds were calibrated on.")
    simulated_windows: int
    thresholds: dict[str, float]
    profile: Profile
    held_out_windows: int = 0
    held_out_alarms: int = 0
    seed: int = 0
    note: str = ""


def window_values(
    spec: FeatureSpec, profile: Profile, input_means: np.ndarray, output_means: np.ndarray
) -> np.ndarray:
    """The statistics of windows (rows of mean input and output vectors) against a profile: shape (windows, stats)."""
    windows = max(len(input_means), len(output_means))
    values = np.zeros((windows, len(spec.statistics)))
    for index, stat in enumerate(spec.statistics):
        block = input_means if stat.family == "input" else output_means
        if block.size == 0:
            continue
        part = block[:, stat.columns]
        if stat.kind == "mean":
            values[:, index] = np.abs(part[:, 0] - profile.means.get(stat.name, 0.0))
        else:
            values[:, index] = _psi_rows(np.asarray(profile.shares.get(stat.name, ()), np.float64), part)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0)
    return values


def _psi_rows(base: np.ndarray, live: np.ndarray) -> np.ndarray:
    if base.size != live.shape[1] or base.sum() <= 0:
        return np.zeros(len(live))
    total = live.sum(axis=1, keepdims=True)
    shares = np.divide(live, total, out=np.zeros_like(live), where=total > 0)
    expected = np.maximum(base / base.sum(), PSI_FLOOR)
    actual = np.maximum(shares, PSI_FLOOR)
    out: np.ndarray = np.sum((actual - expected) * np.log(actual / expected), axis=1)
    out[total[:, 0] <= 0] = 0.0  # nothing to compare (no detections in the window)
    return out


def profile_of(spec: FeatureSpec, inputs: np.ndarray, outputs: np.ndarray) -> Profile:
    """The mean and pooled shares of each statistic over baseline items."""
    profile = Profile()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        in_mean = np.nanmean(inputs, axis=0) if inputs.size else np.zeros(spec.input_size)
        out_mean = np.nanmean(outputs, axis=0) if outputs.size else np.zeros(spec.output_size)
    for stat in spec.statistics:
        block = in_mean if stat.family == "input" else out_mean
        part = np.nan_to_num(block[stat.columns])
        if stat.kind == "mean":
            profile.means[stat.name] = float(part[0])
        else:
            profile.shares[stat.name] = [float(v) for v in part]
    return profile


def correlation_items(inputs: np.ndarray, outputs: np.ndarray, input_step: int, cap: int) -> int:
    """Twice the longest integrated autocorrelation time of any feature, in items (1 for independent items)."""
    longest = 1.0
    for block, step in ((outputs, 1), (inputs, input_step)):
        if block.size == 0 or len(block) < 8:
            continue
        data = np.nan_to_num(block - np.nanmean(block, axis=0))
        scale = data.std(axis=0)
        data = data[:, scale > 1e-12]
        if data.shape[1] == 0:
            continue
        n = len(data)
        size = 1 << (2 * n - 1).bit_length()
        spectrum = np.fft.rfft(data, n=size, axis=0)
        acf = np.fft.irfft(np.abs(spectrum) ** 2, n=size, axis=0)[: max(2, min(n // 2, cap // step + 1))]
        acf = acf / acf[0]
        for column in acf.T:
            below = np.nonzero(column[1:] < 0.05)[0]
            stop = int(below[0]) + 1 if below.size else len(column)
            tau = 1.0 + 2.0 * float(column[1:stop].sum())
            longest = max(longest, tau * step)
    return max(1, min(cap, math.ceil(2 * longest)))


def simulate(
    spec: FeatureSpec,
    profile: Profile,
    inputs: np.ndarray,
    outputs: np.ndarray,
    input_step: int,
    every_n: int,
    input_every: int,
    block_items: int,
    windows: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Window statistics of `windows` block-bootstrap windows drawn from baseline items: shape (windows, stats).

    `outputs` has one row per item, `inputs` one row per `input_step` items (row k is item k * input_step); a
    window's inputs are its every `input_every`-th item, as on the device.
    """
    n_items = (len(outputs) // input_step) * input_step
    block = max(input_step, (block_items // input_step) * input_step)
    per_window = math.ceil(every_n / block)
    offsets = np.arange(block)
    out: list[np.ndarray] = []
    chunk = max(1, 400_000 // max(every_n, 1))
    for start in range(0, windows, chunk):
        count = min(chunk, windows - start)
        starts = rng.integers(0, n_items // input_step, size=(count, per_window)) * input_step
        items = ((starts[:, :, None] + offsets) % n_items).reshape(count, -1)[:, :every_n]
        out_means = outputs[items].mean(axis=1) if spec.output_size else np.zeros((count, 0))
        if spec.input_size and inputs.size:
            picked = items[:, ::input_every]
            rows = picked // input_step
            valid = (picked % input_step) == 0
            taken = inputs[np.minimum(rows, len(inputs) - 1)]
            taken[~valid] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                in_means = np.nanmean(taken, axis=1)
        else:
            in_means = np.zeros((count, 0))
        out.append(window_values(spec, profile, in_means, out_means))
    return np.concatenate(out) if out else np.zeros((0, len(spec.statistics)))


class _Tail:
    """A statistic's fitted no-drift tail: the window value it exceeds with a given probability.

    Two candidates, fitted to the simulated windows: a normal tail (two-sided, their RMS: a window mean of many
    items), and their own distribution up to its 97.5th percentile with an exponential tail beyond (peaks over a
    threshold: a PSI dominated by rare bins, or a mean of strongly correlated items, has a heavier tail). The one
    that better predicts how many simulated windows exceed their 99th percentile is kept, and extrapolates the levels
    far below what the simulation resolves.
    """

    TAIL = 0.025
    CHECK = 0.01

    def __init__(self, stat: Statistic, values: np.ndarray, resolution: float) -> None:
        self.stat = stat
        self.resolution = resolution
        self.sorted = np.sort(values)
        self.u = float(np.quantile(values, 1 - self.TAIL))
        excess = values[values > self.u] - self.u
        self.beta = max(float(excess.mean()) if excess.size else 0.0, resolution / 10, 1e-12)
        self.scale = max(float(np.sqrt(np.mean(np.square(values)))), 1e-12)
        self.normal = False
        if stat.kind == "mean" and len(values) >= 10 / self.CHECK:
            at = np.array([float(np.quantile(values, 1 - self.CHECK))])
            miss_normal = abs(math.log(max(float(self._normal_p(at)[0]), 1e-300) / self.CHECK))
            miss_tail = abs(math.log(max(float(self._tail_p(at)[0]), 1e-300) / self.CHECK))
            self.normal = miss_normal < miss_tail

    def _normal_p(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(_erfc(values / (self.scale * math.sqrt(2.0))), np.float64)

    def _tail_p(self, values: np.ndarray) -> np.ndarray:
        body = 1.0 - np.searchsorted(self.sorted, values, side="right") / len(self.sorted)
        tail = self.TAIL * np.exp(-(values - self.u) / self.beta)
        return np.where(values > self.u, tail, np.maximum(body, self.TAIL))

    def threshold(self, level: float) -> float:
        if self.normal:
            value = self.scale * _NORMAL.inv_cdf(1 - level / 2)
        elif level < self.TAIL:
            value = self.u + self.beta * math.log(self.TAIL / level)
        else:
            value = float(np.quantile(self.sorted, 1 - level))
        return max(value, self.resolution)


def _resolution(stat: Statistic, inputs: np.ndarray, outputs: np.ndarray) -> float:
    if stat.resolution > 0:
        return stat.resolution
    block = inputs if stat.family == "input" else outputs
    column = block[:, stat.start] if block.size else np.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = float(np.nanmean(column)), float(np.nanstd(column))
    return 1e-9 + 1e-3 * (abs(mean) + std) if math.isfinite(mean + std) else 1e-6


def calibrate(
    spec: FeatureSpec,
    inputs: np.ndarray,
    outputs: np.ndarray,
    *,
    input_step: int,
    every_n: int,
    input_every: int,
    ert_items: float,
    sequential: bool = True,
    held_out: float = 0.3,
    windows: int = 4000,
    seed: int = 0,
) -> Calibration:
    """Thresholds for windows of `every_n` items so that false alarms come every `ert_items` items on average.

    `outputs`: one feature row per baseline item, in stream order; `inputs`: one row per `input_step` items (NaN
    rows for inputs that could not be read). `sequential=False` treats the items as an exchangeable sample (a
    bundle's calibration set): they are shuffled before the split and drawn one by one.
    """
    if every_n < 1 or input_every < 1 or input_step < 1 or every_n % input_every:
        raise ValueError(
            "every_n, input_every and input_step must be >= 1, every_n a multiple of input_every"
        )
    window_level = every_n / ert_items
    if not 0 < window_level < 0.5:
        raise ValueError(f"ert_items ({ert_items:g}) must be more than twice every_n ({every_n})")
    inputs = (
        np.asarray(inputs, np.float64).reshape(-1, spec.input_size) if spec.input_size else np.zeros((0, 0))
    )
    outputs = np.asarray(outputs, np.float64).reshape(len(outputs), spec.output_size)
    rng = np.random.default_rng(seed)
    if not sequential:
        if input_step != 1:
            raise ValueError("an exchangeable sample has an input for every item (input_step 1)")
        order = rng.permutation(len(outputs))
        outputs = outputs[order]
        inputs = inputs[order] if inputs.size else inputs
    n_items = (len(outputs) // input_step) * input_step
    if n_items < 2 * input_step:
        raise ValueError(f"a baseline needs at least {2 * input_step} items, got {len(outputs)}")
    split = max(input_step, round(n_items * (1 - held_out) / input_step) * input_step)
    cal_out, test_out = outputs[:split], outputs[split:n_items]
    cal_in = inputs[: split // input_step] if inputs.size else inputs
    test_in = inputs[split // input_step : n_items // input_step] if inputs.size else inputs
    profile = profile_of(spec, cal_in, cal_out)
    block = 1 if not sequential else min(every_n, 2 * correlation_items(cal_in, cal_out, input_step, every_n))
    values = simulate(spec, profile, cal_in, cal_out, input_step, every_n, input_every, block, windows, rng)
    tails = [_Tail(s, values[:, i], _resolution(s, cal_in, cal_out)) for i, s in enumerate(spec.statistics)]
    level = _shared_level(tails, values, window_level)
    thresholds = {tail.stat.name: tail.threshold(level) for tail in tails}
    note = ""
    if split < 20 * every_n:
        note = f"a short baseline ({split // every_n} windows calibrate it): thresholds are approximate"
    elif sequential and block >= every_n:
        note = (
            "the baseline varies as slowly as a window: windows were drawn whole, thresholds are approximate"
        )
    calibration = Calibration(
        fingerprint=spec.fingerprint,
        every_n=every_n,
        input_every=input_every,
        ert_items=float(ert_items),
        window_level=window_level,
        level=level,
        block_items=block,
        items=split,
        simulated_windows=len(values),
        thresholds=thresholds,
        profile=profile,
        seed=seed,
        note=note,
    )
    if sequential:
        held_windows, held_alarms = held_out_alarms(spec, calibration, test_in, test_out, input_step)
    elif len(test_out) >= 2:  # a population: windows drawn from the held-out samples only
        drawn = simulate(spec, profile, test_in, test_out, 1, every_n, input_every, 1, HELD_OUT_DRAWS, rng)
        limits = np.array([thresholds[s.name] for s in spec.statistics])
        held_windows, held_alarms = len(drawn), int(np.any(drawn > limits, axis=1).sum())
    else:
        held_windows, held_alarms = 0, 0
    return calibration.model_copy(update={"held_out_windows": held_windows, "held_out_alarms": held_alarms})


def _shared_level(tails: Sequence[_Tail], values: np.ndarray, window_level: float) -> float:
    """The per-statistic level at which the simulated windows alarm (any statistic over its threshold, floors
    included) with probability `window_level`; below what the simulation resolves, an equal share each."""
    if not tails or len(values) == 0:
        return window_level

    def rate(level: float) -> float:
        limits = np.array([tail.threshold(level) for tail in tails])
        return float(np.mean(np.any(values > limits, axis=1)))

    def solve(target: float) -> float:
        low, high = target / (100 * len(tails)), min(0.5, target * 10)
        if rate(high) <= target:
            return high
        for _ in range(40):  # bisection in log space: the rate grows with the level
            middle = math.sqrt(low * high)
            low, high = (middle, high) if rate(middle) <= target else (low, middle)
        return low

    if window_level * len(values) >= RESOLVABLE_ALARMS:
        return solve(window_level)
    # Below what the simulation resolves: an equal share each (the union bound). Measured on independent statistics
    # it lands within 0.86-1.09 of the target; correlated statistics make it err on the quiet side.
    return window_level / len(tails)


def held_out_alarms(
    spec: FeatureSpec, calibration: Calibration, inputs: np.ndarray, outputs: np.ndarray, input_step: int
) -> tuple[int, int]:
    """Tumbling windows of held-out items, in order, and how many of them exceed a threshold."""
    every_n, input_every = calibration.every_n, calibration.input_every
    count = len(outputs) // every_n
    if count == 0:
        return 0, 0
    out_means = outputs[: count * every_n].reshape(count, every_n, -1).mean(axis=1)
    in_rows = []
    for index in range(count):
        items = index * every_n + np.arange(0, every_n, input_every)
        rows = items[items % input_step == 0] // input_step
        rows = rows[rows < len(inputs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            in_rows.append(
                np.nanmean(inputs[rows], axis=0) if inputs.size and rows.size else np.zeros(spec.input_size)
            )
    values = window_values(spec, calibration.profile, np.array(in_rows), out_means)
    limits = np.array([calibration.thresholds.get(s.name, math.inf) for s in spec.statistics])
    return count, int(np.any(values > limits, axis=1).sum())
