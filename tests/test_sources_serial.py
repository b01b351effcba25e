"""The serial sensor over a pseudo-terminal: lines, garbage, and a port that vanishes and comes back.

A pty is what a USB serial adapter looks like to pyserial (a tty); the port is reached through a symlink, as through
/dev/serial/by-id/..., so that "unplug and replug" can bring the device back under the same name.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from streams import Harness, wait_until

from agent.backoff import BackoffConfig
from agent.sources import SerialConfig, SourceState


class FakeDevice:
    """The device end of a pseudo-terminal, reached by the agent through `link`."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.slave = -1
        self.plug()

    def plug(self) -> None:
        """A new pty behind the link (a replugged adapter)."""
        self.master, self.slave = os.openpty()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(self.slave))

    def unplug(self) -> None:
        """Closes the device end: the agent's reads fail and the pty disappears."""
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1

    def send(self, *lines: str) -> None:
        os.write(self.master, "".join(f"{line}\n" for line in lines).encode())


@pytest.fixture
def device(tmp_path: Path) -> Iterator[FakeDevice]:
    fake = FakeDevice(tmp_path / "ttyIMU")
    yield fake
    fake.unplug()


def serial_config(device: FakeDevice, **changes: object) -> SerialConfig:
    options: dict[str, object] = {
        "port": str(device.link),
        "channels": ["x", "y", "z"],
        "window": 4,
        "hop": 2,
        "reconnect": BackoffConfig(initial_s=0.05, max_s=0.2),
    }
    options.update(changes)
    return SerialConfig(**options)  # type: ignore[arg-type,unused-ignore]


def test_serial_lines_become_windows_with_or_without_timestamps(device: FakeDevice) -> None:
    with Harness(serial_config(device)) as harness:
        harness.wait_state(SourceState.CONNECTED, 5)
        device.send("1,10,100", "2 20 200", "0.5, 3, 30, 300", "4;40;400", "1.25\t5\t50\t500", "6,60,600")
        items = harness.wait_items(2, 5)
    first, second = items[0].data, items[1].data
    assert first.dtype == np.float32 and first.shape == (4, 3)
    assert first[:, 0].tolist() == [1, 2, 3, 4] and first[:, 2].tolist() == [100, 200, 300, 400]
    assert second[:, 0].tolist() == [3, 4, 5, 6]  # hop 2
    assert items[0].kind == "window" and harness.runner.status().garbage == 0


def test_serial_garbage_lines_are_counted_and_skipped(device: FakeDevice) -> None:
    with Harness(serial_config(device, hop=4)) as harness:
        harness.wait_state(SourceState.CONNECTED, 5)
        device.send(
            "1,1,1", "hello", "2,2", "nan,2,2", "2,inf,2", "\x00\xff\xfe", "2,2,2", "3,3,3,3,3", "3,3,3"
        )
        device.send("x" * 5000 + "4,4,4", "4,4,4")
        items = harness.wait_items(1, 5)
    assert items[0].data[:, 0].tolist() == [1, 2, 3, 4]
    assert harness.runner.status().garbage == 7  # the overlong line counts once, however it was split


def test_serial_persistent_garbage_is_an_error_state_then_recovers(device: FakeDevice) -> None:
    with Harness(serial_config(device, garbage_limit=5)) as harness:
        harness.wait_state(SourceState.CONNECTED, 5)
        device.send(*["$GPGGA,noise"] * 6)
        down = harness.wait_state(SourceState.RECONNECTING, 5)
        harness.wait_state(SourceState.CONNECTED, 5, after=down)
        assert "5 unusable samples in a row" in (harness.runner.status().last_error or "")
        device.send(*[f"{i},{i},{i}" for i in range(4)])
        harness.wait_items(1, 5)


def test_serial_port_vanishing_reconnects_when_it_comes_back(device: FakeDevice) -> None:
    with Harness(serial_config(device)) as harness:
        harness.wait_state(SourceState.CONNECTED, 5)
        device.send(*[f"{i},0,0" for i in range(4)])
        harness.wait_items(1, 5)
        device.unplug()
        down = harness.wait_state(SourceState.RECONNECTING, 5)
        harness.wait_state(SourceState.FAILED, 5, after=down)
        assert "serial" in (harness.runner.status().last_error or "")
        device.plug()
        back = harness.wait_state(SourceState.CONNECTED, 5, after=down)
        wait_until(lambda: harness.runner.status().state is SourceState.CONNECTED, 5)
        device.send(*[f"{i},1,1" for i in range(10, 14)])
        items = harness.wait_items(2, 5)
    assert back > down
    assert items[1].data[:, 0].tolist() == [10, 11, 12, 13]  # a window never spans two connections
    assert [i.seq for i in items] == [0, 1]


def test_serial_missing_port_fails_clearly(tmp_path: Path) -> None:
    config = SerialConfig(port=str(tmp_path / "ttyUSB7"), reconnect=BackoffConfig(initial_s=0.05, max_s=0.1))
    with Harness(config) as harness:
        harness.wait_state(SourceState.FAILED, 5)
    assert "ttyUSB7: cannot open" in (harness.runner.status().last_error or "")
