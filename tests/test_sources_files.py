"""Recorded frames: MJPG video files written with cv2.VideoWriter, and folders of images."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from streams import Harness, numbered_frame, write_video

from agent.errors import SourceError
from agent.sources import (
    EndOfStream,
    ImagesConfig,
    SourceState,
    VideoConfig,
    default_source_config,
    open_source,
)
from agent.sources.files import ImageFolderSource, VideoSource


def read_all(source: VideoSource | ImageFolderSource, limit: int = 1000) -> list[np.ndarray]:
    """Every frame until EndOfStream."""
    frames: list[np.ndarray] = []
    source.open()
    try:
        for _ in range(limit):
            try:
                frame = source.read(1.0)
            except EndOfStream:
                return frames
            if frame is not None:
                frames.append(frame)
    finally:
        source.close()
    raise AssertionError("no end of stream")


def test_video_file_plays_every_frame_then_ends(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=12, fps=25)
    frames = read_all(VideoSource(VideoConfig(path=path, rate="max")))
    assert len(frames) == 12
    assert frames[0].shape == (120, 160, 3) and frames[0].dtype == np.uint8
    assert frames[0].flags.writeable and frames[0].flags.c_contiguous
    brightness = [int(np.median(f[:10, :])) for f in frames[:4]]
    assert brightness == sorted(brightness) and brightness[0] < brightness[3]


def test_video_native_rate_follows_the_file_frame_rate(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=10, fps=20)
    source = VideoSource(VideoConfig(path=path))
    started = time.monotonic()
    frames = read_all(source)
    elapsed = time.monotonic() - started
    assert len(frames) == 10
    assert source.fps == pytest.approx(20)
    assert 0.35 < elapsed < 1.5, elapsed  # 9 periods of 50 ms; loose bounds for a busy machine


def test_video_explicit_rate_overrides_the_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=6, fps=5)
    started = time.monotonic()
    frames = read_all(VideoSource(VideoConfig(path=path, rate=100.0)))
    assert len(frames) == 6
    assert time.monotonic() - started < 0.8  # at the file's 5 fps it would take a second


def test_video_loop_restarts_at_the_end_and_keeps_seq_running(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=5, fps=25)
    with Harness(VideoConfig(path=path, loop=True, rate="max")) as harness:
        items = harness.wait_items(17, 5)
    assert [i.seq for i in items[:17]] == list(range(17))
    assert "ended" not in harness.state_names
    first, sixth = items[0].data, items[5].data
    assert np.array_equal(first, sixth)


def test_video_without_loop_ends_and_runner_reports_ended(tmp_path: Path) -> None:
    path = write_video(tmp_path / "clip.avi", frames=4, fps=50)
    with Harness(VideoConfig(path=path)) as harness:
        harness.wait_state(SourceState.ENDED, 5)
    assert harness.count() == 4
    assert harness.runner.status().reconnects == 0


def test_missing_video_file_fails_with_its_path(tmp_path: Path) -> None:
    source = VideoSource(VideoConfig(path=tmp_path / "nope.avi"))
    with pytest.raises(SourceError, match=r"video .*nope\.avi: no such file"):
        source.open()
    source.close()
    source.close()


def test_file_that_is_not_a_video_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.avi"
    path.write_text("not a video\n" * 100)
    with pytest.raises(SourceError, match=r"notes\.avi"):
        read_all(VideoSource(VideoConfig(path=path)))


def test_relative_video_path_resolves_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_video(tmp_path / "clip.avi", frames=3, fps=25)
    monkeypatch.chdir(tmp_path)
    assert len(read_all(VideoSource(VideoConfig(path=Path("clip.avi"), rate="max")))) == 3


def test_default_source_is_the_looped_sample_video() -> None:
    config = default_source_config()
    assert isinstance(config, VideoConfig)
    assert (
        config.path.is_absolute()
        and config.path.name == "scenes.mp4"
        and config.path.exists()
        and config.loop
        and config.name == "video"
    )
    assert isinstance(open_source(config), VideoSource)


def write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"img_{index:03d}.png"
        cv2.imwrite(str(path), numbered_frame(index, 64, 48))
        paths.append(path)
    return paths


def test_image_folder_in_name_order_skipping_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_images(folder, 4)
    (folder / "img_001b.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "readme.txt").write_text("not an image")
    source = ImageFolderSource(ImagesConfig(folder=folder, rate="max"))
    frames = read_all(source)
    assert len(frames) == 4
    assert source.garbage == 1
    assert [int(f[0, 0, 0]) for f in frames] == [0, 30, 60, 90]


def test_image_folder_paced_at_its_fps_and_looped(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_images(folder, 3)
    with Harness(ImagesConfig(folder=folder, fps=20.0, loop=True)) as harness:
        started = time.monotonic()
        items = harness.wait_items(8, 5)
        elapsed = time.monotonic() - started
    assert 0.2 < elapsed < 2.0, elapsed  # 7 periods of 50 ms
    assert [int(i.data[0, 0, 0]) for i in items[:6]] == [0, 30, 60, 0, 30, 60]


def test_empty_or_missing_image_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        ImageFolderSource(ImagesConfig(folder=tmp_path / "none")).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(ImagesConfig(folder=tmp_path / "empty")).open()


def test_image_folder_of_only_unreadable_files_is_an_error_not_a_silent_loop(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.png").write_bytes(b"garbage")
    source = ImageFolderSource(ImagesConfig(folder=folder, loop=True, rate="max"))
    source.open()
    with pytest.raises(SourceError, match="none of the 3 images"):
        source.read(1.0)
