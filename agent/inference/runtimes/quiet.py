"""Native runtime chatter (LiteRT's `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`) goes to the log.

The runtimes' C++ code writes to file descriptor 2 directly, past Python's logging. While a model loads, descriptor 2
is pointed at a temporary file; what the runtime wrote is then logged: `INFO:` lines at debug level, anything else
as a warning, so nothing is lost and no command's stderr carries it. Loads are serialised by a lock, and a process
without a usable descriptor 2 loads as it is. Another thread's stderr line written during a load (a load takes
milliseconds, and happens at start and at a model swap) is caught too, and logged as a warning under the load's name
rather than lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


@contextlib.contextmanager
def native_stderr_to_log(log: logging.Logger, what: str) -> Iterator[None]:
    """Captures what native code writes to descriptor 2 inside the block and logs it under `what`."""
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", "replace")
    for line in text.splitlines():
        if line.strip():
            log.log(
                logging.DEBUG if line.startswith("INFO:") else logging.WARNING, "%s: %s", what, line.strip()
            )
