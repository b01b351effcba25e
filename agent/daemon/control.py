"""The local control socket: newline-delimited JSON requests and replies over a unix stream socket.

Request `{"cmd": "status"}`, reply `{"ok": true, "data": {...}}` or `{"ok": false, "error": "..."}`. The server is a
named thread that handles one short request per connection; a malformed request gets an error reply, never a crash.
The socket file is created with mode 0660 (the service user and its group), replacing a stale one from a dead daemon.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AgentError

log = logging.getLogger("agent.daemon.control")

MAX_REQUEST_BYTES = 64 * 1024
Handler = Callable[[dict[str, Any]], Any]


class ControlUnavailable(AgentError):
    """No daemon answers on the control socket."""


class ControlServer:
    """Answers local requests (`status`, `ping`) from a thread."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Binds the socket (replacing a stale one) and starts answering."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise AgentError(f"another edge-agent already answers on {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            self.path.chmod(0o660)
            sock.listen(8)
            sock.settimeout(0.5)
        except OSError as problem:
            sock.close()
            raise AgentError(f"cannot open the control socket {self.path}: {problem}") from None
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    reply = self._answer(_read_line(conn))
                except (OSError, ValueError) as problem:
                    reply = {"ok": False, "error": f"bad request: {problem}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply, default=str).encode() + b"\n")

    def _answer(self, raw: bytes) -> dict[str, Any]:
        try:
            request = json.loads(raw)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object like {"cmd": "status"}'}
        handler = self._handlers.get(request["cmd"])
        if handler is None:
            return {
                "ok": False,
                "error": f"unknown command {request['cmd']!r}; known: {sorted(self._handlers)}",
            }
        try:
            return {"ok": True, "data": handler(request)}
        except AgentError as problem:
            return {"ok": False, "error": str(problem)}
        except Exception as problem:  # never let a request kill the server
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"internal error: {type(problem).__name__}: {problem}"}

    def stop(self) -> None:
        """Stops answering and removes the socket file."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(0.5)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    return data.split(b"\n", 1)[0]


def _answers(path: Path) -> bool:
    try:
        request(path, "ping", timeout_s=1.0)
    except ControlUnavailable:
        return False
    return True


def request(path: Path, cmd: str, timeout_s: float = 5.0, **args: Any) -> Any:
    """Sends one request to the daemon and returns its data; ControlUnavailable when no daemon answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        raw = _read_line(sock)
    except FileNotFoundError:
        raise ControlUnavailable(f"no edge-agent daemon is running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise ControlUnavailable(f"no edge-agent daemon answers on {path} (stale socket)") from None
    except PermissionError:
        raise ControlUnavailable(
            f"permission denied on {path}: run as the service user or a member of its group"
        ) from None
    except (TimeoutError, OSError, ValueError) as problem:
        raise ControlUnavailable(f"the daemon on {path} did not answer: {problem}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ControlUnavailable(f"the daemon on {path} sent a malformed reply") from None
    if not reply.get("ok"):
        raise AgentError(f"the daemon refused {cmd}: {reply.get('error')}")
    return reply.get("data")
