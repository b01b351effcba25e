"""The agent's configuration: one pydantic model tree, loaded from TOML, with environment and remote overrides.

Layers, later ones win: built-in defaults; the TOML file (`/etc/edge-agent/agent.toml` or `--config`); the overrides the
fleet set with the `set-config` command (`{state_dir}/config-overrides.json`, written atomically); environment
variables `EDGE_AGENT__SECTION__KEY=value` (the value read as a TOML value when it parses as one, else as a string).
Every section forbids unknown keys. A config error names the file, the key path, the line where it can be found, what
was expected and what was given. Nothing here does I/O except the `load_*` functions.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import ConfigError
from agent.fsutil import write_atomic
from agent.inference.options import RuntimeOptions
from agent.link.config import LinkConfig, OutboxConfig
from agent.ota.config import OtaConfig
from agent.sources.config import SourceConfig, default_source_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger("agent.config")

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
OVERRIDES_NAME = "config-overrides.json"
ENV_PREFIX = "EDGE_AGENT__"
REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_BUNDLE = "digits-det-tflite"


class Section(BaseModel):
    """Base of every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DeviceConfig(Section):
    """Who this device is in the fleet."""

    id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Device id: the MQTT client id and user name. Default: the host name.",
    )
    fleet: str = Field(
        "default", pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Fleet name in the topic prefix."
    )
    group: str = Field(
        "default", pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Rollout group of this device."
    )

    def resolved_id(self) -> str:
        """The configured id, or the host name made topic-safe."""
        if self.id:
            return self.id
        name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "edge-device"
        return name[:128]


class ModelConfig(Section):
    """The model bundle the loop runs."""

    bundle: Path | None = Field(
        None,
        description="Model bundle folder. Default: the installed model (state dir), else the bundled "
        f"models/{DEFAULT_BUNDLE} next to the package.",
    )
    runtime: RuntimeOptions = Field(
        default_factory=RuntimeOptions, description="Runtime threads and providers."
    )
    warmup_runs: int = Field(5, ge=0, le=1000, description="Inferences run on a new model before it serves.")
    verify: bool = Field(True, description="Check file hashes against the manifest when loading.")
    self_test: bool = Field(
        True,
        description="Run the bundle's golden self-test on this device's runtime when a model is loaded; a model "
        "whose outputs are outside the manifest's tolerance is refused (a runtime or delegate that computes "
        "differently here).",
    )
    retry_s: float = Field(
        60.0,
        ge=1,
        le=86400,
        description="When the model cannot be loaded at start, the daemon keeps running without one (status, link "
        "and commands stay up, so the fleet can fix it) and tries again this often.",
    )


class PipelineConfig(Section):
    """The inference worker."""

    max_rate_hz: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="At most this many inferences per second (duty cycling); None: as fast as frames come.",
    )
    cpu_affinity: tuple[int, ...] | None = Field(
        None, description="CPUs the inference thread may run on, e.g. [2, 3]; None: any."
    )
    preprocess_on_capture: bool = Field(
        True,
        description="Pre-process each frame on the capture thread, overlapping the previous invoke (faster on "
        "multi-core devices; on a single core, false saves the work spent on frames that are then dropped).",
    )
    hang_timeout_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="An invoke longer than this counts as hung: the systemd watchdog is starved.",
    )


class JsonlSinkConfig(Section):
    """Results as JSON lines, for debugging."""

    enabled: bool = Field(False, description="Write every result as a JSON line.")
    path: str = Field("-", description="File to append to, or '-' for standard output.")
    every_n: int = Field(1, ge=1, description="Write only every n-th result.")


class SinksConfig(Section):
    """Where results go besides the fleet link."""

    jsonl: JsonlSinkConfig = Field(default_factory=JsonlSinkConfig, description="JSON-lines sink.")


class SnapshotConfig(Section):
    """JPEG snapshots of frames that triggered events."""

    enabled: bool = Field(True, description="Keep a JPEG of the frame behind each anomaly event.")
    folder: Path | None = Field(None, description="Where to keep them. Default: {state_dir}/snapshots.")
    max_bytes: int = Field(
        20_000_000, ge=0, description="Byte budget; the oldest snapshots are removed first."
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality.")


CaptureTrigger = Literal["drift", "anomaly", "low-confidence"]
"""What makes an item a hard example worth keeping for retraining."""


class CaptureConfig(Section):
    """Hard examples: the items behind drift, anomaly and low-confidence results, kept until the operator pulls them."""

    enabled: bool = Field(False, description="Keep hard examples on disk for `edge-fleet samples pull`.")
    folder: Path | None = Field(None, description="Where to keep them. Default: {state_dir}/samples.")
    max_bytes: int = Field(
        50_000_000,
        ge=0,
        description="Byte budget (data and metadata files); over it the oldest samples go first, even ones the "
        "operator has not confirmed yet (counted as `evicted`). Read at start.",
    )
    triggers: tuple[CaptureTrigger, ...] = Field(
        ("drift", "anomaly", "low-confidence"), description="Which triggers keep a sample."
    )
    low_confidence_below: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A classification or detection result whose top score is below this is low-confidence "
        "(an anomaly score is not a confidence; a result with no score never is).",
    )
    min_interval_s: float = Field(
        60.0, ge=0, description="At most one sample per trigger every this many seconds."
    )
    jpeg_quality: int = Field(
        90, ge=10, le=100, description="JPEG quality of frames (windows are kept as .npy)."
    )


