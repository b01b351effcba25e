"""Bundle archives: reproducible packing, and an unpacker that refuses every way out of the bundle's folder."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS

from agent.inference import Model
from agent.release.archive import ArchiveError, pack, unpack
from agent.release.chunking import block_index

BUNDLE = MODELS / "digits-cls-tflite"
LIMIT = 64 * 1024 * 1024


def test_packing_the_same_bundle_twice_gives_the_same_bytes(tmp_path):
    pack(BUNDLE, tmp_path / "a.tar")
    os.utime(BUNDLE / "manifest.json")  # a newer mtime changes nothing
    pack(BUNDLE, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json" and names[1:] == sorted(names[1:])
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tar.getmembers()} == {(0, 0, 0, 0o644)}


def test_an_unpacked_bundle_loads_and_is_read_only(tmp_path):
    pack(BUNDLE, tmp_path / "a.tar")
    dest = tmp_path / "models" / "digits-cls" / "1"
    dest.parent.mkdir(parents=True)
    unpack(tmp_path / "a.tar", dest, "digits-cls", 1, LIMIT)
    model = Model.load(dest)
    assert model.name == "digits-cls"
    model.close()
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o222 for p in [dest, *dest.rglob("*")])


def _evil(tmp_path: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    """The bundle's archive with one more entry appended."""
    pack(BUNDLE, tmp_path / "good.tar")
    out = tmp_path / "evil.tar"
    with tarfile.open(tmp_path / "good.tar") as good, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in good.getmembers():
            tar.addfile(member, good.extractfile(member))
        extra.size = len(data) if extra.isreg() else 0
        tar.addfile(extra, io.BytesIO(data) if extra.isreg() else None)
    return out


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


ATTACKS = {
    "a path that climbs out with ..": (_entry("../../etc/cron.d/evil"), b"* * * * * root sh\n", "escapes"),
    "an absolute path": (_entry("/etc/passwd"), b"x", "escapes"),
    "a symlink": (_entry("model.link", tarfile.SYMTYPE, "/etc/shadow"), b"", "not a regular file"),
    "a hard link": (_entry("hard", tarfile.LNKTYPE, "manifest.json"), b"", "not a regular file"),
    "a device": (_entry("dev", tarfile.CHRTYPE), b"", "not a regular file"),
    "a folder": (_entry("golden2", tarfile.DIRTYPE), b"", "not a regular file"),
    "a file the manifest does not list": (_entry("extra.sh"), b"#!/bin/sh\n", "differ from its manifest"),
    "a second copy of the model": (_entry("model.tflite"), b"evil", "appears twice"),
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_an_archive_entry_outside_the_bundle_is_refused_and_nothing_is_written(tmp_path, attack):
    entry, data, reason = ATTACKS[attack]
    dest = tmp_path / "models" / "x"
    dest.parent.mkdir()
    with pytest.raises(ArchiveError, match=reason):
        unpack(_evil(tmp_path, entry, data), dest, "digits-cls", 1, LIMIT)
    assert list(dest.parent.iterdir()) == []


def test_a_file_that_does_not_match_its_hash_or_size_is_refused(tmp_path):
    pack(BUNDLE, tmp_path / "good.tar")
    raw = bytearray((tmp_path / "good.tar").read_bytes())
    with tarfile.open(tmp_path / "good.tar") as tar:
        model = tar.getmember("model.tflite")
    raw[model.offset_data + 100] ^= 0xFF  # one flipped byte inside the model
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="SHA-256"):
        unpack(tmp_path / "bad.tar", tmp_path / "x", "digits-cls", 1, LIMIT)
    with pytest.raises(ArchiveError, match="over the"):
        unpack(tmp_path / "good.tar", tmp_path / "y", "digits-cls", 1, 1000)
    with pytest.raises(ArchiveError, match="the release says"):
        unpack(tmp_path / "good.tar", tmp_path / "z", "digits-cls", 2, LIMIT)


def test_blocks_cover_the_archive_and_a_changed_tail_changes_few_of_them(tmp_path):
    rng = np.random.default_rng(7)
    body = rng.integers(0, 256, 4 * 1024 * 1024, dtype=np.uint8).tobytes()
    (tmp_path / "a").write_bytes(body)
    (tmp_path / "b").write_bytes(body[:-300_000] + rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    first, second = block_index(tmp_path / "a"), block_index(tmp_path / "b")
    assert first.archive_length == len(body) and all(b.size <= 128 * 1024 for b in first.blocks)
    known = {b.sha256 for b in first.blocks}
    new = sum(b.size for b in second.blocks if b.sha256 not in known)
    assert new < 0.15 * second.archive_length, new
