"""The operator's trust tooling against a device's real `tuf.ngclient.Updater`: key files, the store layout, root
rotation as TUF specifies it (accepted with both thresholds, refused below the old one by the tool and, forged, by the
client), an unknown key's targets, re-keying a role, thresholds the keys cannot reach, and the timestamp kept fresh
by `resign_timestamp` (freeze: an expired timestamp is refused until it is re-signed)."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from agent.fleet.errors import KeyFileError, SigningError, StoreError, UsageError
from agent.fleet.keys import load_public_key, load_signer, new_key_pair
from agent.fleet.repository import Expiry, FileRepository, utc_now
from agent.fleet.trust import (
    RoleKeys,
    add_key,
    init_trust,
    remove_key,
    resign,
    resign_timestamp,
    rotate_root,
    set_threshold,
)

pytest.register_assert_rewrite("fleet_store")
from fleet_store import Keys, init_store, updater  # noqa: E402

# -- key files --------------------------------------------------------------------------------------------------------


def test_private_key_is_created_0600_and_the_public_key_names_its_keyid(tmp_path: Path) -> None:
    pair = new_key_pair("targets-1", tmp_path / "keys")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    public = json.loads(pair.public.read_text())
    assert public["keyid"] == pair.keyid and public["keytype"] == public["scheme"] == "ed25519"
    assert (
        load_public_key(pair.public).keyid == load_signer(pair.private, None).public_key.keyid == pair.keyid
    )
    assert not [p.name for p in (tmp_path / "keys").iterdir() if p.name.endswith(".tmp")]


def test_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    pair = new_key_pair("root-1", tmp_path, b"correct horse")
    assert pair.encrypted and stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(KeyFileError, match="is encrypted: give its passphrase"):
        load_signer(pair.private, None)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_signer(pair.private, b"battery staple")
    assert load_signer(pair.private, b"correct horse").public_key.keyid == pair.keyid


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    first = new_key_pair("root-1", tmp_path)
    before = first.private.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        new_key_pair("root-1", tmp_path)
    assert first.private.read_bytes() == before


def test_public_key_file_with_another_keyid_is_refused(tmp_path: Path) -> None:
    pair = new_key_pair("root-1", tmp_path)
    document = json.loads(pair.public.read_text())
    document["keyid"] = "0" * 64
    pair.public.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="keyid does not belong to the key"):
        load_public_key(pair.public)


# -- the store --------------------------------------------------------------------------------------------------------


def test_init_writes_version_1_of_every_role_in_the_store_layout_and_a_client_refreshes(
    tmp_path: Path,
) -> None:
    keys, store = Keys(), tmp_path / "store"
    bootstrap = init_store(store, keys, expiry=Expiry(timestamp=timedelta(hours=3)))
    assert bootstrap == store / "metadata" / "1.root.json"
    assert sorted(p.name for p in (store / "metadata").iterdir()) == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "timestamp.json",
    ]
    assert sorted(p.name for p in store.iterdir()) == [".lock", "metadata", "targets"]
    for path in (store / "metadata").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert b"PRIVATE KEY" not in path.read_bytes()
    root = Metadata[Root].from_file(str(bootstrap)).signed
    assert root.consistent_snapshot is True
    timestamp = Metadata[Timestamp].from_file(str(store / "metadata" / "timestamp.json")).signed
    assert timedelta(hours=2, minutes=59) < timestamp.expires - utc_now() <= timedelta(hours=3)
    client = updater(store, tmp_path / "device")
    client.refresh()
    assert client.get_targetinfo("bundles/none/1.tar") is None


def test_init_refuses_a_store_that_already_has_a_root(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys)
    with pytest.raises(StoreError, match="already holds a root"):
        init_store(tmp_path, keys)


def test_init_refuses_signers_below_a_threshold_and_writes_nothing(tmp_path: Path) -> None:
    keys = Keys()
    roles = {
        "root": RoleKeys((keys["r1"].public_key, keys["r2"].public_key), 2),
        **{role: RoleKeys((keys[role].public_key,)) for role in ("targets", "snapshot", "timestamp")},
    }
    signers = keys.signers(root="r1", targets="targets", snapshot="snapshot", timestamp="timestamp")
    with pytest.raises(SigningError, match=r"root v1 must be signed by 2 key\(s\)"):
        init_trust(tmp_path, roles, signers)
    assert not list((tmp_path / "metadata").glob("*.json"))


# -- root rotation ----------------------------------------------------------------------------------------------------


def test_root_rotation_with_the_old_and_new_thresholds_is_accepted_by_a_client_of_the_old_root(
    tmp_path: Path,
) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys, root=("r1", "r2"), root_threshold=2)
    device = tmp_path / "device"
    updater(store, device).refresh()  # the device trusts root v1

    new_keys = [keys[name].public_key for name in ("r3", "r4", "r5")]
    change = rotate_root(store, new_keys, 2, keys.signers(root=["r1", "r2", "r3", "r4"]))
    assert change.root_version == 2 and change.root_path == store / "metadata" / "2.root.json"
    # and once more, signed only by keys of root v2 (now both the old and the new root keys)
    again = rotate_root(store, [keys["r6"].public_key], 1, keys.signers(root=["r3", "r4", "r6"]))
    assert again.root_version == 3
    assert (store / "metadata" / "1.root.json").is_file() and (store / "metadata" / "2.root.json").is_file()

    client = updater(store, device)
    client.refresh()
    trusted = Metadata[Root].from_file(str(device / "metadata" / "root.json")).signed
    assert trusted.version == 3 and trusted.roles["root"].keyids == [keys["r6"].public_key.keyid]


def test_rotation_signed_below_the_old_threshold_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys, root=("r1", "r2"), root_threshold=2)
    with pytest.raises(
        SigningError,
        match=r"root v2 must be signed by 2 key\(s\) of root v1 \(the --sign root= keys give 1\)",
    ):
        rotate_root(tmp_path, [keys["r3"].public_key], 1, keys.signers(root=["r1", "r3"]))
    assert not (tmp_path / "metadata" / "2.root.json").exists()


def test_rotation_signed_below_the_new_threshold_is_refused(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys)
    with pytest.raises(SigningError, match=r"and by 2 of its own \(they give 1\)"):
        rotate_root(
            tmp_path, [keys["r3"].public_key, keys["r4"].public_key], 2, keys.signers(root=["root", "r3"])
        )


def test_forged_root_below_the_old_threshold_is_refused_by_the_client(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys, root=("r1", "r2"), root_threshold=2)
    device = tmp_path / "device"
    updater(store, device).refresh()
    # The attacker holds one old root key and makes root v2 with keys of its own, written straight to the store.
    forged = Metadata[Root].from_file(str(store / "metadata" / "1.root.json"))
    for keyid in list(forged.signed.roles["root"].keyids):
        forged.signed.revoke_key(keyid, "root")
    forged.signed.add_key(keys["attacker"].public_key, "root")
    forged.signed.roles["root"].threshold = 1
    forged.signed.version = 2
    forged.signatures.clear()
    forged.sign(keys["r1"], append=True)
    forged.sign(keys["attacker"], append=True)
    forged.to_file(str(store / "metadata" / "2.root.json"), JSONSerializer())

    with pytest.raises(UnsignedMetadataError):
        updater(store, device).refresh()
    trusted = Metadata[Root].from_file(str(device / "metadata" / "root.json")).signed
    assert trusted.version == 1


def test_root_signers_that_are_no_root_keys_are_refused(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys)
    with pytest.raises(SigningError, match="is not a root key of root v2 or v1"):
        set_threshold(tmp_path, "root", 1, keys.signers(root=["root", "stranger"]))


# -- other roles ------------------------------------------------------------------------------------------------------


def _forge_targets(store: Path, keys: Keys, signer: CryptoSigner) -> None:
    """Targets v2 listing an arbitrary bundle, signed by `signer`; snapshot and timestamp v2 properly signed over it."""
    metadata = store / "metadata"
    targets = Metadata[Targets].from_file(str(metadata / "1.targets.json"))
    targets.signed.targets["bundles/evil/9.tar"] = TargetFile.from_data("bundles/evil/9.tar", b"evil")
    targets.signed.version = 2
    targets.signatures.clear()
    targets.sign(signer)
    targets.to_file(str(metadata / "2.targets.json"))
    snapshot = Metadata[Snapshot].from_file(str(metadata / "1.snapshot.json"))
    snapshot.signed.meta["targets.json"].version = 2
    snapshot.signed.meta["targets.json"].length = None
    snapshot.signed.meta["targets.json"].hashes = None
    snapshot.signed.version = 2
    snapshot.signatures.clear()
    snapshot.sign(keys["snapshot"])
    snapshot.to_file(str(metadata / "2.snapshot.json"))
    timestamp = Metadata[Timestamp].from_file(str(metadata / "timestamp.json"))
    timestamp.signed.snapshot_meta.version = 2
    timestamp.signed.snapshot_meta.length = None
    timestamp.signed.snapshot_meta.hashes = None
    timestamp.signed.version = 2
    timestamp.signatures.clear()
    timestamp.sign(keys["timestamp"])
    timestamp.to_file(str(metadata / "timestamp.json"))


def test_targets_signed_with_an_unknown_key_are_refused_by_the_client(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys)
    _forge_targets(store, keys, keys["attacker"])
    client = updater(store, tmp_path / "device")
    with pytest.raises(UnsignedMetadataError):
        client.refresh()


def test_the_forgery_helper_makes_targets_that_the_client_accepts_with_the_real_key(tmp_path: Path) -> None:
    # The control for the test above: the same forgery signed by the real targets key is accepted.
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys)
    _forge_targets(store, keys, keys["targets"])
    client = updater(store, tmp_path / "device")
    assert client.get_targetinfo("bundles/evil/9.tar") is not None


def test_targets_key_added_then_the_old_one_removed_is_followed_by_the_client(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys)
    device = tmp_path / "device"
    updater(store, device).refresh()
    online = {"snapshot": [keys["snapshot"]], "timestamp": [keys["timestamp"]]}

    added = add_key(
        store,
        "targets",
        keys["t2"].public_key,
        {"root": [keys["root"]], "targets": [keys["targets"]]} | online,
    )
    assert added.root_version == 2 and added.resigned == {"targets": 2, "snapshot": 2, "timestamp": 2}
    removed = remove_key(
        store,
        "targets",
        keys["targets"].public_key.keyid[:10],
        {"root": [keys["root"]], "targets": [keys["t2"]]} | online,
    )
    assert removed.root_version == 3 and removed.resigned == {"targets": 3, "snapshot": 3, "timestamp": 3}
    client = updater(store, device)
    client.refresh()
    assert Metadata[Root].from_file(str(device / "metadata" / "root.json")).signed.version == 3

    repo = FileRepository(store, {"targets": [keys["targets"]]})
    with pytest.raises(SigningError, match="is not a targets key of root v3"):
        repo.check_signers("targets")


def test_a_threshold_above_the_keys_of_a_role_is_refused(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys)
    with pytest.raises(UsageError, match=r"targets would need 2 signature\(s\) but has 1 key"):
        set_threshold(
            tmp_path,
            "targets",
            2,
            keys.signers(root="root", targets="targets", snapshot="snapshot", timestamp="timestamp"),
        )
    assert not (tmp_path / "metadata" / "2.root.json").exists()


def test_raising_the_snapshot_threshold_without_enough_snapshot_keys_writes_no_root(tmp_path: Path) -> None:
    keys = Keys()
    init_store(tmp_path, keys)
    add_key(
        tmp_path,
        "snapshot",
        keys["s2"].public_key,
        keys.signers(root="root", snapshot="snapshot", timestamp="timestamp"),
    )
    with pytest.raises(SigningError, match=r"snapshot v3 needs 2 signature\(s\) by snapshot keys"):
        set_threshold(
            tmp_path, "snapshot", 2, keys.signers(root="root", snapshot="snapshot", timestamp="timestamp")
        )
    assert not (tmp_path / "metadata" / "3.root.json").exists()
    change = set_threshold(
        tmp_path, "snapshot", 2, keys.signers(root="root", snapshot=["snapshot", "s2"], timestamp="timestamp")
    )
    assert change.resigned == {"snapshot": 3, "timestamp": 3}
    updater(tmp_path, tmp_path / "device").refresh()


# -- the timestamp kept fresh -----------------------------------------------------------------------------------------


def test_resign_timestamp_makes_an_expired_timestamp_fresh_and_the_client_accepts_it(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys, clock=lambda: utc_now() - timedelta(days=2))  # timestamp (1 d) expired a day ago
    with pytest.raises(ExpiredMetadataError):
        updater(store, tmp_path / "device").refresh()  # freeze: an expired timestamp is refused

    done = resign_timestamp(store, keys["timestamp"])
    assert done.timestamp == 2 and done.snapshot is None
    assert timedelta(hours=23) < done.timestamp_expires - utc_now() <= timedelta(days=1)
    updater(store, tmp_path / "device").refresh()

    again = resign_timestamp(store, keys["timestamp"])
    assert again.timestamp is None and again.snapshot is None  # fresh enough: nothing written


def test_resign_timestamp_resigns_an_expiring_snapshot_only_with_the_snapshot_key(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(
        store, keys, clock=lambda: utc_now() - timedelta(days=6, hours=22)
    )  # snapshot (7 d) ends in 2 h
    with pytest.raises(SigningError, match="re-signing it needs the snapshot key"):
        resign_timestamp(store, keys["timestamp"])
    done = resign_timestamp(store, keys["timestamp"], keys["snapshot"])
    assert (done.snapshot, done.timestamp) == (2, 2)
    assert done.snapshot_expires - utc_now() > timedelta(days=6)
    updater(store, tmp_path / "device").refresh()


def test_resign_timestamp_refuses_a_key_that_is_not_the_timestamp_key(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys, clock=lambda: utc_now() - timedelta(days=2))
    with pytest.raises(SigningError, match="is not a timestamp key"):
        resign_timestamp(store, keys["snapshot"])
    assert Metadata[Timestamp].from_file(str(store / "metadata" / "timestamp.json")).signed.version == 1


def test_resign_gives_targets_nearing_expiry_a_new_version_that_the_client_follows(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys, clock=lambda: utc_now() - timedelta(days=89))  # targets (90 d) end within a day
    with pytest.raises(SigningError, match="needs 1 signature"):
        resign(store, "targets", keys.signers(snapshot="snapshot", timestamp="timestamp"))
    versions = resign(
        store, "targets", keys.signers(targets="targets", snapshot="snapshot", timestamp="timestamp")
    )
    assert versions == {"targets": 2, "snapshot": 2, "timestamp": 2}
    assert FileRepository(store).targets().expires - utc_now() > timedelta(days=89)
    assert resign(store, "root", keys.signers(root="root")) == {"root": 2}
    client = updater(store, tmp_path / "device")
    client.refresh()
    assert Metadata[Root].from_file(str(tmp_path / "device" / "metadata" / "root.json")).signed.version == 2


def test_a_second_writer_of_the_store_waits_for_the_first(tmp_path: Path) -> None:
    keys, store = Keys(), tmp_path / "store"
    init_store(store, keys)
    first, second = FileRepository(store), FileRepository(store)
    with (
        first.lock(),
        pytest.raises(StoreError, match="another process has been writing"),
        second.lock(wait_s=0.2),
    ):
        pass
    with FileRepository(store).lock(wait_s=0.2):
        pass
