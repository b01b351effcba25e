"""Nothing is lost: a 30 s broker outage while events keep coming, and the agent SIGKILLed with a full outbox or in
the middle of draining it. Every event put arrives (at least once; exactly once after dedupe by id) and in order.

The observer is `mosquitto_sub` with a persistent session (clean start off, session expiry 600 s) on a broker with
persistence on, so what the broker accepted while the observer was away is queued for it, across the broker restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.link import Event, Link

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    Broker,
    BrokerOptions,
    MosquittoSub,
    kill_process,
    link_config,
    needs_mosquitto,
)

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

EVENTS = f"edge/{FLEET}/devices/dev-a/events"
OUTAGE_S = 30.0
"""The issue's figure. The whole test takes about 40 s; the backoff cap (1 s) keeps the reconnect prompt."""


def deduped_ids(observer: MosquittoSub) -> list[str]:
    """Event ids in arrival order, each kept at its first arrival."""
    seen: dict[str, None] = {}
    for message in observer.seen:
        seen.setdefault(json.loads(message.payload)["id"], None)
    return list(seen)


def wait_for_ids(observer: MosquittoSub, ids: list[str], timeout_s: float) -> None:
    wanted = set(ids)
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(deduped_ids(observer)):
        if time.monotonic() > deadline:
            missing = wanted - set(deduped_ids(observer))
            raise AssertionError(f"{len(missing)} of {len(ids)} events never arrived")
        observer.collect(quiet_s=0.2, timeout_s=1.0)


def test_broker_outage_of_30_s_loses_no_event_and_keeps_order(
    broker_factory: Callable[..., Broker],
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
) -> None:
    broker = broker_factory(BrokerOptions(persistence=True))
    observer = observers(broker, [EVENTS], client_id="outage-observer")
    link = links(link_config(broker))
    assert link.wait_connected(10)
    put: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        seq = 0
        while not stop.is_set():
            event = Event(type="anomaly", message=f"event {seq}", evidence={"seq": seq})
            assert link.publish_event(event)
            put.append(event.id)
            seq += 1
            time.sleep(0.1)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(2.0)
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(1.0)
        during = link.state()
        assert during.state in ("disconnected", "connecting"), during
        assert link.stats()["outbox"]["rows"]["event"] > 0
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        broker.start()
        time.sleep(2.0)
    finally:
        stop.set()
        producer.join(5)
    assert len(put) > OUTAGE_S * 5
    wait_for_ids(observer, put, timeout_s=30)
    assert deduped_ids(observer) == put
    assert link.state().state == "connected"
    assert link.state().reconnects >= 1
    assert link.stats()["outbox"]["rows"]["event"] == 0


def start_agent(broker: Broker, state_dir: Path, events: int, **extra: Any) -> subprocess.Popen[str]:
    spec = {
        "config": link_config(broker).model_dump(mode="json"),
        "identity": {"device": "dev-a", "fleet": FLEET},
        "state_dir": str(state_dir),
        "events": events,
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "link_agent.py"), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def read_puts(agent: subprocess.Popen[str], until: Callable[[list[str]], bool]) -> list[str]:
    """Event ids the agent reports as stored in its outbox, read until `until(ids)` or `done`."""
    assert agent.stdout is not None
    ids: list[str] = []
    for line in agent.stdout:
        if line.startswith("put "):
            ids.append(line.split()[2])
            if until(ids):
                break
        elif line.strip() == "done":
            break
    return ids


def test_sigkill_with_a_full_outbox_loses_nothing(
    broker_factory: Callable[..., Broker], observers: Callable[..., MosquittoSub], tmp_path: Path
) -> None:
    broker = broker_factory(start=False)  # no broker yet: everything stays in the outbox
    state_dir = tmp_path / "state"
    agent = start_agent(broker, state_dir, events=200)
    try:
        put = read_puts(agent, lambda ids: False)
    finally:
        kill_process(agent)
    assert len(put) == 200
    broker.start()
    observer = observers(broker, [EVENTS])
    restarted = start_agent(broker, state_dir, events=0)
    try:
        wait_for_ids(observer, put, timeout_s=20)
    finally:
        kill_process(restarted)
    assert deduped_ids(observer) == put


def test_sigkill_while_draining_loses_nothing(
    broker: Broker, observers: Callable[..., MosquittoSub], tmp_path: Path
) -> None:
    observer = observers(broker, [EVENTS])
    state_dir = tmp_path / "state"
    agent = start_agent(broker, state_dir, events=3000, wait_connected=True)
    try:
        put = read_puts(agent, lambda ids: len(ids) >= 1500)
    finally:
        kill_process(agent)
    restarted = start_agent(broker, state_dir, events=0)
    try:
        wait_for_ids(observer, put, timeout_s=30)
    finally:
        kill_process(restarted)
    arrived = deduped_ids(observer)
    assert arrived[: len(put)] == put  # in order; anything after was put after our last read
