"""JSON-lines sensor input, from standard input or from producers that connect to a unix socket the source listens on.

One sample per line: an object with a number per channel name (`{"t": 12.5, "acc_x": 0.01, ...}`; other keys such
as `t` are ignored) or an array of one number per channel, optionally preceded by a timestamp (`[12.5, 0.01, ...]`).

Why the source listens (rather than connects): the agent is the long-lived side; sensor helpers come and go, and
each can connect when it is ready without the agent having to know about it. Several producers may be connected at
once; each has its own line buffer, and their complete lines feed the same windows in arrival order.

Invariants: a stale socket file left by a crash is replaced, but never a file that is not a socket; the socket file
is removed when the source closes; a producer disconnecting is not an error (the source waits for the next one and
reports a stall if none comes); standard input reaching its end is EndOfStream.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import stat
import sys

from agent.errors import SourceError
from agent.sources.config import JsonlConfig
from agent.sources.windows import LineBuffer, LineSensor, parse_json_sample
from agent.types import FloatArray

RECV_BYTES = 65536


class JsonlSource(LineSensor):
    """Windows of samples read as JSON lines."""

    def __init__(self, config: JsonlConfig) -> None:
        where = str(config.socket) if config.socket is not None else "stdin"
        super().__init__(
            config.name, f"jsonl {where}", config.window, config.hop, config.channels, config.garbage_limit
        )
        self.config = config
        self._selector: selectors.DefaultSelector | None = None
        self._listener: socket.socket | None = None
        self._socket_inode: int | None = None
        self._stdin = LineBuffer(self._lines)
        self._stdin_open = False

    def open(self) -> None:
        """Starts listening on the socket (or starts reading standard input)."""
        self.close()
        self._reset()
        if self.config.socket is None:
            self._stdin = LineBuffer(self._lines)
            self._stdin_open = True
            return
        path = self.config.socket
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise SourceError(
                    f"{self.label}: the path exists and is not a socket; refusing to replace it"
                )
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            path.chmod(self.config.socket_mode)
            listener.listen(8)
        except OSError as problem:
            listener.close()
            raise SourceError(f"{self.label}: cannot listen: {problem.strerror or problem}") from None
        listener.setblocking(False)
        self._socket_inode = path.stat().st_ino
        self._listener = listener
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)

    def _parse(self, line: str) -> tuple[FloatArray | None, str]:
        return parse_json_sample(line, self.channel_names)

    def _receive(self, timeout_s: float) -> None:
        if self._selector is None:
            if not self._stdin_open:
                raise SourceError(f"{self.label}: not open")
            self._receive_stdin(timeout_s)
            return
        for key, _events in self._selector.select(timeout_s):
            if key.data is None:
                self._accept()
            else:
                connection, buffer = key.data
                self._receive_from(connection, buffer)

    def _receive_stdin(self, timeout_s: float) -> None:
        fd = sys.stdin.fileno()
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            return
        data = os.read(fd, RECV_BYTES)
        if data:
            self._feed(self._stdin, data)
        else:
            self._stdin.flush()
            self._eof = True

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as problem:
            raise SourceError(f"{self.label}: accept failed: {problem}") from None
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ, (connection, LineBuffer(self._lines)))

    def _receive_from(self, connection: socket.socket, buffer: LineBuffer) -> None:
        try:
            data = connection.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._feed(buffer, data)
            return
        buffer.flush()
        assert self._selector is not None
        self._selector.unregister(connection)
        connection.close()

    def close(self) -> None:
        """Disconnects the producers, stops listening and removes the socket file."""
        self._stdin_open = False
        selector, self._selector = self._selector, None
        if selector is not None:
            for key in list(selector.get_map().values()):
                if key.data is not None:
                    key.data[0].close()
            selector.close()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        path, inode = self.config.socket, self._socket_inode
        self._socket_inode = None
        if path is not None and inode is not None:
            with contextlib.suppress(OSError):
                if path.lstat().st_ino == inode:
                    path.unlink()
