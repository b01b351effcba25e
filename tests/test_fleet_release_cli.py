"""`edge-fleet keys|trust|bundle|release` as real subprocesses, as an operator runs them: the whole path from new keys
to a release that a device's `tuf.ngclient.Updater` verifies, a root rotation below the old threshold refused, and one
clear error line (exit 1, no traceback) for a missing key file, a wrong passphrase and a bad archive; exit 2 for a
usage error."""

from __future__ import annotations

import json
import stat
import tarfile
from pathlib import Path

import pytest

from agent.release.chunking import block_index
from agent.release.formats import ReleaseCustom, archive_target

pytest.register_assert_rewrite("fleet_store")
from conftest import MODELS  # noqa: E402
from fleet_store import assert_one_error_line, fleet_env, run_fleet, updater  # noqa: E402

ROLES = ("root", "targets", "snapshot", "timestamp")


def make_keys(keys: Path, *names: str, env: dict[str, str] | None = None) -> None:
    for name in names:
        result = run_fleet("keys", "new", name, "--out", keys, env=env)
        assert result.returncode == 0, result.stderr


def init_args(
    store: Path, keys: Path, root: tuple[str, ...] = ("root",), threshold: int = 1
) -> list[str | Path]:
    args: list[str | Path] = ["trust", "init", "--repo", store]
    for name in root:
        args += ["--root-key", keys / f"{name}.pub.json", "--sign", f"root={keys / f'{name}.key'}"]
    args += ["--root-threshold", str(threshold)]
    for role in ROLES[1:]:
        args += [f"--{role}-key", keys / f"{role}.pub.json", "--sign", f"{role}={keys / f'{role}.key'}"]
    return args


def online_signing(keys: Path) -> list[str]:
    return [arg for role in ROLES[1:] for arg in ("--sign", f"{role}={keys / f'{role}.key'}")]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "digits-cls.tar"
    result = run_fleet("bundle", "pack", MODELS / "digits-cls-onnx", "-o", out)
    assert result.returncode == 0, result.stderr
    index = block_index(out)
    assert f"size     {out.stat().st_size} bytes" in result.stdout
    assert f"sha256   {index.archive_sha256}" in result.stdout
    assert f"blocks   {len(index.blocks)} (" in result.stdout
    assert "golden   4 case(s) passed" in result.stdout
    assert "drift    150 sample feature rows, thresholds for windows of 100 items" in result.stdout
    return out