class AnomalyConfig(Section):
    """When a result becomes an anomaly event."""

    cooldown_s: float = Field(
        10.0, ge=0, description="At most one anomaly event per this many seconds while it lasts."
    )
    labels: tuple[str, ...] = Field(
        (), description="Detection, classification and segmentation-region labels that count as anomalies (e.g. ['person'])."
    )
    min_score: float = Field(0.5, ge=0, le=1, description="Score a listed label needs to count.")
    max_objects: int | None = Field(
        None,
        ge=0,
        description="A frame with more than this many detections is an anomaly (None: no such rule).",
    )
    rise_after: int = Field(1, ge=1, le=1000, description="Anomalous results in a row that start an episode.")
    clear_after: int = Field(
        3, ge=1, le=100_000, description="Normal results in a row an episode needs to end."
    )
    clear_s: float = Field(
        10.0,
        ge=0,
        le=86400,
        description="An episode ends only this many seconds after its last anomalous result (and `clear_after` "
        "normal ones): a fault that comes back sooner continues the same episode instead of starting a new one.",
    )


class OperationalConfig(Section):
    """Operational anomalies of the agent itself (latency, errors, heat, a stalled source, drops), judged per window."""

    enabled: bool = Field(
        True, description="Watch the loop, the source and the host for operational anomalies."
    )
    window_s: float = Field(10.0, ge=1, le=3600, description="Length of one monitoring window, seconds.")
    device_class: str | None = Field(
        None,
        min_length=1,
        description="This device's class (e.g. 'rpi4'): the manifest's latency budget for it applies. None: only "
        "`latency_budget_ms`, if set.",
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        description="Invoke p99 budget, ms; overrides the manifest's. None: the manifest's for device_class.",
    )
    latency_windows: int = Field(
        3,
        ge=1,
        le=1000,
        description="Windows in a row with the invoke p99 over the budget that start an episode.",
    )
    min_results: int = Field(
        10, ge=1, description="A window with fewer results does not judge latency (too few for a p99)."
    )
    max_errors: int = Field(
        10, ge=0, description="More failed items than this in one window is an error burst."
    )
    max_temp_c: float | None = Field(
        85.0,
        description="A CPU at this temperature or above counts as throttling (besides the Pi firmware's flags).",
    )
    stalled_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="No item for this many seconds while the source claims to run: stalled.",
    )
    max_drop_ratio: float | None = Field(
        0.9,
        ge=0,
        le=1,
        description="Share of items the latest-wins mailbox overwrote in a window above which drops are an anomaly "
        "(some drops are by design when the source outpaces the model). None: off.",
    )
    drop_windows: int = Field(
        3, ge=1, le=1000, description="Windows in a row over the drop bound that start one."
    )
    min_frames: int = Field(10, ge=1, description="A window with fewer items in does not judge drops.")
    clear_windows: int = Field(
        2, ge=1, le=1000, description="Normal windows in a row an episode needs to end."
    )
    clear_s: float = Field(
        30.0, ge=0, le=86400, description="And this many seconds since its last breached window."
    )
    cooldown_s: float = Field(
        60.0, ge=0, description="At most one update event per this many seconds while an episode lasts."
    )


