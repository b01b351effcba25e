"""The config tree: defaults with no file, TOML errors with key path and line, env overrides, remote overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error, run_cli

from agent.config import AgentConfig, apply_patch, load_config, save_overrides
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_run_without_any_file():
    config = (
        load_config(None, environ={}, use_overrides=False)
        if not Path("/etc/edge-agent/agent.toml").exists()
        else AgentConfig()
    )
    assert config.source.type == "video" and not config.link.enabled and config.model.bundle is None


def test_every_error_names_the_file_the_key_path_and_the_line(tmp_path):
    path = write(
        tmp_path,
        '[device]\nfleet = "f"\n\n[pipeline]\nmax_rate_hz = "fast"\n\n[source]\ntype = "video"\nloop = true\nspeeed = 2\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={}, use_overrides=False)
    lines = str(caught.value).splitlines()
    assert any(f"{path}:5: pipeline.max_rate_hz" in line and "'fast'" in line for line in lines), lines
    assert any("source.video.speeed" in line and "unknown key" in line for line in lines), lines


def test_invalid_toml_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "[device]\nfleet = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(path, environ={}, use_overrides=False)


def test_environment_overrides_win_and_are_typed(tmp_path):
    path = write(tmp_path, '[link]\nhost = "broker.example"\n')
    config = load_config(
        path,
        environ={
            "EDGE_AGENT__LINK__PORT": "8883",
            "EDGE_AGENT__DEVICE__ID": "cam-7",
            "EDGE_AGENT__LINK__ENABLED": "true",
        },
        use_overrides=False,
    )
    assert config.link.port == 8883 and config.device.id == "cam-7" and config.link.enabled


def test_remote_overrides_persist_atomically_and_apply_on_load(tmp_path):
    state = tmp_path / "state"
    path = write(tmp_path, f'state_dir = "{state}"\n')
    base = load_config(path, environ={})
    patch = {"pipeline": {"max_rate_hz": 5}, "monitor": {"anomaly": {"cooldown_s": 3}}}
    assert apply_patch(base, patch).pipeline.max_rate_hz == 5
    save_overrides(state, patch)
    assert load_config(path, environ={}).monitor.anomaly.cooldown_s == 3
    assert not list(state.glob(".*.tmp"))


def test_a_bad_patch_is_refused_with_its_key_path():
    with pytest.raises(ConfigError, match=r"pipeline\.max_rate_hz"):
        apply_patch(AgentConfig(), {"pipeline": {"max_rate_hz": -1}})


def test_config_validate_cli_accepts_the_shipped_profiles():
    for profile in sorted((ROOT / "firmware-config").glob("*.toml")):
        result = run_cli("config", "validate", str(profile))
        assert result.returncode == 0, (profile, result.stderr)


def test_config_validate_cli_prints_every_error_without_a_traceback(tmp_path):
    path = write(tmp_path, "[pipeline]\nmax_rate_hz = 0\n[bogus]\nx = 1\n")
    result = run_cli("config", "validate", str(path))
    assert_clean_error(result, "pipeline.max_rate_hz", "bogus")


def test_a_damaged_remote_overrides_file_is_skipped_so_the_device_still_starts(tmp_path, caplog):
    state = tmp_path / "state"
    state.mkdir()
    path = write(tmp_path, f'state_dir = "{state}"\n[pipeline]\nmax_rate_hz = 4\n')
    (state / "config-overrides.json").write_text('{"pipeline": 5}')
    assert load_config(path, environ={}).pipeline.max_rate_hz == 4
    (state / "config-overrides.json").write_text("{not json")
    assert load_config(path, environ={"EDGE_AGENT__LOG_LEVEL": "debug"}).log_level == "debug"
    assert "ignoring the remote config overrides" in caplog.text


def test_a_patch_that_changes_the_source_type_replaces_the_section():
    patched = apply_patch(AgentConfig(), {"source": {"type": "synthetic", "rate_hz": 20}})
    assert patched.source.type == "synthetic" and patched.source.rate_hz == 20  # type: ignore[union-attr]
    same = apply_patch(patched, {"source": {"rate_hz": 10}})
    assert same.source.type == "synthetic" and same.source.rate_hz == 10  # type: ignore[union-attr]


def test_conflicting_environment_variables_are_a_config_error_not_a_crash():
    with pytest.raises(ConfigError, match="environment"):
        load_config(
            None, environ={"EDGE_AGENT__MODEL": "1", "EDGE_AGENT__MODEL__BUNDLE": "x"}, use_overrides=False
        )


def test_overrides_are_read_from_the_state_dir_the_environment_sets(tmp_path):
    state = tmp_path / "env-state"
    save_overrides(state, {"pipeline": {"max_rate_hz": 3}})
    path = write(tmp_path, "")
    config = load_config(path, environ={"EDGE_AGENT__STATE_DIR": str(state)})
    assert config.pipeline.max_rate_hz == 3 and config.state_dir == state
