"""A sensor on a serial port (pyserial) speaking a line protocol: one sample per line.

A line holds one number per channel, separated by commas, semicolons or spaces, optionally preceded by a timestamp
(a line with one value more than there are channels: the first is dropped). Example for three channels:
`12.5, 0.01, -0.98, 0.12` or `0.01 -0.98 0.12`.

Invariants: the port is opened exclusively (a second reader would steal bytes); bytes that were waiting before the
open are discarded (the first line would be a fragment); a vanished port (USB unplugged) is a SourceError, and the
runner reopens it with backoff until it comes back (use a /dev/serial/by-id/... link: it follows the device).
"""

from __future__ import annotations

import contextlib

import serial

from agent.errors import SourceError
from agent.sources.config import SerialConfig
from agent.sources.windows import LineBuffer, LineSensor, parse_numbers
from agent.types import FloatArray


class SerialSource(LineSensor):
    """Windows of samples read from a serial port."""

    def __init__(self, config: SerialConfig) -> None:
        super().__init__(
            config.name,
            f"serial {config.port}",
            config.window,
            config.hop,
            config.channels,
            config.garbage_limit,
        )
        self.config = config
        self._port: serial.Serial | None = None
        self._buffer = LineBuffer(self._lines)

    def open(self) -> None:
        """Opens the port at the configured speed."""
        self.close()
        self._reset()
        self._buffer = LineBuffer(self._lines)
        try:
            port = serial.Serial(self.config.port, self.config.baud_rate, timeout=0, exclusive=True)
            port.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as problem:
            raise SourceError(f"{self.label}: cannot open: {problem}") from None
        self._port = port

    def _parse(self, line: str) -> tuple[FloatArray | None, str]:
        return parse_numbers(line, len(self.channel_names))

    def _receive(self, timeout_s: float) -> None:
        port = self._port
        if port is None:
            raise SourceError(f"{self.label}: not open")
        try:
            port.timeout = timeout_s
            data = port.read(max(1, port.in_waiting))
        except (serial.SerialException, OSError) as problem:
            raise SourceError(f"{self.label}: port lost: {problem}") from None
        if data:
            self._feed(self._buffer, data)

    def close(self) -> None:
        """Closes the port."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                port.close()
