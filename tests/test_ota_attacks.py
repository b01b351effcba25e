"""One test per attack, named as python-tuf names its tests: real TUF metadata, real ed25519 signatures, real files,
the in-process repository port. In every one nothing new is installed and the device leaves a clear `update` event.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from ota_support import (
    GROUP,
    NAME,
    Device,
    LocalRepo,
    RepoBuilder,
    make_bundle,
    make_device,
    random_bytes,
)
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import MetaFile

from agent.ota import CheckStatus, UpdateState
from agent.release.archive import pack
from agent.release.chunking import block_index
from agent.release.formats import BlockIndex


@pytest.fixture
def builder(tmp_path: Path) -> RepoBuilder:
    builder = RepoBuilder(tmp_path / "repo")
    builder.add_release(make_bundle(tmp_path, 2, pad=random_bytes(300_000, seed=2)))
    builder.publish()
    return builder


@pytest.fixture
def device(tmp_path: Path, builder: RepoBuilder) -> Device:
    return make_device(tmp_path, builder)


def installed_v2(device: Device, builder: RepoBuilder) -> None:
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.INSTALLED, outcome.reason
    device.events.clear()


def add_v3(tmp_path: Path, builder: RepoBuilder, **custom: object):
    release = builder.add_release(make_bundle(tmp_path, 3, pad=random_bytes(300_000, seed=3)), **custom)
    builder.publish()
    return release


def assert_refused_cleanly(
    device: Device, outcome, status: CheckStatus, code: str | set[str], before: list[int]
) -> None:
    """Nothing installed, nothing half-done left in models/ or ota/, and an update event with the reason."""
    assert outcome.status is status, (outcome.status, outcome.reason)
    codes = {code} if isinstance(code, str) else code
    assert outcome.record is not None and outcome.record.code in codes, outcome.record
    code = outcome.record.code
    assert device.installed() == before
    assert not [e for e in device.model_entries() if e.startswith(".")]
    archives = device.state_dir / "models" / NAME / "archives"
    kept = sorted(p.name for p in archives.iterdir()) if archives.exists() else []
    assert kept == sorted(n for v in before for n in (f"{v}.tar", f"{v}.blocks.json"))
    ota = device.state_dir / "ota"
    assert not [p.name for p in ota.iterdir() if p.name.endswith(".part")] or status is CheckStatus.FAILED
    last = [e for e in outcome.events if e.type == "update" and e.evidence.get("code") == code]
    assert last, [e.message for e in outcome.events]
    assert last[-1].evidence["state"] == outcome.record.state.value
    assert outcome.record.reason and outcome.record.reason in last[-1].message


# --- arbitrary bundles -------------------------------------------------------------------------------------------


def test_arbitrary_bundle_attack_targets_signed_by_an_unknown_key_is_rejected(tmp_path, builder, device):
    release = builder.add_release(make_bundle(tmp_path, 3))
    builder.publish(targets_signers=[CryptoSigner.generate_ed25519()])
    outcome = device.check(release.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "untrusted-metadata", [])
    assert outcome.events[-1].severity == "error"
    assert not device.repo.block_requests  # not a byte of the archive was asked for


def test_arbitrary_bundle_attack_an_archive_swapped_in_the_repository_is_never_installed(
    tmp_path, builder, device
):
    release = builder.releases[0]
    evil = make_bundle(tmp_path / "evil", 2, pad=random_bytes(300_000, seed=66))
    pack(evil, tmp_path / "evil.tar")
    served = next((builder.targets_dir / "bundles" / NAME).glob(f"{release.digest}.*.tar"))
    served.write_bytes(
        (tmp_path / "evil.tar").read_bytes()[: len(release.archive)].ljust(len(release.archive))
    )
    outcome = device.check(release.desired)
    # every block fails its hash: the tries or the data budget run out first
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, {"block-missing", "budget"}, [])
    assert outcome.transfer.fetched_blocks == 0


def test_below_threshold_attack_targets_with_one_of_two_signatures_is_rejected(tmp_path):
    builder = RepoBuilder(tmp_path / "repo", targets_keys=2, targets_threshold=2)
    release = builder.add_release(make_bundle(tmp_path, 2))
    builder.publish(targets_signers=builder.signers["targets"][:1])
    device = make_device(tmp_path, builder)
    outcome = device.check(release.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "untrusted-metadata", [])
    builder.publish()  # both signatures: accepted
    assert device.check(release.desired).status is CheckStatus.INSTALLED


# --- rollback ----------------------------------------------------------------------------------------------------


def test_rollback_attack_snapshot_pointing_at_older_targets_is_rejected(tmp_path, builder, device):
    installed_v2(device, builder)
    trusted_targets = builder.targets.signed.version
    v3 = add_v3(tmp_path, builder)
    # The repository's own snapshot and timestamp keys sign a snapshot that points back at targets it replaced.
    builder.snapshot.signed.version += 1
    builder.snapshot.signed.meta["targets.json"] = MetaFile(version=trusted_targets - 1)
    data = builder._sign(builder.snapshot, builder.signers["snapshot"])
    (builder.metadata_dir / f"{builder.snapshot.signed.version}.snapshot.json").write_bytes(data)
    builder.timestamp.signed.version += 1
    builder.timestamp.signed.snapshot_meta = MetaFile(version=builder.snapshot.signed.version)
    builder.write_timestamp()
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "rollback", [2])


def test_rollback_attack_a_lower_release_version_is_refused_without_asking_the_repository(tmp_path, builder):
    v1 = builder.add_release(make_bundle(tmp_path, 1))
    builder.publish()
    device = make_device(tmp_path, builder)
    installed_v2(device, builder)
    asked = len(device.repo.requests)
    outcome = device.check(v1.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.REFUSED, "not-newer", [2])
    assert len(device.repo.requests) == asked
    assert device.check(v1.desired).status is CheckStatus.HELD  # not retried, no second event


def test_a_desired_version_equal_to_the_installed_one_is_up_to_date_and_asks_nothing(builder, device):
    installed_v2(device, builder)
    asked = len(device.repo.requests)
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.UP_TO_DATE and not outcome.events
    assert len(device.repo.requests) == asked


def test_a_desired_version_not_above_the_serving_one_is_refused(builder, device):
    outcome = device.check(builder.releases[0].desired, serving=(NAME, 5))
    assert_refused_cleanly(device, outcome, CheckStatus.REFUSED, "not-newer", [])


# --- freeze ------------------------------------------------------------------------------------------------------


def test_freeze_attack_an_expired_timestamp_blocks_new_installs_only(tmp_path, builder, device):
    installed_v2(device, builder)
    v3 = builder.add_release(make_bundle(tmp_path, 3))
    builder.publish(timestamp_expires=datetime.datetime(2024, 6, 1, tzinfo=datetime.timezone.utc))
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "expired", [2])
    assert "new installs are blocked" in outcome.events[-1].message
    assert (device.state_dir / "models" / NAME / "2" / "manifest.json").is_file()  # the installed model stays


def test_indefinite_freeze_attack_a_replayed_older_timestamp_is_rejected(tmp_path, builder, device):
    installed_v2(device, builder)
    old_timestamp = (builder.metadata_dir / "timestamp.json").read_bytes()
    v3 = add_v3(tmp_path, builder)
    assert device.check(v3.desired).status is CheckStatus.INSTALLED  # the device has seen the newer timestamp
    v4 = builder.add_release(make_bundle(tmp_path, 4))
    builder.publish()
    device.repo.overrides["metadata/timestamp.json"] = old_timestamp  # hide v4 behind the old timestamp
    outcome = device.check(v4.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "rollback", [2, 3])


def test_indefinite_freeze_attack_the_same_timestamp_replayed_past_its_expiry_is_rejected(tmp_path, builder):
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(
        seconds=2
    )
    builder.publish(timestamp_expires=expires)
    device = make_device(tmp_path, builder)
    installed_v2(device, builder)
    frozen = (builder.metadata_dir / "timestamp.json").read_bytes()
    v3 = add_v3(tmp_path, builder)
    device.repo.overrides["metadata/timestamp.json"] = frozen  # the repository stops moving on
    time.sleep(max(0.0, expires.timestamp() - time.time()) + 1.1)
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "expired", [2])


# --- mix and match -----------------------------------------------------------------------------------------------


def test_mix_and_match_attack_older_targets_under_the_name_the_snapshot_gives_is_rejected(
    tmp_path, builder, device
):
    installed_v2(device, builder)
    older = (builder.metadata_dir / f"{builder.targets.signed.version}.targets.json").read_bytes()
    v3 = add_v3(tmp_path, builder)
    device.repo.overrides[f"metadata/{builder.targets.signed.version}.targets.json"] = older
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "rollback", [2])


def test_mix_and_match_attack_targets_that_do_not_match_the_snapshot_hashes_is_rejected(
    tmp_path, builder, device
):
    v3 = builder.add_release(make_bundle(tmp_path, 3))
    builder.publish()
    name = f"{builder.targets.signed.version}.targets.json"
    genuine = (builder.metadata_dir / name).read_bytes()
    # A snapshot that pins the targets by length and hash, and a targets file with other bytes (same version).
    builder.snapshot.signed.meta["targets.json"] = MetaFile(
        version=builder.targets.signed.version,
        length=len(genuine),
        hashes={"sha256": hashlib.sha256(genuine).hexdigest()},
    )
    builder.snapshot.signed.version += 1
    data = builder._sign(builder.snapshot, builder.signers["snapshot"])
    (builder.metadata_dir / f"{builder.snapshot.signed.version}.snapshot.json").write_bytes(data)
    builder.timestamp.signed.version += 1
    builder.timestamp.signed.snapshot_meta = MetaFile(version=builder.snapshot.signed.version)
    builder.write_timestamp()
    at = genuine.index(b'"sig":"') + 7  # one hex digit of the signature changed: same length, other bytes
    forged = genuine[:at] + (b"0" if genuine[at : at + 1] != b"0" else b"1") + genuine[at + 1 :]
    device.repo.overrides[f"metadata/{name}"] = forged
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "metadata-mismatch", [])


# --- endless data, slow retrieval, oversized metadata ------------------------------------------------------------


def test_endless_data_attack_metadata_longer_than_declared_is_cut_short(builder, device):
    device.repo.extra_bytes = 50 * 1024 * 1024
    outcome = device.check(builder.releases[0].desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "too-much-data", [])
    assert device.repo.bytes_sent < 200 * 1024


def test_endless_data_attack_endless_parts_are_refused_at_the_first(builder, device):
    device.repo.claim_parts = 10**9
    outcome = device.check(builder.releases[0].desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "too-much-data", [])
    assert device.repo.messages_sent == 2  # the 404 for 2.root.json, then the first part of timestamp.json


def test_endless_data_attack_on_blocks_stops_at_the_data_budget_and_holds_the_release(builder, device):
    device.repo.oversize_blocks = 100 * 1024
    outcome = device.check(builder.releases[0].desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "budget", [])
    assert outcome.record.retry is False
    length = len(builder.releases[0].archive)
    assert outcome.transfer is not None and outcome.transfer.budget_spent <= 2 * length + 2 * 228 * 1024
    assert device.check(builder.releases[0].desired).status is CheckStatus.HELD


def test_oversized_metadata_attack_a_validly_signed_huge_timestamp_is_refused(builder, device):
    builder.timestamp.signed.unrecognized_fields["padding"] = "x" * 40_000
    builder.timestamp.signed.version += 1
    builder.write_timestamp()
    outcome = device.check(builder.releases[0].desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "too-much-data", [])


def test_slow_retrieval_attack_a_repository_that_never_answers_fails_within_its_deadline(builder, device):
    device.repo.silent = True
    device.updater.config = device.updater.config.model_copy(update={"request_timeout_s": 0.4})
    started = time.monotonic()
    outcome = device.check(builder.releases[0].desired)
    assert time.monotonic() - started < 1.5
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "slow-retrieval", [])


def test_slow_retrieval_attack_a_repository_that_trickles_fails_within_its_deadline(tmp_path, builder):
    repo = LocalRepo(builder.folder, trickle_s=0.6, honour_deadline=False)
    device = make_device(tmp_path, builder, repo, request_timeout_s=0.4)
    started = time.monotonic()
    outcome = device.check(builder.releases[0].desired)
    assert time.monotonic() - started < 1.5
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "slow-retrieval", [])


# --- blocks and archives -----------------------------------------------------------------------------------------


def test_tampered_block_is_re_requested_then_the_release_installs(builder, device):
    device.repo.corrupt[1] = 1
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.INSTALLED
    assert device.repo.block_requests[1] == 2 and outcome.transfer.dropped_blocks == 1


def test_tampered_archive_hash_valid_blocks_of_a_forged_index_are_refused_by_the_tuf_check(tmp_path):
    builder = RepoBuilder(tmp_path / "repo")
    bundle = make_bundle(tmp_path, 2, pad=random_bytes(300_000, seed=2))
    pack(bundle, tmp_path / "genuine.tar")
    genuine = (tmp_path / "genuine.tar").read_bytes()
    forged = bytearray(genuine)
    forged[len(forged) // 2] ^= 0xFF
    (tmp_path / "forged.tar").write_bytes(forged)
    cut = block_index(tmp_path / "forged.tar")
    # An index whose blocks all match the forged bytes but that names the genuine archive's hash and length.
    index = BlockIndex(
        archive_sha256=hashlib.sha256(genuine).hexdigest(),
        archive_length=len(genuine),
        chunking=cut.chunking,
        blocks=cut.blocks,
    )
    release = builder.add_release(bundle, archive=genuine, index=index)
    next((builder.targets_dir / "bundles" / NAME).glob(f"{release.digest}.*.tar")).write_bytes(bytes(forged))
    builder.publish()
    device = make_device(tmp_path, builder)
    outcome = device.check(release.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.REFUSED, "archive-mismatch", [])
    assert outcome.transfer.dropped_blocks == 0  # every block passed its (forged) hash
    assert outcome.events[-1].severity == "error"


def _with_entry(tmp_path: Path, bundle: Path, entry: tarfile.TarInfo, data: bytes = b"") -> bytes:
    pack(bundle, tmp_path / "good.tar")
    out = io.BytesIO()
    with (
        tarfile.open(tmp_path / "good.tar") as good,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in good.getmembers():
            tar.addfile(member, good.extractfile(member))
        entry.size = len(data) if entry.isreg() else 0
        tar.addfile(entry, io.BytesIO(data) if entry.isreg() else None)
    return out.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


EVIL_ENTRIES = {
    "dotdot": (_entry("../../etc/cron.d/evil"), b"* * * * * root sh\n"),
    "symlink": (_entry("model.link", tarfile.SYMTYPE, "/etc/shadow"), b""),
    "extra_file": (_entry("extra.sh"), b"#!/bin/sh\n"),
}


@pytest.mark.parametrize("kind", list(EVIL_ENTRIES))
def test_malicious_archive_attack_with_dotdot_a_symlink_or_an_extra_file_is_refused_by_the_unpacker(
    tmp_path, kind
):
    builder = RepoBuilder(tmp_path / "repo")
    bundle = make_bundle(tmp_path, 2)
    entry, data = EVIL_ENTRIES[kind]
    release = builder.add_release(bundle, archive=_with_entry(tmp_path, bundle, entry, data))
    builder.publish()  # genuinely signed: the device must not rely on the operator's tooling
    device = make_device(tmp_path, builder)
    outcome = device.check(release.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.REFUSED, "unsafe-archive", [])
    assert not (tmp_path / "etc").exists()
    assert not list((device.state_dir / "ota").glob("*.part"))


# --- not meant for this device -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("custom", "group", "code"),
    [
        ({"fleet": "fleet-b"}, GROUP, "other-fleet"),
        ({"groups": ("group-2",)}, GROUP, "other-group"),
        ({"groups": ("group-2",)}, None, "other-group"),
    ],
    ids=["another-fleet", "another-group", "no-group"],
)
def test_metadata_for_another_fleet_or_group_is_refused(tmp_path, builder, custom, group, code):
    v3 = add_v3(tmp_path, builder, **custom)
    device = make_device(tmp_path, builder, group=group)
    outcome = device.check(v3.desired)
    assert_refused_cleanly(device, outcome, CheckStatus.REFUSED, code, [])
    assert not device.repo.block_requests


def test_a_desired_release_the_signed_targets_do_not_list_is_refused(builder, device):
    outcome = device.check(builder.releases[0].desired.model_copy(update={"version": 9}))
    assert outcome.status is CheckStatus.REFUSED and outcome.record.code == "not-listed"
    assert device.installed() == []


# --- root rotation -----------------------------------------------------------------------------------------------


def test_root_rotation_without_the_old_threshold_is_rejected(builder, device):
    builder.rotate_root(sign_with_old=False)
    outcome = device.check(builder.releases[0].desired)
    assert_refused_cleanly(device, outcome, CheckStatus.FAILED, "untrusted-metadata", [])
    trusted = json.loads((device.state_dir / "tuf" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 1


def test_root_rotation_signed_by_old_and_new_is_trusted_and_kept(builder, device, tmp_path):
    builder.rotate_root(sign_with_old=True)
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED
    tuf = device.state_dir / "tuf"
    assert json.loads((tuf / "root.json").read_bytes())["signed"]["version"] == 2
    (tmp_path / "device-root.json").unlink()  # the bootstrap root is not needed any more
    assert device.check(builder.releases[0].desired).status is CheckStatus.UP_TO_DATE
    v3 = add_v3(tmp_path, builder)
    assert device.check(v3.desired).status is CheckStatus.INSTALLED
    assert device.updater.record.state is UpdateState.INSTALLED
