"""The thin I/O edge to the host: health figures (`SystemProbe`) and the systemd notify protocol (`Notifier`,
`Watchdog`). Nothing here starts a thread or reads a file at import."""

from agent.platform.sdnotify import Notifier, Watchdog
from agent.platform.system import SystemProbe

__all__ = ["Notifier", "SystemProbe", "Watchdog"]
