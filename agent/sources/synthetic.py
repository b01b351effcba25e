"""A synthetic multichannel sensor: per channel `offset + amplitude * sin(2π f t) + gaussian noise`, with faults.

Faults (each a FaultConfig): `spike` adds `magnitude` to one sample; `stuck` holds a channel at the value it had when
the fault started; `dropout` makes it NaN; stuck and dropout last `duration_s`. Each starts at the listed times and/or
at random with the given chance per sample and channel.

Invariants: everything is a function of the sample index k (t = k / rate_hz) and the seed: two runs with the same
config give the same samples, whatever the pacing or the host's speed; fault times are in that sample time, so a
spike configured at 3.0 s is sample round(3.0 * rate_hz). With native pacing a window is released when its last
sample is due in real time; with `max` as fast as it can be computed. The source never ends.
"""

from __future__ import annotations

import time

import numpy as np

from agent.sources.base import ItemKind
from agent.sources.config import FaultConfig, SyntheticConfig
from agent.sources.windows import Windower
from agent.types import Array, FloatArray

MAX_LAG_S = 1.0


class FaultInjector:
    """Applies one configured fault to blocks of consecutive samples."""

    def __init__(self, fault: FaultConfig, channels: list[str], rate_hz: float) -> None:
        self.fault = fault
        self.columns = (
            [channels.index(c) for c in fault.channels] if fault.channels else list(range(len(channels)))
        )
        self.starts = sorted({round(t * rate_hz) for t in fault.at_s})
        self.length = max(1, round(fault.duration_s * rate_hz))
        self._until = np.zeros(len(channels), dtype=np.int64)
        self._held = np.zeros(len(channels), dtype=np.float32)

    def apply(self, block: FloatArray, k0: int, rng: np.random.Generator) -> None:
        """Injects the fault into `block` (samples k0 .. k0 + len - 1), in place."""
        count = len(block)
        starts = np.zeros((count, len(self.columns)), dtype=bool)
        for k in self.starts:
            if k0 <= k < k0 + count:
                starts[k - k0, :] = True
        if self.fault.probability > 0:
            starts |= rng.random(starts.shape) < self.fault.probability
        if self.fault.kind == "spike":
            rows, cols = np.nonzero(starts)
            block[rows, np.asarray(self.columns)[cols]] += np.float32(self.fault.magnitude)
            return
        for j, column in enumerate(self.columns):
            self._apply_episodes(block, k0, column, np.flatnonzero(starts[:, j]))

    def _apply_episodes(self, block: FloatArray, k0: int, column: int, starts: Array) -> None:
        count = len(block)
        stuck = self.fault.kind == "stuck"
        if self._until[column] > k0:  # an episode carried over from the previous block
            self._fill(block, 0, min(count, int(self._until[column]) - k0), column, stuck)
        for start in starts:
            k = k0 + int(start)
            if k < self._until[column]:
                continue
            self._held[column] = block[start, column]
            self._until[column] = k + self.length
            self._fill(block, int(start), min(count, int(start) + self.length), column, stuck)

    def _fill(self, block: FloatArray, begin: int, end: int, column: int, stuck: bool) -> None:
        block[begin:end, column] = self._held[column] if stuck else np.nan


class SyntheticSource:
    """Generated sensor windows (float32, [window, channels])."""

    kind: ItemKind = "window"

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.name = config.name
        self.label = f"synthetic {config.name}"
        self.channel_names = tuple(config.channels)
        self._amplitude = np.asarray(config.per_channel("amplitude"), dtype=np.float64)
        self._omega = 2 * np.pi * np.asarray(config.per_channel("frequency_hz"), dtype=np.float64)
        self._offset = np.asarray(config.per_channel("offset"), dtype=np.float64)
        self._noise = np.asarray(config.per_channel("noise_std"), dtype=np.float64)
        self._open_state()

    def _open_state(self) -> None:
        config = self.config
        self._rng = np.random.default_rng(config.seed)
        self._faults = [FaultInjector(f, config.channels, config.rate_hz) for f in config.faults]
        self._windower = Windower(config.window, config.hop, len(config.channels))
        self._k = 0
        self._started: float | None = None

    def open(self) -> None:
        """Starts the signal at sample 0 (a reopen starts it again)."""
        self._open_state()
        self._started = time.monotonic()

    def samples(self, count: int) -> FloatArray:
        """The next `count` samples ([count, channels]); advances the sample clock."""
        t = (self._k + np.arange(count, dtype=np.float64))[:, None] / self.config.rate_hz
        values = self._offset + self._amplitude * np.sin(self._omega * t)
        if self._noise.any():
            values += self._noise * self._rng.standard_normal(values.shape)
        block = values.astype(np.float32)
        for fault in self._faults:
            fault.apply(block, self._k, self._rng)
        self._k += count
        return block

    def read(self, timeout_s: float) -> Array | None:
        """The next window when it is due; None when it is not due within `timeout_s`."""
        if self._started is None:
            self._started = time.monotonic()
        needed = self._windower.needed
        if self.config.rate == "native":
            now = time.monotonic()
            due = self._started + (self._k + needed) / self.config.rate_hz
            if now - due > MAX_LAG_S:  # fell far behind (a suspended host): move the schedule, do not burst
                self._started = now - (self._k + needed) / self.config.rate_hz
                due = now
            if due - now > timeout_s:
                time.sleep(timeout_s)
                return None
            if due > now:
                time.sleep(due - now)
        windows = self._windower.push(self.samples(needed))
        return windows[0]

    def close(self) -> None:
        """Nothing to release."""
