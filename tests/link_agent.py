"""The agent side of the link as a real process, for tests that SIGKILL it.

    python tests/link_agent.py SPEC_JSON

SPEC_JSON: {"config": {...LinkConfig...}, "identity": {...DeviceIdentity...}, "state_dir": "...",
            "outbox": {...OutboxConfig...} (optional), "events": N (default 0), "event_interval_s": 0.0,
            "wait_connected": false}
Prints one line per step, flushed, for the test to follow: `started`, `connected` (if wait_connected),
`put SEQ EVENT_ID` after each event the outbox accepted, `done` when all events are put; then it runs until it is
killed (the point of the exercise) or gets SIGTERM (clean stop: offline status, then exit 0).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from agent.link import DeviceIdentity, Event, Link, LinkConfig, OutboxConfig


def main() -> int:
    """Runs the link as the spec says."""
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    link = Link(
        LinkConfig.model_validate(spec["config"]),
        DeviceIdentity.model_validate(spec["identity"]),
        Path(spec["state_dir"]),
        outbox=OutboxConfig.model_validate(spec.get("outbox", {})),
    )
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    link.start()
    print("started", flush=True)
    if spec.get("wait_connected") and link.wait_connected(20):
        print("connected", flush=True)
    interval = float(spec.get("event_interval_s", 0.0))
    for seq in range(int(spec.get("events", 0))):
        event = Event(type="anomaly", severity="info", message=f"event {seq}", evidence={"seq": seq})
        if link.publish_event(event):
            print(f"put {seq} {event.id}", flush=True)
        if interval:
            time.sleep(interval)
        if stop.is_set():
            break
    print("done", flush=True)
    stop.wait()
    link.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
