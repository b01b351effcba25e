"""The updater's configuration (`[ota]` in agent.toml once the daemon's config tree includes it). No I/O."""

from __future__ import annotations

import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.backoff import BackoffConfig, InitialSeconds, Jitter, MaxSeconds
from agent.release.formats import MAX_BLOCKS_PER_REQUEST

DEFAULT_TRUST_ROOT = Path("/etc/edge-agent/trust/root.json")


class OtaRetryConfig(BackoffConfig):
    """Waits before missing blocks are asked again: the shared backoff shape with the updater's defaults (a partial
    `[ota.retry]` table keeps them for the keys it leaves out)."""

    initial_s: InitialSeconds = 1.0
    max_s: MaxSeconds = 30.0
    jitter: Jitter = 0.2


class ActivationConfig(BaseModel):
    """How the device activates an installed release; the threshold keys may only tighten the signed ones (None:
    the release's own)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True,
        title="Activate",
        description="Activate installed releases (golden gate, shadow, trial); off: they wait on disk.",
    )
    shadow: bool = Field(
        False, title="Always shadow", description="Shadow every release, even one that does not ask."
    )
    shadow_items: int | None = Field(None, ge=1, description="Shadow items needed, at least.")
    min_agreement_permille: int | None = Field(
        None, ge=0, le=1000, description="Shadow agreement needed, ‰, at least."
    )
    trial_s: int | None = Field(None, ge=1, description="Trial window, seconds, at least.")
    trial_min_items: int | None = Field(None, ge=1, description="Trial items needed for a verdict, at least.")
    max_error_ppm: int | None = Field(
        None, ge=0, le=1_000_000, description="Trial error share allowed, ppm, at most."
    )
    max_latency_percent: int | None = Field(
        None, ge=1, description="Latency allowed, % of the budget, at most."
    )
    max_low_confidence_increase_permille: int | None = Field(
        None,
        ge=0,
        le=1000,
        description="Low-confidence share allowed above the previous model's, ‰, at most.",
    )
    max_extra_episodes: int | None = Field(
        None, ge=0, description="Drift/anomaly episodes allowed beyond the previous model's rate, at most."
    )
    shadow_share: float = Field(
        0.2,
        gt=0,
        le=1.0,
        title="Shadow CPU share",
        description="Share of one core the shadow candidate may use, at most.",
    )
    shadow_every_n: int = Field(1, ge=1, le=1000, description="Offer every n-th live item to the shadow.")
    gate_runs: int = Field(20, ge=3, le=1000, description="Invokes the gate times the candidate over.")
    memory_max_mb: float | None = Field(
        None,
        gt=0,
        description="The unit's memory limit, MiB; None: read from the agent's cgroup (systemd MemoryMax).",
    )


class OtaConfig(BaseModel):
    """Signed model updates over MQTT: trust, transfer and limits."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, title="Enabled", description="Check the desired state and install signed releases."
    )
    trust_root: Path = Field(
        DEFAULT_TRUST_ROOT,
        title="Bootstrap root",
        description="TUF root.json the device trusts first; used only until {state_dir}/tuf/root.json exists.",
    )
    check_interval_s: float = Field(
        300.0, gt=0, le=86400, title="Check interval", description="Seconds between update checks."
    )
    window_blocks: int = Field(
        MAX_BLOCKS_PER_REQUEST,
        ge=1,
        le=MAX_BLOCKS_PER_REQUEST,
        title="Window",
        description="Blocks asked for and not yet received, at most (AWS IoT Core allows 100 unacknowledged).",
    )
    request_blocks: int = Field(
        10,
        ge=1,
        le=MAX_BLOCKS_PER_REQUEST,
        title="Request size",
        description="Blocks per request on repo/get; a new request goes out as earlier blocks arrive.",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        title="Request deadline",
        description="Seconds one metadata file or one request of blocks may take; then it is slow retrieval.",
    )
    max_tries: int = Field(
        8,
        ge=1,
        le=100,
        title="Tries per block",
        description="Requests of one block before the transfer fails.",
    )
    retry: OtaRetryConfig = Field(
        default_factory=OtaRetryConfig,
        title="Re-request backoff",
        description="Waits before missing blocks are asked again, seconds (1 s doubling to 30 s, ±20 %).",
    )
    data_budget_ratio: float = Field(
        2.0,
        ge=1.0,
        le=100.0,
        title="Data budget",
        description="Bytes fetched for one release, at most, as a multiple of its archive's length.",
    )
    max_archive_mb: int = Field(
        1024, ge=1, title="Largest archive", description="Releases with a larger archive are refused, MiB."
    )
    reserve_disk_mb: int = Field(
        64, ge=0, title="Disk reserve", description="Free disk left after an install, at least, MiB."
    )
    clock_floor: datetime.date = Field(
        datetime.date(2024, 1, 1),
        title="Clock floor",
        description="No metadata is trusted while the clock reads earlier than this date (a device without RTC "
        "boots in 1970).",
    )
    progress_interval_s: float = Field(
        5.0,
        ge=0,
        title="Progress events",
        description="Seconds between `downloading` progress events, at least.",
    )
    checkpoint_blocks: int = Field(
        16,
        ge=1,
        le=10000,
        title="Checkpoint",
        description="Blocks written between two fsyncs of the partial file and its bitmap.",
    )

    activation: ActivationConfig = Field(
        default_factory=ActivationConfig,
        title="Activation",
        description="Golden gate, shadow and trial of installed releases (`[ota.activation]`).",
    )

    @model_validator(mode="after")
    def _request_fits_the_window(self) -> OtaConfig:
        if self.request_blocks > self.window_blocks:
            raise ValueError(
                f"request_blocks ({self.request_blocks}) must not exceed window_blocks ({self.window_blocks})"
            )
        return self

    @property
    def clock_floor_s(self) -> float:
        """The clock floor as seconds since the epoch (UTC midnight)."""
        midnight = datetime.datetime.combine(self.clock_floor, datetime.time(), tzinfo=datetime.timezone.utc)
        return midnight.timestamp()


__all__ = ["DEFAULT_TRUST_ROOT", "ActivationConfig", "OtaConfig"]
