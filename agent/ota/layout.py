"""Where the updater keeps things under the agent's state directory; names only, no I/O but `installed_versions`.

```
{state_dir}/tuf/                          trusted TUF metadata (python-tuf's metadata_dir; root.json -> root_history/N)
{state_dir}/ota/state.json                the update record (UpdateRecord, schema 1)
{state_dir}/ota/{digest}.part             the archive being downloaded (sparse, full length)
{state_dir}/ota/{digest}.bitmap           which blocks of the part are written and durable (PartMap, schema 1)
{state_dir}/ota/{digest}.blocks.json      the release's block index, checked by TUF
{state_dir}/models/{name}/{version}/      installed bundles, read-only, only ever whole
{state_dir}/models/{name}/archives/{version}.tar          the installed archive, kept for block reuse
{state_dir}/models/{name}/archives/{version}.blocks.json  its block index
```
Names that start with `.` are work in progress (an unpack's `.{version}.xxxxxxxx.partial`, a removal's `.trash`
folder, `write_atomic`'s temp files) and never count as installed; `agent.ota.install.recover` removes the ones the
updater makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARCHIVES = "archives"


@dataclass(frozen=True)
class Layout:
    """The updater's paths under one state directory."""

    state_dir: Path

    @property
    def tuf_dir(self) -> Path:
        """python-tuf's trusted metadata folder."""
        return self.state_dir / "tuf"

    @property
    def ota_dir(self) -> Path:
        """Partial downloads and the update record."""
        return self.state_dir / "ota"

    @property
    def state_file(self) -> Path:
        """The persisted update record."""
        return self.ota_dir / "state.json"

    @property
    def models_dir(self) -> Path:
        """Installed bundles, one folder per model name."""
        return self.state_dir / "models"

    def part(self, digest: str) -> Path:
        """The partial archive of a download."""
        return self.ota_dir / f"{digest}.part"

    def bitmap(self, digest: str) -> Path:
        """The block bitmap of a partial archive."""
        return self.ota_dir / f"{digest}.bitmap"

    def pending_index(self, digest: str) -> Path:
        """The block index of a download in progress."""
        return self.ota_dir / f"{digest}.blocks.json"

    def model_dir(self, name: str) -> Path:
        """Every installed version of one model."""
        return self.models_dir / name

    def bundle(self, name: str, version: int) -> Path:
        """One installed bundle."""
        return self.model_dir(name) / str(version)

    def archives(self, name: str) -> Path:
        """The kept archives of one model."""
        return self.model_dir(name) / ARCHIVES

    def archive(self, name: str, version: int) -> Path:
        """A kept archive."""
        return self.archives(name) / f"{version}.tar"

    def archive_index(self, name: str, version: int) -> Path:
        """A kept archive's block index."""
        return self.archives(name) / f"{version}.blocks.json"

    def installed_versions(self, name: str) -> list[int]:
        """The versions of `name` installed whole, lowest first (folders named by a positive integer)."""
        folder = self.model_dir(name)
        if not folder.is_dir():
            return []
        versions = [
            int(entry.name)
            for entry in folder.iterdir()
            if entry.name.isdigit() and not entry.name.startswith("0") and entry.is_dir()
        ]
        return sorted(versions)


__all__ = ["ARCHIVES", "Layout"]