class DriftConfig(Section):
    """Data drift: a site baseline with calibrated thresholds (the alarm), the bundle's reference (information)."""

    enabled: bool = Field(True, description="Watch input and output statistics for drift.")
    every_n: int = Field(100, ge=10, description="Items per comparison window; a multiple of `input_every`.")
    input_every: int = Field(
        4,
        ge=1,
        le=1000,
        description="Input statistics from every n-th item (consecutive frames are alike; this keeps the monitor off "
        "the loop's critical path); outputs are counted on every item.",
    )
    ert_items: float = Field(
        1_000_000,
        gt=0,
        description="Expected run time between false alarms on unchanged data, in items (10 fps: 1e6 is ~28 h). "
        "The thresholds are calibrated for it.",
    )
    baseline_items: int = Field(
        3000,
        ge=100,
        description="Items after a model comes into service that the site baseline is learnt from (at least 10 "
        "windows; more gives tighter thresholds).",
    )
    clear_windows: int = Field(3, ge=1, description="Quiet windows in a row that end a drift episode.")
    update_windows: int = Field(10, ge=1, description="A reminder every this many windows while drift lasts.")
    psi_threshold: float | None = Field(
        None,
        gt=0,
        description="Ignored (thresholds are calibrated now); accepted so that older configs load.",
    )

    @model_validator(mode="after")
    def _window_fits(self) -> DriftConfig:
        if self.every_n % self.input_every:
            raise ValueError(
                f"every_n ({self.every_n}) must be a multiple of input_every ({self.input_every})"
            )
        if self.ert_items <= 2 * self.every_n:
            raise ValueError(
                f"ert_items ({self.ert_items:g}) must be more than twice every_n ({self.every_n})"
            )
        if self.baseline_items < 10 * self.every_n:
            raise ValueError(
                f"baseline_items ({self.baseline_items}) must hold at least 10 windows of every_n ({self.every_n})"
            )
        return self


class MonitorConfig(Section):
    """Health, anomaly and drift monitors."""

    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig, description="Anomaly events.")
    operational: OperationalConfig = Field(
        default_factory=OperationalConfig, description="Operational anomaly events."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift detection.")
    system_interval_s: float = Field(5.0, gt=0, description="How often CPU, memory and temperature are read.")
    recent_events: int = Field(
        50, ge=1, le=10_000, description="Events kept in memory for `edge-agent status`."
    )
    capture: CaptureConfig = Field(default_factory=CaptureConfig, description="Hard-example capture.")


class ControlConfig(Section):
    """The local control socket that `edge-agent status` talks to."""

    socket: Path | None = Field(
        None,
        description="Unix socket path. Default: $RUNTIME_DIRECTORY/control.sock, else {state_dir}/control.sock.",
    )


class AgentConfig(Section):
    """The whole agent."""

    state_dir: Path | None = Field(
        None,
        description="Writable state: models, outbox, snapshots. Default: $STATE_DIRECTORY, else /var/lib/edge-agent.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Identity in the fleet.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model in service.")
    source: SourceConfig = Field(
        default_factory=default_source_config, description="Camera, stream, file or sensor."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Inference worker.")
    sinks: SinksConfig = Field(default_factory=SinksConfig, description="Local result sinks.")
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig, description="Event snapshots.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Monitors.")
    control: ControlConfig = Field(default_factory=ControlConfig, description="Local control socket.")
    link: LinkConfig = Field(default_factory=LinkConfig, description="Fleet MQTT link.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Durable outbox for the link.")
    ota: OtaConfig = Field(
        default_factory=OtaConfig,
        description="Signed model updates over the fleet link (needs link.enabled).",
    )

    @model_validator(mode="after")
    def _check_snapshots(self) -> AgentConfig:
        if self.snapshots.max_bytes and self.snapshots.max_bytes < 100_000 and self.snapshots.enabled:
            raise ValueError(
                "snapshots.max_bytes below 100000 cannot hold one camera frame; disable snapshots instead"
            )
        return self

    def resolved_state_dir(self) -> Path:
        """The state directory: configured, from systemd, or the default."""
        if self.state_dir is not None:
            return self.state_dir
        from_systemd = os.environ.get("STATE_DIRECTORY")
        return Path(from_systemd.split(":")[0]) if from_systemd else DEFAULT_STATE_DIR

    def resolved_socket(self) -> Path:
        """The control socket path."""
        if self.control.socket is not None:
            return self.control.socket
        runtime = os.environ.get("RUNTIME_DIRECTORY")
        if runtime:
            return Path(runtime.split(":")[0]) / "control.sock"
        return self.resolved_state_dir() / "control.sock"

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data, secrets hidden."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data


# ---------------------------------------------------------------- loading


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        current = merged.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(current, dict)
            and value.get("type", current.get("type")) != current.get("type")
        ):
            merged[key] = dict(
                value
            )  # another kind of section (a new source type): its keys replace the old ones
        elif isinstance(value, Mapping) and isinstance(current, dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"environment: {name} sets a key below {part}, which another variable sets to a value"
                )
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(
                f"environment: {name} sets a whole section that other {ENV_PREFIX}* variables set keys of"
            )
        node[path[-1]] = value
    return layer


def _locate(text: str, loc: tuple[str | int, ...]) -> int | None:
    """The line (1-based) where the key path is set in a TOML text, if it can be found."""
    keys = [str(k) for k in loc if isinstance(k, str)]
    if not keys:
        return None
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            table = [part.strip().strip('"') for part in header.group(1).split(".")]
            if table == keys:
                return number
            continue
        assign = re.match(r"^([A-Za-z0-9_.\"-]+)\s*=", stripped)
        if assign:
            path = table + [part.strip('"') for part in assign.group(1).split(".")]
            if path == keys[: len(path)]:
                return number
    return None


