"""SnapshotStore keeps a byte budget (oldest out first, across restarts) and survives unusable folders and full disks."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SAMPLES

import agent.pipeline.budget as budget
from agent.errors import InputError
from agent.inference.inputs import read_image
from agent.pipeline.snapshots import SnapshotStore, encode_capped, encode_jpeg


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [read_image(path) for path in sorted(SAMPLES.glob("scene_*.png"))]


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.jpg"))


def test_saved_snapshot_is_a_decodable_jpeg_named_by_number_time_and_event(
    tmp_path: Path, scenes: list[np.ndarray]
) -> None:
    store = SnapshotStore(tmp_path / "snaps", max_bytes=1_000_000)
    ref = store.save(scenes[0], "3f2a9c/../evil id", now=1_700_000_000.0)
    assert ref is not None
    assert ref.name == "00000001_20231114T221320Z_3f2a9c-evil-id.jpg"  # the id cannot leave the folder
    path = tmp_path / "snaps" / ref.name
    assert path.stat().st_size == ref.size
    decoded = cv2.imread(str(path))
    assert decoded is not None and decoded.shape == scenes[0].shape
    assert store.path(ref.name) == path
    assert store.path("../etc/passwd") is None
    assert ref.to_dict() == {"name": ref.name, "size": ref.size}


def test_the_budget_is_kept_by_removing_the_oldest_first(tmp_path: Path, scenes: list[np.ndarray]) -> None:
    one = len(encode_jpeg(scenes[0], 85))
    store = SnapshotStore(tmp_path, max_bytes=int(one * 3.5), jpeg_quality=85)
    refs = [store.save(scenes[i % len(scenes)], f"event{i}") for i in range(12)]
    assert all(ref is not None for ref in refs)
    kept = store.names()
    assert kept == [ref.name for ref in refs[-len(kept) :] if ref is not None]  # the newest survive, in order
    assert 2 <= len(kept) <= 4
    assert _sizes(tmp_path) == store.total_bytes <= store.max_bytes
    assert store.evicted == 12 - len(kept)


def test_a_restart_scans_the_folder_continues_the_numbering_and_cleans_temp_files(
    tmp_path: Path, scenes: list[np.ndarray]
) -> None:
    first = SnapshotStore(tmp_path, max_bytes=10_000_000)
    for i in range(3):
        first.save(scenes[i], f"before{i}")
    (tmp_path / ".00000004_20240101T000000Z_x.jpg.abc123.tmp").write_bytes(b"half a jpeg")  # a power cut
    (tmp_path / "operator-notes.txt").write_text("not ours")
    # the clock went back to 1970 after a reboot without network: numbering, not time, orders the snapshots
    second = SnapshotStore(tmp_path, max_bytes=10_000_000)
    ref = second.save(scenes[3], "after", now=0.0)
    assert ref is not None and ref.name.startswith("00000004_19700101T000000Z")
    assert second.names()[-1] == ref.name and len(second.names()) == 4
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "operator-notes.txt").exists()


def test_a_smaller_budget_after_a_restart_trims_the_folder(tmp_path: Path, scenes: list[np.ndarray]) -> None:
    big = SnapshotStore(tmp_path, max_bytes=10_000_000)
    refs = [big.save(frame, f"e{i}") for i, frame in enumerate(scenes)]
    newest = refs[-1]
    assert newest is not None
    small = SnapshotStore(tmp_path, max_bytes=newest.size + 10)
    assert small.names() == [newest.name]
    assert _sizes(tmp_path) <= newest.size + 10


def test_an_unusable_folder_is_reported_once_and_never_raised(
    tmp_path: Path,
    scenes: list[np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the folder should be")
    store = SnapshotStore(blocker / "snapshots", max_bytes=1_000_000)
    with caplog.at_level(logging.WARNING, logger="agent.snapshots"):
        assert store.save(scenes[0], "a") is None
        assert store.save(scenes[0], "b") is None
    assert store.failures == 2 and "unusable" in (store.last_error or "")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert store.status()["failures"] == 2


def test_a_full_disk_evicts_a_few_old_snapshots_then_gives_up_quietly(
    tmp_path: Path,
    scenes: list[np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SnapshotStore(tmp_path, max_bytes=10_000_000)
    for i in range(5):
        store.save(scenes[i], f"old{i}")
    attempts = []

    def full_disk(path: Path, data: bytes, mode: int = 0o644) -> None:
        attempts.append(path.name)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(budget, "write_atomic", full_disk)  # no small file system can be mounted here
    assert store.save(scenes[0], "new") is None
    assert len(attempts) == 4  # the first try and three more, each after removing our oldest snapshot
    assert len(store.names()) == 2 and store.failures == 1
    assert "No space left" in (store.last_error or "")


def test_a_frame_that_cannot_be_encoded_is_counted_not_raised(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_bytes=1_000_000)
    assert store.save(np.zeros((10, 10, 3), np.float64), "bad") is None
    assert store.failures == 1 and store.names() == []


def test_a_zero_budget_keeps_nothing(tmp_path: Path, scenes: list[np.ndarray]) -> None:
    assert SnapshotStore(tmp_path, max_bytes=0).save(scenes[0], "x") is None
    assert list(tmp_path.iterdir()) == []


def test_encode_capped_lowers_quality_then_size_to_fit(scenes: list[np.ndarray]) -> None:
    frame = cv2.resize(scenes[1], (1280, 960), interpolation=cv2.INTER_CUBIC)
    full = len(encode_jpeg(frame, 85))
    gentle = encode_capped(frame, int(full * 0.8))
    assert len(gentle.data) <= full * 0.8 and gentle.quality < 85 and gentle.width == 1280
    tight = encode_capped(frame, 8_000)
    assert len(tight.data) <= 8_000 and tight.width < 1280
    assert tight.width / tight.height == pytest.approx(1280 / 960, rel=0.02)
    decoded = cv2.imdecode(np.frombuffer(tight.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == (tight.height, tight.width)


def test_encode_capped_refuses_an_impossible_cap(scenes: list[np.ndarray]) -> None:
    with pytest.raises(InputError, match="fits in 200 bytes"):
        encode_capped(scenes[0], 200)
    with pytest.raises(InputError):
        encode_capped(scenes[0], 0)


def test_an_oversized_frame_is_squeezed_into_the_budget(tmp_path: Path, scenes: list[np.ndarray]) -> None:
    frame = cv2.resize(scenes[2], (1920, 1080), interpolation=cv2.INTER_CUBIC)
    store = SnapshotStore(tmp_path, max_bytes=60_000, jpeg_quality=95)
    ref = store.save(frame, "big")
    assert ref is not None and ref.size <= 60_000
