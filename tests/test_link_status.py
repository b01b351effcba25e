"""The link against a real Mosquitto: retained status and birth numbers, last will on SIGKILL, telemetry, events,
results policies, and an honest connection state when the broker is away."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.link import Event, InboundMessage, Link, ModelRef, ResultsPolicy, Status, Telemetry

# tests/broker.py is both a helper module and the plugin with the fixtures; registering it for assertion rewriting
# before the import keeps pytest from warning that it was imported before it became a plugin.
pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    Broker,
    MosquittoSub,
    kill_process,
    link_config,
    needs_mosquitto,
    start_link_agent,
)

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

STATUS = f"edge/{FLEET}/devices/dev-a/status"
DEVICE = f"edge/{FLEET}/devices/dev-a/#"


def status_of(seen: MosquittoSub, state: str, birth: int | None = None, timeout_s: float = 10.0) -> Status:
    """Waits for a status message in `state` (and with `birth`) and returns it parsed."""

    def matches(message: object) -> bool:
        if getattr(message, "topic", None) != STATUS:
            return False
        status = Status.model_validate_json(message.payload)  # type: ignore[attr-defined]
        return status.state == state and (birth is None or status.birth == birth)

    return Status.model_validate_json(seen.wait_for(matches, timeout_s).payload)


def test_online_status_is_retained_and_birth_grows_across_restarts(
    broker: Broker, links: Callable[..., Link], observers: Callable[..., MosquittoSub], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    first = links(link_config(broker), state_dir=state_dir)
    assert first.wait_connected(10)
    late = observers(broker, [STATUS])  # subscribes after the fact: only a retained message can reach it
    online = status_of(late, "online")
    assert late.seen[0].retain
    assert online.birth == 1 and online.device == "dev-a" and online.agent_version
    first.stop()
    stopped = status_of(late, "offline", birth=1)
    assert stopped.reason == "stopped"

    second = links(link_config(broker), state_dir=state_dir)
    assert second.wait_connected(10)
    assert status_of(observers(broker, [STATUS]), "online").birth == 2
    assert second.state().birth == 2


def test_status_carries_the_active_model_and_sources(
    broker: Broker, links: Callable[..., Link], observers: Callable[..., MosquittoSub]
) -> None:
    link = links(link_config(broker))
    assert link.wait_connected(10)
    watcher = observers(broker, [STATUS])
    status_of(watcher, "online")
    link.set_status(model=ModelRef(name="digits", version=7), sources={"camera": "running"})
    status = Status.model_validate_json(
        watcher.wait_for(lambda m: m.topic == STATUS and b'"digits"' in m.payload).payload
    )
    assert status.model == ModelRef(name="digits", version=7)
    assert status.sources == {"camera": "running"}


def test_sigkill_makes_the_broker_publish_the_retained_offline_will(
    broker: Broker, observers: Callable[..., MosquittoSub], tmp_path: Path
) -> None:
    watcher = observers(broker, [STATUS])
    agent = start_link_agent(broker, tmp_path / "state")
    try:
        online = status_of(watcher, "online")
    finally:
        kill_process(agent)
    offline = status_of(watcher, "offline", birth=online.birth)
    assert offline.reason == "lost"
    # And it stays: a newcomer reads the retained offline.
    assert status_of(observers(broker, [STATUS]), "offline").reason == "lost"


def test_telemetry_follows_its_schema_and_counts_up(
    broker: Broker, links: Callable[..., Link], observers: Callable[..., MosquittoSub]
) -> None:
    watcher = observers(broker, [f"edge/{FLEET}/devices/dev-a/telemetry"])
    metrics = {
        "fps": 12.5,
        "latency_ms": {"invoke": {"p50": 3.1, "p95": 4.0, "p99": 6.2}},
        "cpu_percent": 41.0,
    }
    link = links(link_config(broker, telemetry={"interval_s": 0.2}), telemetry_source=lambda: metrics)
    assert link.wait_connected(10)
    watcher.wait_for(lambda m: Telemetry.model_validate_json(m.payload).seq >= 2, 10)
    snapshots = [Telemetry.model_validate_json(m.payload) for m in watcher.seen]
    assert [s.seq for s in snapshots][:3] == [0, 1, 2]
    assert snapshots[0].metrics == metrics
    assert snapshots[0].device == "dev-a"
    assert {"state", "outbox_rows", "outbox_dropped", "commands"} <= set(snapshots[0].link)
    assert json.loads(watcher.seen[0].payload)["schema"] == 1


def test_events_arrive_once_each_with_unique_ids_in_order(
    broker: Broker, links: Callable[..., Link], observers: Callable[..., MosquittoSub]
) -> None:
    watcher = observers(broker, [f"edge/{FLEET}/devices/dev-a/events"])
    link = links(link_config(broker))
    sent = [Event(type="anomaly", severity="warning", message=f"m{i}", evidence={"i": i}) for i in range(100)]
    assert all(link.publish_event(event) for event in sent)
    watcher.wait_for(lambda m: sent[-1].id.encode() in m.payload, 15)
    received = [Event.model_validate_json(m.payload) for m in watcher.collect(quiet_s=0.3)]
    assert [e.id for e in received] == [e.id for e in sent]
    assert len({e.id for e in received}) == 100
    assert all(e.device == "dev-a" for e in received)


def test_results_go_out_only_as_the_policy_says(
    broker: Broker, links: Callable[..., Link], observers: Callable[..., MosquittoSub]
) -> None:
    topic = f"edge/{FLEET}/devices/dev-a/results"
    watcher = observers(broker, [topic])
    link = links(link_config(broker, results={"mode": "on_change", "max_per_s": None}))
    labels = ["cat", "cat", "cat", "dog", "dog", "cat", "cat"]
    for seq, label in enumerate(labels):
        link.publish_result({"labels": [{"label": label, "score": 0.9}]}, seq=seq, key=("cls", label))
    link.set_results_policy(ResultsPolicy(mode="above_threshold", threshold=0.5, max_per_s=None))
    for seq, score in enumerate([0.2, 0.7, 0.4, 0.9], start=100):
        link.publish_result({"anomaly_score": score}, seq=seq, score=score)
    link.set_results_policy(ResultsPolicy(mode="max_rate", max_per_s=2.0))
    for seq in range(200, 230):  # 30 at once: the burst of 2 goes, the rest is held
        link.publish_result({"x": seq}, seq=seq)
    watcher.wait_for(lambda m: b'"seq":201' in m.payload, 10)
    seqs = [json.loads(m.payload)["seq"] for m in watcher.collect(quiet_s=0.5)]
    assert seqs == [0, 3, 5, 101, 103, 200, 201]
    held = link.stats()["results"]["held"]
    assert held == {"unchanged": 4, "below_threshold": 2, "rate": 28}


def test_state_tells_the_truth_when_no_broker_listens(links: Callable[..., Link], tmp_path: Path) -> None:
    from broker import free_port

    config = link_config(Broker(tmp_path / "nobroker"), port=free_port())
    link = links(config)
    started = time.monotonic()
    assert link.publish_event(Event(type="source", message="camera lost"))
    assert time.monotonic() - started < 0.5  # stored, not sent: never waits on the network
    deadline = time.monotonic() + 5
    while link.state().state != "disconnected" and time.monotonic() < deadline:
        time.sleep(0.05)
    status = link.state()
    assert status.state == "disconnected"
    assert status.reason is not None and "cannot reach the broker" in status.reason
    assert status.connects == 0
    assert link.stats()["outbox"]["rows"]["event"] == 1


def test_disabled_link_starts_nothing_and_stores_nothing(links: Callable[..., Link]) -> None:
    from agent.link import LinkConfig

    link = links(LinkConfig())
    assert link.state().state == "disabled"
    assert not link.publish_event(Event(type="error", message="x"))
    assert link.outbox is None


def test_subscribed_desired_state_reaches_its_handler_even_when_retained_before(
    broker: Broker, links: Callable[..., Link], peers: Callable[..., Any]
) -> None:
    operator = peers(broker, "op")
    desired = f"edge/{FLEET}/groups/g1/desired"
    operator.client.publish(desired, b'{"schema":1,"release":"digits/4"}', qos=1, retain=True)
    got: queue.Queue[InboundMessage] = queue.Queue()
    link = links(link_config(broker), start=False)
    link.subscribe(link.topics.group_desired(), got.put)
    link.start()
    message = got.get(timeout=10)
    assert message.topic == desired and message.retain and b"digits/4" in message.payload
    operator.client.publish(desired, b'{"schema":1,"release":"digits/5"}', qos=1, retain=True)
    assert b"digits/5" in got.get(timeout=10).payload


def test_outbox_drops_are_reported_as_an_event(
    links: Callable[..., Link], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker import free_port

    from agent.link import OutboxConfig
    from agent.link import client as client_module

    monkeypatch.setattr(client_module, "DROP_REPORT_S", 0.3)
    config = link_config(Broker(tmp_path / "nobroker"), port=free_port())  # nobody listens: all stays queued
    link = links(config, outbox=OutboxConfig(max_bytes=8192))
    for _ in range(10):
        link.publish_telemetry({"pad": "x" * 1000})
    assert link.publish_event(Event(type="drift", message="x" * 3000))
    assert link.publish_event(Event(type="drift", message="y" * 3000))
    deadline = time.monotonic() + 5
    assert link.outbox is not None
    while time.monotonic() < deadline:
        payloads = [row.payload for row in link.outbox.pending(100) if row.kind == "event"]
        if any(b"outbox dropped" in p for p in payloads):
            break
        time.sleep(0.1)
    report = next(Event.model_validate_json(p) for p in payloads if b"outbox dropped" in p)
    assert report.type == "error" and report.severity == "warning"
    assert report.evidence["dropped"]["telemetry"]["evicted"] >= 5
