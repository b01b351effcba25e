"""JSON-lines sensors: producers connecting to the agent's unix socket, and standard input."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streams import Harness, short_tmpdir, wait_until

from agent.errors import SourceError
from agent.sources import JsonlConfig, SourceState
from agent.sources.jsonl import JsonlSource

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


def connect(path: Path) -> socket.socket:
    """Connects as a sensor helper does: the socket file appears at bind, a moment before the source listens, so a
    refused connection is tried again (as producers must)."""
    wait_until(path.exists, 5, f"socket {path}")
    deadline = time.monotonic() + 5
    while True:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(str(path))
            return client
        except ConnectionRefusedError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def send(client: socket.socket, *samples: object) -> None:
    client.sendall(b"".join((s if isinstance(s, str) else json.dumps(s)).encode() + b"\n" for s in samples))


def jsonl_config(path: Path, **changes: object) -> JsonlConfig:
    options: dict[str, object] = {"socket": path, "channels": ["acc_x", "acc_y"], "window": 3, "hop": 3}
    options.update(changes)
    return JsonlConfig(**options)  # type: ignore[arg-type,unused-ignore]


def test_jsonl_objects_and_arrays_over_a_unix_socket(folder: Path) -> None:
    path = folder / "imu.sock"
    with Harness(jsonl_config(path)) as harness:
        client = connect(path)
        send(
            client, {"t": 0.0, "acc_x": 1, "acc_y": 10}, {"acc_y": 20, "acc_x": 2.0, "temp": 5}, [0.02, 3, 30]
        )
        send(client, [4, 40], {"t": 1, "acc_x": 5, "acc_y": 50}, [6, 60])
        items = harness.wait_items(2, 5)
        client.close()
    assert items[0].data.tolist() == [[1, 10], [2, 20], [3, 30]]
    assert items[1].data.tolist() == [[4, 40], [5, 50], [6, 60]]
    assert harness.runner.status().garbage == 0
    assert not path.exists()  # removed when the source closed


def test_jsonl_garbage_is_counted_and_skipped(folder: Path) -> None:
    path = folder / "imu.sock"
    with Harness(jsonl_config(path)) as harness:
        client = connect(path)
        send(
            client,
            {"acc_x": 1, "acc_y": 1},
            "{not json",
            {"acc_x": 2},
            [1, 2, 3, 4],
            {"acc_x": "2", "acc_y": 2},
        )
        send(client, "[NaN, 1]", "[Infinity, 1]", {"acc_x": True, "acc_y": 1}, '"text"', [2, 2], [3, 3])
        items = harness.wait_items(1, 5)
        client.close()
    assert items[0].data[:, 0].tolist() == [1, 2, 3]
    assert harness.runner.status().garbage == 8


def test_jsonl_producers_may_come_go_and_interleave(folder: Path) -> None:
    path = folder / "imu.sock"
    with Harness(jsonl_config(path, stall_timeout_s=0.3)) as harness:
        first, second = connect(path), connect(path)
        first.sendall(b'{"acc_x": 1, "ac')  # half a line from one producer...
        send(second, [100, 100])  # ...while another sends a whole one
        time.sleep(0.05)
        first.sendall(b'c_y": 1}\n')
        send(first, [2, 2])
        items = harness.wait_items(1, 5)
        assert sorted(items[0].data[:, 0].tolist()) == [1, 2, 100]
        first.close()
        second.close()
        stalled = harness.wait_state(SourceState.STALLED, 3)  # no producer: a stall, not an error
        third = connect(path)
        send(third, [7, 7], [8, 8], [9, 9])
        harness.wait_state(SourceState.CONNECTED, 3, after=stalled)
        third.close()
    assert harness.runner.status().errors == 0


def test_jsonl_replaces_a_stale_socket_but_never_another_file(folder: Path) -> None:
    stale = folder / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, as after a crash
    source = JsonlSource(jsonl_config(stale))
    source.open()
    client = connect(stale)
    client.close()
    source.close()
    assert not stale.exists()
    regular = folder / "data.txt"
    regular.write_text("keep me")
    with pytest.raises(SourceError, match="not a socket"):
        JsonlSource(jsonl_config(regular)).open()
    assert regular.read_text() == "keep me"


STDIN_SCRIPT = """
import json, sys
from agent.sources import JsonlConfig, SourceState
sys.path.insert(0, "tests")
from streams import Harness
with Harness(JsonlConfig(channels=["a"], window=2, hop=2)) as harness:
    harness.wait_state(SourceState.ENDED, 10)
print(json.dumps({"windows": [i.data[:, 0].tolist() for i in harness.items],
                  "garbage": harness.runner.status().garbage, "states": harness.state_names}))
"""


def test_jsonl_from_standard_input_ends_at_eof() -> None:
    lines = '{"a": 1}\n[2]\nbad\n[3]\n{"t": 9, "a": 4}\n[5]'  # the last line has no newline
    result = subprocess.run(
        [sys.executable, "-c", STDIN_SCRIPT],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["windows"] == [[1, 2], [3, 4]]
    assert out["garbage"] == 1
    assert out["states"] == ["connected", "ended", "stopped"]