def format_errors(error: ValidationError, origin: str, text: str = "") -> str:
    """One line per problem: origin, key path, line, what was expected and what was given."""
    lines = []
    for problem in error.errors():
        loc = tuple(problem["loc"])
        # discriminated unions add the tag to the path: drop it so the path is the user's key path
        key = ".".join(str(part) for part in loc) or "(top level)"
        line = _locate(text, loc) if text else None
        where = f"{origin}:{line}" if line else origin
        given = problem.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key; check its spelling and section"
        lines.append(f"{where}: {key}: {message}{shown}")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any], origin: str = "config", text: str = "") -> AgentConfig:
    """Validates a config mapping; ConfigError lists every problem with its key path."""
    try:
        return AgentConfig.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(format_errors(error, origin, text)) from None


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """Reads a TOML file; ConfigError with the line for a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise ConfigError(f"{path}: cannot read: {problem}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as problem:
        raise ConfigError(f"{path}: not valid TOML: {problem}") from None


def read_overrides(state_dir: Path) -> dict[str, Any]:
    """The overrides set remotely, or nothing; a damaged file is reported, not fatal to loading."""
    path = state_dir / OVERRIDES_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as problem:
        raise ConfigError(
            f"{path}: unreadable remote overrides ({problem}); remove the file to reset them"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: remote overrides must be a JSON object")
    return data


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None, use_overrides: bool = True
) -> AgentConfig:
    """Defaults, then the TOML file (if given or present at the default path), the remote overrides, the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    text, origin = "", "defaults"
    if path is None and _exists(DEFAULT_CONFIG_PATH):
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        data, text = read_toml(path)
        origin = str(path)
    env = _env_layer(environ)
    # the state dir (where the remote overrides live) as the file and the environment set it
    file_config = parse_config(
        _deep_merge(data, {"state_dir": env["state_dir"]} if "state_dir" in env else {}), origin, text
    )
    env_origin = f" + environment ({ENV_PREFIX}*)" if env else ""
    if use_overrides:
        # The remote layer must never keep a device from starting: an unreadable or no longer valid overrides file
        # (damaged, or written by another agent version) is reported and skipped, and the file config runs.
        overrides_path = file_config.resolved_state_dir() / OVERRIDES_NAME
        try:
            overrides = read_overrides(file_config.resolved_state_dir())
            if overrides:
                return parse_config(
                    _deep_merge(_deep_merge(data, overrides), env),
                    f"{origin} + {overrides_path}{env_origin}",
                    text,
                )
        except ConfigError as problem:
            log.error("ignoring the remote config overrides: %s", str(problem).replace("\n", "; "))
    return parse_config(_deep_merge(data, env), origin + env_origin, text)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # an unreadable /etc/edge-agent (another user): as if there were no file
        return False


def apply_patch(config: AgentConfig, patch: Mapping[str, Any]) -> AgentConfig:
    """The config with a partial patch merged in and validated (the `set-config` command)."""
    merged = _deep_merge(config.model_dump(mode="json", exclude_none=True), patch)
    return parse_config(merged, "set-config patch")


def save_overrides(state_dir: Path, patch: Mapping[str, Any]) -> dict[str, Any]:
    """Merges `patch` into the persisted remote overrides, atomically; returns the new overrides."""
    current = read_overrides(state_dir)
    merged = _deep_merge(current, patch)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        state_dir / OVERRIDES_NAME, json.dumps(merged, indent=2, sort_keys=True).encode(), mode=0o600
    )
    return merged


def source_kind(config: AgentConfig) -> str:
    """What the configured source delivers: `window` (sensor windows) or `frame`."""
    return "window" if getattr(config.source, "window", None) else "frame"


def source_channels(config: AgentConfig) -> tuple[str, ...] | None:
    """The configured sensor source's channel names, in column order (None for frames)."""
    channels = getattr(config.source, "channels", None)
    return tuple(channels) if channels else None


def activated_in_place(state_dir: Path, bundle: Path) -> Path | None:
    """The release activated in place of a configured bundle: models/{its name}/active, if it names a bundle."""
    try:
        name = json.loads((Path(bundle) / "manifest.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        return None
    active = state_dir / "models" / name / "active"
    return active.resolve() if (active / "manifest.json").is_file() else None


def default_bundle(state_dir: Path) -> Path:
    """The model used when none is configured: the installed active model, else the bundled default."""
    for active in sorted(state_dir.glob("models/*/active")):
        if (active / "manifest.json").exists():
            return active.resolve()
    return REPO_MODELS / DEFAULT_BUNDLE
