"""Packing and publishing releases, read back by a device's real `tuf.ngclient.Updater`: the release target and its
`custom`, the archive verified by TUF's own length and hash check (`find_cached_target`), the block index that matches
the archive, versions that only go up, a revert that re-releases the old bytes under a new version, and the bundles
and archives that are refused before anything is signed (failing golden test, files that do not match the manifest,
an extra file in the archive, a tampered stored archive)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from tuf.api.exceptions import RepositoryError

from agent.errors import IntegrityError, UpdateRejected
from agent.fleet.errors import ReleaseRefused, SigningError, StoreError
from agent.fleet.pack import pack_bundle
from agent.fleet.release import list_releases, publish, revert
from agent.fleet.repository import FileRepository
from agent.release.archive import unpack
from agent.release.chunking import block_index
from agent.release.formats import Activation, BlockIndex, ReleaseCustom, archive_target, index_target

pytest.register_assert_rewrite("fleet_store")
from conftest import MODELS, edit_manifest  # noqa: E402
from fleet_store import Keys, StoreFetcher, init_store, updater  # noqa: E402

BUNDLE = "digits-cls-onnx"
NAME = "digits-cls"


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def store(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "store"
    init_store(path, keys)
    return path


def online(keys: Keys) -> dict[str, list]:
    return keys.signers(targets="targets", snapshot="snapshot", timestamp="timestamp")


def packed(tmp_path: Path, version: int = 1, name: str = BUNDLE) -> Path:
    """The bundled model at `version` (its manifest edited), packed by `bundle pack`."""
    folder = tmp_path / f"{name}-v{version}"
    if not folder.exists():
        shutil.copytree(MODELS / name, folder)
        edit_manifest(folder, version=version)
    out = tmp_path / f"{name}-v{version}.tar"
    if not out.exists():
        pack_bundle(folder, out)
    return out


# -- publish, then a device -------------------------------------------------------------------------------------------


def test_publish_then_a_client_finds_the_release_with_its_custom_and_verifies_the_archive(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    archive = packed(tmp_path)
    activation = Activation(shadow=True, trial_s=600, trial_min_items=50)
    done = publish(
        store,
        archive,
        fleet="acme",
        groups=["lab", "dock"],
        min_agent_version="0.2",
        activation=activation,
        signers=online(keys),
    )
    assert (done.name, done.version, done.versions) == (
        NAME,
        1,
        {"targets": 2, "snapshot": 2, "timestamp": 2},
    )

    device = tmp_path / "device"
    client = updater(store, device)
    client.refresh()
    info = client.get_targetinfo(archive_target(NAME, 1))
    assert info is not None and info.length == archive.stat().st_size
    custom = ReleaseCustom.model_validate_json(json.dumps(info.custom))
    assert (custom.name, custom.version, custom.fleet, custom.groups) == (NAME, 1, "acme", ("lab", "dock"))
    assert custom.min_agent_version == "0.2" and custom.activation == activation
    assert (custom.capabilities.runtime, custom.capabilities.input_kind) == ("onnxruntime", "image")

    # The archive comes by blocks, not download_target: TUF checks the assembled file with find_cached_target.
    assembled = device / "partial.tar"
    assembled.write_bytes((store / "targets" / info.get_prefixed_paths()[0]).read_bytes())
    assert client.find_cached_target(info, str(assembled)) == str(assembled)
    data = bytearray(assembled.read_bytes())
    data[-1] ^= 1
    assembled.write_bytes(bytes(data))
    assert client.find_cached_target(info, str(assembled)) is None

    # The block index is a small target of its own, fetched under its hash-prefixed name.
    index_info = client.get_targetinfo(custom.block_index.path)
    assert index_info is not None
    assert (index_info.length, index_info.hashes["sha256"]) == (
        custom.block_index.length,
        custom.block_index.sha256,
    )
    index_file = client.download_target(index_info, str(device / "index.json"))
    assert (
        BlockIndex.model_validate_json(Path(index_file).read_bytes()).archive_sha256 == info.hashes["sha256"]
    )


def test_published_block_index_matches_the_archive(tmp_path: Path, store: Path, keys: Keys) -> None:
    archive = packed(tmp_path)
    done = publish(store, archive, fleet="acme", signers=online(keys))
    repo = FileRepository(store)
    targets = repo.targets().targets
    stored_index = repo.stored_path(targets[index_target(NAME, 1)])
    stored_archive = repo.stored_path(targets[archive_target(NAME, 1)])
    assert stored_index.name.endswith(".1.blocks.json") and stored_archive.name == f"{done.sha256}.1.tar"
    assert stored_archive.parent == store / "targets" / "bundles" / NAME
    assert stored_archive.read_bytes() == archive.read_bytes()
    index = BlockIndex.model_validate_json(stored_index.read_bytes())
    assert index == block_index(archive)
    data = archive.read_bytes()
    for block in index.blocks:
        assert hashlib.sha256(data[block.offset : block.offset + block.size]).hexdigest() == block.sha256
    assert len(index.blocks) == done.blocks


def test_the_store_is_what_a_client_fetches_under_consistent_snapshot_names(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    publish(store, packed(tmp_path), fleet="acme", signers=online(keys))
    client = updater(store, tmp_path / "device")
    client.refresh()
    fetcher = client._fetcher
    assert isinstance(fetcher, StoreFetcher)
    assert fetcher.fetched == [
        "metadata/2.root.json",
        "metadata/timestamp.json",
        "metadata/2.snapshot.json",
        "metadata/2.targets.json",
    ]


# -- versions only go up ----------------------------------------------------------------------------------------------


def test_second_publish_of_the_same_version_is_refused(tmp_path: Path, store: Path, keys: Keys) -> None:
    archive = packed(tmp_path)
    publish(store, archive, fleet="acme", signers=online(keys))
    with pytest.raises(ReleaseRefused, match="digits-cls v1 is already published"):
        publish(store, archive, fleet="acme", signers=online(keys))
    with pytest.raises(ReleaseRefused, match="already published"):
        publish(store, archive, fleet="other", signers=online(keys))  # a target path is never reused


def test_publish_of_a_lower_version_is_refused(tmp_path: Path, store: Path, keys: Keys) -> None:
    publish(store, packed(tmp_path, 3), fleet="acme", signers=online(keys))
    with pytest.raises(ReleaseRefused, match="v2 is not above v3, already published for fleet acme"):
        publish(store, packed(tmp_path, 2), fleet="acme", signers=online(keys))
    # another fleet has its own line of versions
    publish(store, packed(tmp_path, 2), fleet="other", signers=online(keys))
    rows = list_releases(store)
    assert [(row.version, row.fleet) for row in rows] == [(2, "other"), (3, "acme")]
    assert all(row.published and row.size > 0 for row in rows)


def test_publish_signed_below_the_targets_threshold_is_refused_and_writes_nothing(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    with pytest.raises(SigningError, match=r"targets v2 needs 1 signature\(s\)"):
        publish(
            store,
            packed(tmp_path),
            fleet="acme",
            signers=keys.signers(snapshot="snapshot", timestamp="timestamp"),
        )
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


# -- revert -----------------------------------------------------------------------------------------------------------


def test_revert_publishes_the_old_bundles_bytes_under_a_new_version(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    publish(
        store,
        packed(tmp_path, 1),
        fleet="acme",
        groups=["lab"],
        activation=Activation(trial_s=60),
        signers=online(keys),
    )
    publish(store, packed(tmp_path, 2), fleet="acme", groups=["lab"], signers=online(keys))
    done = revert(store, NAME, 1, signers=online(keys))
    assert (done.version, done.fleet, done.groups) == (3, "acme", ("lab",))

    client = updater(store, tmp_path / "device")
    info = client.get_targetinfo(archive_target(NAME, 3))
    assert info is not None
    custom = ReleaseCustom.model_validate_json(json.dumps(info.custom))
    assert custom.version == 3 and custom.activation.trial_s == 60  # the old release's thresholds
    stored = store / "targets" / info.get_prefixed_paths()[0]
    assert client.find_cached_target(info, str(stored)) == str(stored)

    old, new = tmp_path / "old", tmp_path / "new"
    unpack(packed(tmp_path, 1), old, NAME, 1, 1 << 24)
    unpack(stored, new, NAME, 3, 1 << 24)
    files = sorted(p.relative_to(old) for p in old.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(new) for p in new.rglob("*") if p.is_file())
    for relative in files:
        if relative.name != "manifest.json":
            assert (old / relative).read_bytes() == (new / relative).read_bytes()
    old_manifest, new_manifest = (json.loads((d / "manifest.json").read_text()) for d in (old, new))
    assert new_manifest == old_manifest | {"version": 3}


def test_revert_refuses_a_stored_archive_that_does_not_match_its_signed_target(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    done = publish(store, packed(tmp_path), fleet="acme", signers=online(keys))
    stored = store / "targets" / "bundles" / NAME / f"{done.sha256}.1.tar"
    stored.write_bytes(stored.read_bytes()[:-1] + b"x")
    with pytest.raises(StoreError, match="does not match its signed target"):
        revert(store, NAME, 1, signers=online(keys))


def test_revert_to_a_version_never_published_is_refused(tmp_path: Path, store: Path, keys: Keys) -> None:
    publish(store, packed(tmp_path), fleet="acme", signers=online(keys))
    with pytest.raises(ReleaseRefused, match=r"digits-cls v7 is not published \(published versions: 1\)"):
        revert(store, NAME, 7, signers=online(keys))


# -- refused before anything is signed --------------------------------------------------------------------------------


def test_pack_refuses_a_bundle_that_fails_its_golden_test(tmp_path: Path, bundle_copy) -> None:
    folder = bundle_copy(BUNDLE)
    expected = folder / "golden" / "case0.expected.npz"
    with np.load(expected) as stored:
        outputs = {key: stored[key] + 1.0 for key in stored.files}
    np.savez(expected, **outputs)
    edit_manifest(folder, rehash=("golden/case0.expected.npz",))
    with pytest.raises(ReleaseRefused, match=r"fails its golden self-test: golden/case0\.png: output 'probs' deviates 1, over its limit"):
        pack_bundle(folder, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def test_pack_refuses_a_bundle_whose_files_do_not_match_its_manifest(tmp_path: Path, bundle_copy) -> None:
    folder = bundle_copy(BUNDLE)
    with (folder / "labels.txt").open("a") as handle:
        handle.write("extra\n")
    with pytest.raises(IntegrityError):
        pack_bundle(folder, tmp_path / "out.tar")


def test_pack_is_byte_reproducible_and_reports_the_archive(tmp_path: Path) -> None:
    first = pack_bundle(MODELS / BUNDLE, tmp_path / "a.tar")
    second = pack_bundle(MODELS / BUNDLE, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert (first.size, first.sha256, first.blocks) == (second.size, second.sha256, second.blocks)
    assert first.golden.passed and first.blocks == len(block_index(tmp_path / "a.tar").blocks)


def test_publish_refuses_an_archive_with_an_extra_file(tmp_path: Path, store: Path, keys: Keys) -> None:
    good = packed(tmp_path)
    bad = tmp_path / "extra.tar"
    with tarfile.open(good) as source, tarfile.open(bad, "w", format=tarfile.PAX_FORMAT) as out:
        for member in source.getmembers():
            out.addfile(member, source.extractfile(member))
        payload = b"#!/bin/sh\n"
        extra = tarfile.TarInfo("run.sh")
        extra.size = len(payload)
        out.addfile(extra, io.BytesIO(payload))
    with pytest.raises(UpdateRejected, match="extra"):
        publish(store, bad, fleet="acme", signers=online(keys))
    assert list_releases(store) == []
    assert not list((store / "targets").rglob("*.tar"))


def test_activation_thresholds_are_signed_and_read_back_by_the_client(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    # TUF signs canonical JSON, which has no fractions: the thresholds are whole numbers (per mille, ppm, %).
    activation = Activation(min_agreement_permille=950, max_error_ppm=2_500, trial_s=600, shadow=True)
    publish(store, packed(tmp_path), fleet="acme", activation=activation, signers=online(keys))
    (release,) = list_releases(store)
    assert release.custom.activation == activation


def test_metadata_changed_on_disk_after_publish_is_refused_by_the_client(
    tmp_path: Path, store: Path, keys: Keys
) -> None:
    # The store holds only what python-tuf verified: an edit of the signed custom (a weaker activation) breaks it.
    publish(store, packed(tmp_path), fleet="acme", activation=Activation(trial_s=600), signers=online(keys))
    path = store / "metadata" / "2.targets.json"
    document = json.loads(path.read_text())
    document["signed"]["targets"][archive_target(NAME, 1)]["custom"]["activation"]["trial_s"] = 1
    path.write_text(json.dumps(document, separators=(",", ":")))
    # refused: the snapshot pins targets v2 by length and hash, and the signature is over it too
    with pytest.raises(RepositoryError):
        updater(store, tmp_path / "device").refresh()


def test_targets_altered_in_the_store_are_never_signed_again(tmp_path: Path, store: Path, keys: Keys) -> None:
    # Someone with write access to the store (not to the keys) slips a target into the published targets: the next
    # publish must not put the offline targets key's signature on it.
    path = store / "metadata" / "1.targets.json"
    document = json.loads(path.read_text())
    document["signed"]["targets"]["bundles/evil/9.tar"] = {"length": 4, "hashes": {"sha256": "0" * 64}}
    path.write_text(json.dumps(document, separators=(",", ":")))
    with pytest.raises(StoreError, match="targets v1 is not signed by the targets keys of any of its roots"):
        publish(store, packed(tmp_path), fleet="acme", signers=online(keys))
    assert not (store / "metadata" / "2.targets.json").exists()
