"""`edge-fleet serve --sign-timestamp`: the one copy given the timestamp key keeps the timestamp fresh, so devices are
not frozen out by an expired one; a copy without it only reads the store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner

pytest.register_assert_rewrite("broker", "fleet_store")
from broker import Broker, needs_mosquitto  # noqa: E402
from conftest import ROOT  # noqa: E402
from fleet_store import Keys, init_store, updater  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto


def key_file(signer: CryptoSigner, path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    private = signer._private_key  # the test's own key: written as the operator's key file would be
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def timestamp_version(store: Path) -> int:
    return int(json.loads((store / "metadata" / "timestamp.json").read_text())["signed"]["version"])


def serve(broker: Broker, store: Path, *extra: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.fleet",
            "--host",
            "127.0.0.1",
            "--port",
            str(broker.port),
            "--client-id",
            f"repo-{time.monotonic_ns()}",
            "serve",
            "--store",
            str(store),
            *map(str, extra),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_signing_copy_refreshes_an_expired_timestamp_and_a_device_accepts_it(broker, tmp_path):
    keys, store = Keys(), tmp_path / "repo"
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    init_store(store, keys, clock=lambda: two_days_ago)  # its timestamp (1 day) expired yesterday
    with pytest.raises(Exception, match="expired"):
        updater(store, tmp_path / "device-1").refresh()
    reader = serve(broker, store)
    try:
        time.sleep(2)
        assert timestamp_version(store) == 1, "a copy without the key never signs"
    finally:
        reader.terminate()
        reader.wait(10)
    signer = serve(
        broker,
        store,
        "--sign-timestamp",
        key_file(keys["timestamp"], tmp_path / "timestamp.key"),
        "--sign-snapshot",
        key_file(keys["snapshot"], tmp_path / "snapshot.key"),
    )
    try:
        deadline = time.monotonic() + 20
        while timestamp_version(store) < 2:
            assert signer.poll() is None, signer.communicate()[0]
            assert time.monotonic() < deadline, "the timestamp was not re-signed"
            time.sleep(0.2)
    finally:
        signer.terminate()
        output = signer.communicate(timeout=10)[0]
    assert "Traceback" not in output, output
    updater(store, tmp_path / "device-2").refresh()  # python-tuf now trusts the fresh timestamp