def test_keys_trust_publish_list_and_revert_through_the_cli_reach_a_device(
    tmp_path: Path, archive: Path
) -> None:
    keys, store = tmp_path / "keys", tmp_path / "store"
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    make_keys(keys, "root", "snapshot", "timestamp")
    made = run_fleet("keys", "new", "targets", "--out", keys, "--passphrase-file", secret)
    assert made.returncode == 0 and "encrypted" in made.stdout, made.stderr
    for name in ROLES:
        assert stat.S_IMODE((keys / f"{name}.key").stat().st_mode) == 0o600
    with_passphrase = fleet_env(EDGE_FLEET_KEY_PASSPHRASE="correct horse battery staple")

    init = run_fleet(*init_args(store, keys), env=with_passphrase)
    assert init.returncode == 0, init.stderr
    assert init.stdout.strip() == str(store / "metadata" / "1.root.json")

    published = run_fleet(
        "release", "publish", archive, "--repo", store, "--fleet", "acme", "--group", "lab",
        "--activation", "trial_s=600", "--activation", "shadow=true", "--min-agent-version", "0.2",
        *online_signing(keys), env=with_passphrase,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert "published digits-cls v1 for fleet acme (lab)" in published.stdout
    assert "Traceback" not in published.stderr

    listing = run_fleet("release", "list", "--repo", store, "--json")
    assert listing.returncode == 0, listing.stderr
    (row,) = json.loads(listing.stdout)
    assert (row["name"], row["version"], row["fleet"], row["groups"]) == ("digits-cls", 1, "acme", ["lab"])
    assert row["size"] == archive.stat().st_size and row["published"]
    table = run_fleet("release", "list", "--repo", store)
    assert "digits-cls" in table.stdout and "acme" in table.stdout

    reverted = run_fleet(
        "release",
        "revert",
        "digits-cls",
        "--to",
        "1",
        "--repo",
        store,
        *online_signing(keys),
        env=with_passphrase,
    )
    assert reverted.returncode == 0, reverted.stderr
    assert "published digits-cls v2 for fleet acme (lab)" in reverted.stdout

    client = updater(store, tmp_path / "device")
    client.refresh()
    for version in (1, 2):
        info = client.get_targetinfo(archive_target("digits-cls", version))
        assert info is not None
        custom = ReleaseCustom.model_validate_json(json.dumps(info.custom))
        assert (
            custom.activation.trial_s == 600
            and custom.activation.shadow
            and custom.min_agent_version == "0.2"
        )
        stored = store / "targets" / info.get_prefixed_paths()[0]
        assert client.find_cached_target(info, str(stored)) == str(stored)

    shown = run_fleet("trust", "show", "--repo", store, "--json")
    assert shown.returncode == 0, shown.stderr
    assert [(r["role"], r["version"]) for r in json.loads(shown.stdout)] == [
        ("root", 1),
        ("targets", 3),
        ("snapshot", 3),
        ("timestamp", 3),
    ]


def test_root_rotation_below_the_old_threshold_is_refused_by_the_cli(tmp_path: Path) -> None:
    keys, store = tmp_path / "keys", tmp_path / "store"
    make_keys(keys, "r1", "r2", "r3", *ROLES[1:])
    assert run_fleet(*init_args(store, keys, root=("r1", "r2"), threshold=2)).returncode == 0
    refused = run_fleet(
        "trust", "rotate", "--repo", store, "--root-key", keys / "r3.pub.json", "--root-threshold", "1",
        "--sign", f"root={keys / 'r1.key'}", "--sign", f"root={keys / 'r3.key'}",
    )  # fmt: skip
    assert_one_error_line(
        refused, "root v2 must be signed by 2 key(s) of root v1 (the --sign root= keys give 1)"
    )
    assert not (store / "metadata" / "2.root.json").exists()
    accepted = run_fleet(
        "trust", "rotate", "--repo", store, "--root-key", keys / "r3.pub.json", "--root-threshold", "1",
        "--sign", f"root={keys / 'r1.key'}", "--sign", f"root={keys / 'r2.key'}", "--sign", f"root={keys / 'r3.key'}",
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.strip() == str(store / "metadata" / "2.root.json")


# -- one clear line -----------------------------------------------------------------------------------------------


@pytest.fixture
def initialised(tmp_path: Path) -> tuple[Path, Path]:
    keys, store = tmp_path / "keys", tmp_path / "store"
    make_keys(keys, *ROLES)
    assert run_fleet(*init_args(store, keys)).returncode == 0
    return keys, store


def test_missing_key_file_is_one_error_line(
    tmp_path: Path, initialised: tuple[Path, Path], archive: Path
) -> None:
    keys, store = initialised
    result = run_fleet(
        "release", "publish", archive, "--repo", store, "--fleet", "acme",
        "--sign", f"targets={keys / 'nope.key'}", "--sign", f"snapshot={keys / 'snapshot.key'}",
    )  # fmt: skip
    assert_one_error_line(result, f"key file {keys / 'nope.key'} does not exist")


def test_wrong_passphrase_is_one_error_line(
    tmp_path: Path, initialised: tuple[Path, Path], archive: Path
) -> None:
    keys, store = initialised
    secret = tmp_path / "secret"
    secret.write_text("right\n")
    assert run_fleet("keys", "new", "locked", "--out", keys, "--passphrase-file", secret).returncode == 0
    wrong = fleet_env(EDGE_FLEET_KEY_PASSPHRASE="wrong")
    result = run_fleet(
        "trust", "add-key", "targets", keys / "locked.pub.json", "--repo", store,
        "--sign", f"root={keys / 'locked.key'}", env=wrong,
    )  # fmt: skip
    assert_one_error_line(result, f"wrong passphrase for {keys / 'locked.key'}")
    missing = run_fleet(
        "trust",
        "add-key",
        "targets",
        keys / "locked.pub.json",
        "--repo",
        store,
        "--sign",
        f"root={keys / 'locked.key'}",
    )
    assert_one_error_line(
        missing, "is encrypted: give its passphrase with --passphrase-file or $EDGE_FLEET_KEY_PASSPHRASE"
    )


def test_bad_archive_is_one_error_line(tmp_path: Path, initialised: tuple[Path, Path]) -> None:
    keys, store = initialised
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive at all" * 100)
    result = run_fleet("release", "publish", junk, "--repo", store, "--fleet", "acme", *online_signing(keys))
    assert_one_error_line(result, f"{junk} is not a bundle archive")
    headless = tmp_path / "headless.tar"
    with tarfile.open(headless, "w") as tar:
        tar.add(MODELS / "digits-cls-onnx" / "labels.txt", arcname="labels.txt")
    result = run_fleet(
        "release", "publish", headless, "--repo", store, "--fleet", "acme", *online_signing(keys)
    )
    assert_one_error_line(result, "does not start with manifest.json")
    missing = run_fleet(
        "release",
        "publish",
        tmp_path / "absent.tar",
        "--repo",
        store,
        "--fleet",
        "acme",
        *online_signing(keys),
    )
    assert_one_error_line(missing, "does not exist")


def test_bundle_that_is_no_bundle_is_one_error_line(tmp_path: Path) -> None:
    result = run_fleet("bundle", "pack", tmp_path, "-o", tmp_path / "out.tar")
    assert_one_error_line(result)
    assert not (tmp_path / "out.tar").exists()


def test_uninitialised_store_is_one_error_line(tmp_path: Path) -> None:
    result = run_fleet("release", "list", "--repo", tmp_path / "nothing")
    assert_one_error_line(result, "is not a release repository", "edge-fleet trust init")


def test_malformed_sign_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = run_fleet("release", "list", "--repo", tmp_path, "--sign", "targets")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_fleet("release", "publish", tmp_path / "a.tar", "--repo", tmp_path, "--sign", "bogus=key")
    assert result.returncode == 2 and "expected ROLE=KEYFILE" in result.stderr
