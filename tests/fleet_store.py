"""Test support for the operator's release store: real ed25519 keys, a store made by `agent.fleet`, and a device's
real `tuf.ngclient.Updater` reading that store through a fetcher that serves its files (404 for a missing one, as
ngclient's root walk expects of every fetcher)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from agent.fleet.repository import Expiry, utc_now
from agent.fleet.trust import RoleKeys, init_trust

ROOT = Path(__file__).resolve().parent.parent
BASE_URL = "https://repo.invalid/"
CHUNK = 64 * 1024


class StoreFetcher(FetcherInterface):
    """Serves the store's files as `BASE_URL + path` (what `edge-fleet serve` does over MQTT)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(BASE_URL):
            raise DownloadHTTPError(f"{url} is not in the store", 404)
        relative = unquote(url[len(BASE_URL) :])
        self.fetched.append(relative)
        try:
            data = (self.store / relative).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise DownloadHTTPError(f"{relative} is not in the store", 404) from None
        return iter([data[start : start + CHUNK] for start in range(0, len(data), CHUNK)] or [b""])


def updater(store: Path, device: Path, bootstrap: bytes | None = None) -> Updater:
    """A device's Updater over the store; trusts `bootstrap`, else the root it trusted last, else 1.root.json."""
    metadata = device / "metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    if bootstrap is None:
        trusted = metadata / "root.json"
        bootstrap = (trusted if trusted.exists() else store / "metadata" / "1.root.json").read_bytes()
    return Updater(
        str(metadata),
        BASE_URL + "metadata/",
        str(device / "targets"),
        BASE_URL + "targets/",
        StoreFetcher(store),
        bootstrap=bootstrap,
    )


@dataclass
class Keys:
    """Real ed25519 signers by name, made on first use."""

    made: dict[str, CryptoSigner] = field(default_factory=dict)

    def __getitem__(self, name: str) -> CryptoSigner:
        if name not in self.made:
            self.made[name] = CryptoSigner.generate_ed25519()
        return self.made[name]

    def signers(self, **roles: str | list[str]) -> dict[str, list[Signer]]:
        """`signers(root=["r1", "r2"], targets="t1")` -> role -> signers."""
        return {
            role: [self[name] for name in ([names] if isinstance(names, str) else names)]
            for role, names in roles.items()
        }


ONLINE = {"targets": "targets", "snapshot": "snapshot", "timestamp": "timestamp"}


def init_store(
    store: Path,
    keys: Keys,
    root: tuple[str, ...] = ("root",),
    root_threshold: int = 1,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Path:
    """A store with one key per role (root: `root`, at `root_threshold`), keys named after their role."""
    roles = {
        "root": RoleKeys(tuple(keys[name].public_key for name in root), root_threshold),
        "targets": RoleKeys((keys["targets"].public_key,)),
        "snapshot": RoleKeys((keys["snapshot"].public_key,)),
        "timestamp": RoleKeys((keys["timestamp"].public_key,)),
    }
    signers = keys.signers(root=list(root), **ONLINE)
    return init_trust(store, roles, signers, expiry, clock)


def fleet_env(**extra: str) -> dict[str, str]:
    """This environment without any EDGE_FLEET_* setting, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGE_FLEET_")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def run_fleet(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m agent.fleet ARGS` as a subprocess, as an operator runs `edge-fleet`."""
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT,
        env=env or fleet_env(),
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str, status: int = 1) -> str:
    """Exit `status`, exactly one `edge-fleet: error:` line on stderr holding the fragments, and no traceback."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edge-fleet: error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], result.stderr
    return errors[0]
