"""The `active` and `previous` links under models/{name}/: which installed bundle serves, and what a rollback returns to.

```
{state_dir}/models/{name}/active   -> 3           (a version folder beside it)
{state_dir}/models/{name}/previous -> 2           (or an absolute path: the bundled default the first update replaced)
```
Invariants: a link is replaced atomically (a new symlink under a temp name, renamed over the old one, the folder
fsynced), so a power cut leaves the old or the new target, never none; `previous` is written before `active`, so at
every instant one of them names the model that was verified to serve before; a link that names a missing bundle reads
as absent; installed versions other than the active and previous ones are removed only at a commit (`prune`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

from agent.fsutil import fsync_dir
from agent.ota.install import remove_bundle
from agent.ota.layout import Layout

ACTIVE = "active"
PREVIOUS = "previous"
LINK_TEMP = ".link."


def link_path(layout: Layout, name: str, which: str) -> Path:
    """models/{name}/active or models/{name}/previous."""
    return layout.model_dir(name) / which


def read_link(layout: Layout, name: str, which: str) -> Path | None:
    """The bundle a link names (None when the link, or its bundle, is missing)."""
    link = link_path(layout, name, which)
    try:
        target = link.readlink()
    except OSError:
        return None
    bundle = target if target.is_absolute() else link.parent / target
    return bundle if (bundle / "manifest.json").is_file() else None


def point(layout: Layout, name: str, which: str, bundle: Path) -> None:
    """Makes `which` name `bundle` atomically (relative when the bundle is a version folder beside it)."""
    folder = layout.model_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle)
    target = bundle.name if bundle.parent.resolve() == folder.resolve() else str(bundle.resolve())
    temp = folder / f"{LINK_TEMP}{which}.{uuid.uuid4().hex[:8]}"
    temp.symlink_to(target)
    try:
        temp.replace(folder / which)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(folder)


def unlink(layout: Layout, name: str, which: str) -> None:
    """Removes a link (durably)."""
    link = link_path(layout, name, which)
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
        fsync_dir(link.parent)


def swap_links(layout: Layout, name: str, active: Path, previous: Path | None) -> None:
    """`previous` first, then `active`: the verified model stays named at every instant."""
    if previous is not None:
        point(layout, name, PREVIOUS, previous)
    point(layout, name, ACTIVE, active)


def clean_temps(layout: Layout) -> None:
    """Removes link temp names a power cut left behind."""
    if not layout.models_dir.is_dir():
        return
    for folder in layout.models_dir.iterdir():
        if folder.is_dir() and not folder.is_symlink():
            for entry in folder.iterdir():
                if entry.name.startswith(LINK_TEMP):
                    with contextlib.suppress(OSError):
                        entry.unlink()


def version_of(bundle: Path | None) -> int | None:
    """The version of the bundle a link names (its manifest's; None when unreadable)."""
    if bundle is None:
        return None
    try:
        version = json.loads((Path(bundle) / "manifest.json").read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def prune(layout: Layout, name: str) -> list[int]:
    """Removes the installed versions of `name` that neither link names nor are newer than the active one (a
    release still waiting for activation); returns the versions removed."""
    keep = {version_of(read_link(layout, name, which)) for which in (ACTIVE, PREVIOUS)}
    active = version_of(read_link(layout, name, ACTIVE))
    if active is None:
        return []
    removed = []
    for version in layout.installed_versions(name):
        if version in keep or version > active:
            continue
        remove_bundle(layout, name, version)
        removed.append(version)
    return removed


__all__ = [
    "ACTIVE",
    "PREVIOUS",
    "clean_temps",
    "link_path",
    "point",
    "prune",
    "read_link",
    "swap_links",
    "unlink",
    "version_of",
]
