"""Model bundles on disk: a folder with `manifest.json`, the model file, labels, golden vectors and a drift reference.

`load_bundle` reads and validates the manifest and (by default) checks the size and sha256 of every listed file, so a
truncated download or a swapped model file is refused before any runtime sees it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.errors import IntegrityError, ManifestError
from agent.inference.manifest import MANIFEST_NAME, FileEntry, Manifest
from agent.validation import describe_validation_error

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> FileEntry:
    """The integrity record (sha256, size) of a file."""
    return FileEntry(sha256=sha256_file(path), size=path.stat().st_size)


@dataclass(frozen=True)
class Bundle:
    """A bundle folder with its validated manifest and labels."""

    path: Path
    manifest: Manifest
    labels: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        """The model file."""
        return self.path / self.manifest.model

    def file(self, relative: str) -> Path:
        """A file of the bundle by its manifest path."""
        return self.path / relative

    def __str__(self) -> str:
        return (
            f"{self.manifest.name} v{self.manifest.version} ({self.manifest.runtime}, {self.manifest.task})"
        )


def read_manifest(folder: Path) -> Manifest:
    """Reads and validates `folder/manifest.json`."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"bundle folder not found: {folder}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ManifestError(f"{folder} is not a model bundle: no {MANIFEST_NAME}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise ManifestError(describe_validation_error(error, str(path))) from error


def check_files(folder: Path, manifest: Manifest) -> None:
    """Raises IntegrityError naming the first listed file that is missing, of the wrong size or hash."""
    for relative, entry in manifest.files.items():
        path = folder / relative
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(
                f"{folder.name}/{relative}: listed in the manifest but missing (or not a plain file)"
            )
        size = path.stat().st_size
        if size != entry.size:
            what = "truncated" if size < entry.size else "larger than listed"
            raise IntegrityError(
                f"{folder.name}/{relative}: {what}: {size} bytes, the manifest says {entry.size}"
            )
        if sha256_file(path) != entry.sha256:
            raise IntegrityError(
                f"{folder.name}/{relative}: sha256 does not match the manifest (file altered)"
            )


def read_labels(path: Path) -> tuple[str, ...]:
    """Labels, one per line; blank lines at the end are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read labels: {error}") from error
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)


def load_bundle(folder: Path | str, verify: bool = True) -> Bundle:
    """Reads a bundle folder; with `verify`, every file's size and sha256 is checked against the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        check_files(folder, manifest)
    labels = read_labels(folder / manifest.labels) if manifest.labels else ()
    return Bundle(folder, manifest, labels)
