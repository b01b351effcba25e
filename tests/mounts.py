"""Real storage failures for tests: a small tmpfs is a real full disk, a read-only bind mount a real read-only state
directory, and an ext4 image with `errors=remount-ro` fails the way an SD card does (the kernel remounts it read-only
under the open database on an error, here raised through /sys/fs/ext4/DEV/trigger_fs_error).

Needs root (tests run as root in CI and on the bench); the `mounts` fixture skips otherwise. Invariant: everything
mounted or attached is unmounted and detached at teardown, in reverse order, even when the test failed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


def _run(*args: str) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def fill(folder: Path, name: str = "filler") -> Path:
    """Fills the file system of `folder` to 100 % with one file (writes until ENOSPC); returns the file."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return path


class Ext4:
    """An ext4 image on a loop device, mounted at `path` with errors=remount-ro."""

    def __init__(self, mounts: Mounts, image: Path, path: Path) -> None:
        self.mounts = mounts
        self.image = image
        self.path = path
        self.device = ""

    def mount(self) -> Ext4:
        """Attaches the image to a fresh loop device and mounts it (a new superblock, writable)."""
        self.device = _run("losetup", "-f", "--show", str(self.image))
        self.mounts.loops.append(self.device)
        _run("mount", "-o", "errors=remount-ro", self.device, str(self.path))
        self.mounts.mounted.append(self.path)
        return self

    def fail(self) -> None:
        """An ext4 error: the kernel remounts the file system read-only under whatever has files open on it."""
        Path(f"/sys/fs/ext4/{Path(self.device).name}/trigger_fs_error").write_text("1")

    def repair(self) -> None:
        """What a technician does: detach the failed mount, check the file system, mount it again (writable)."""
        _run("umount", "-l", str(self.path))
        self.mounts.mounted.remove(self.path)
        with contextlib.suppress(RuntimeError):
            _run("losetup", "-d", self.device)  # busy while the old database is open: detached when it closes
        subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, timeout=60)
        self.mount()


class Mounts:
    """Mounts made by one test; `close` undoes them all."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.mounted: list[Path] = []
        self.loops: list[str] = []

    def tmpfs(self, path: Path, size_bytes: int) -> Path:
        """A tmpfs of `size_bytes` at `path` (a disk that fills up for real)."""
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", str(path))
        self.mounted.append(path)
        return path

    def read_only(self, path: Path) -> Path:
        """`path` becomes a read-only view of itself (a bind mount remounted ro)."""
        path.mkdir(parents=True, exist_ok=True)
        _run("mount", "--bind", str(path), str(path))
        self.mounted.append(path)
        _run("mount", "-o", "remount,bind,ro", str(path))
        return path

    def writable(self, path: Path) -> None:
        """Makes a `read_only` view writable again (remount rw)."""
        _run("mount", "-o", "remount,bind,rw", str(path))

    def ext4(self, path: Path, size_mb: int = 32) -> Ext4:
        """A fresh ext4 file system at `path` that fails like an SD card (`Ext4.fail`)."""
        image = self.scratch / f"ext4-{len(self.loops)}.img"
        with image.open("wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        _run("mkfs.ext4", "-q", "-F", str(image))
        path.mkdir(parents=True, exist_ok=True)
        return Ext4(self, image, path).mount()

    def close(self) -> None:
        """Unmounts everything (lazily when busy) and detaches the loop devices."""
        for path in reversed(self.mounted):
            try:
                _run("umount", str(path))
            except RuntimeError:
                with contextlib.suppress(RuntimeError):
                    _run("umount", "-l", str(path))
        self.mounted.clear()
        for device in reversed(self.loops):
            with contextlib.suppress(RuntimeError):
                _run("losetup", "-d", device)
        self.loops.clear()


def _can_mount(scratch: Path) -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts a tmpfs and read-only bind mounts)"
    probe = scratch / "probe"
    probe.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", "size=65536", "tmpfs", str(probe))
    except (RuntimeError, OSError) as problem:
        return f"cannot mount here: {problem}"
    _run("umount", str(probe))
    return None


def _unavailable(why: str) -> NoReturn:
    """Skipped on a workstation that cannot mount; under CI (root, loop devices) a missing capability fails loudly."""
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the storage-fault tests for real, but: {why}")
    pytest.skip(why)


@pytest.fixture
def mounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounts]:
    """Real mounts for one test, all undone at teardown (request it before `links`, so links stop first)."""
    scratch = tmp_path_factory.mktemp("mounts")
    why = _can_mount(scratch)
    if why is not None:
        _unavailable(why)
    made = Mounts(scratch)
    try:
        yield made
    finally:
        made.close()


def needs_ext4_errors(mounts: Mounts, path: Path) -> Ext4:
    """An ext4 mount that can be failed, or skip (no loop devices or no trigger_fs_error in this kernel)."""
    try:
        ext4 = mounts.ext4(path)
    except (RuntimeError, OSError) as problem:
        _unavailable(f"no ext4 loop mount here: {problem}")
    if not Path(f"/sys/fs/ext4/{Path(ext4.device).name}/trigger_fs_error").exists():
        _unavailable("this kernel cannot trigger an ext4 error")
    return ext4
