"""The link on a state directory that cannot be written: read-only, full, failed under the open database, corrupt.

Real parts only: a real Mosquitto (tests/broker.py), real files, real mounts (tests/mounts.py: a tmpfs that fills up,
read-only bind mounts, an ext4 image the kernel remounts read-only on an error). In every case the device stays
reachable (status, commands, publishing), tells the fleet what is wrong (a `critical` event and `storage` in the
retained status), recovers by itself once the fault is gone, and loses nothing up to its memory bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.link import CommandReply, Event, Link, OutboxConfig, Status, Telemetry
from agent.link.outbox import Outbox
from agent.link.state import BirthCounter

pytest.register_assert_rewrite("broker", "mounts")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    Broker,
    BrokerOptions,
    MosquittoSub,
    PahoPeer,
    link_config,
    needs_mosquitto,
)
from mounts import Mounts, fill, needs_ext4_errors  # noqa: E402

pytest_plugins = ["broker", "mounts"]
pytestmark = needs_mosquitto

DEVICE = f"edge/{FLEET}/devices/dev-a"
EVENTS = f"{DEVICE}/events"
RESULTS = f"{DEVICE}/results"
STATUS = f"{DEVICE}/status"
REPLIES = f"{DEVICE}/reply/op-1"
FAST_RETRY = {"initial_s": 0.2, "max_s": 0.5, "jitter": 0.0}
RECOVERY_S = 10.0
"""How soon the outbox must find a repaired state directory (retry every 0.5 s at most here; 30 s by default)."""


def fast(**changes: Any) -> OutboxConfig:
    return OutboxConfig.model_validate({"retry": FAST_RETRY, **changes})


def events_in(watcher: MosquittoSub) -> list[Event]:
    return [Event.model_validate_json(m.payload) for m in watcher.seen if m.topic == EVENTS]


def wait_event(watcher: MosquittoSub, predicate: Callable[[Event], bool], timeout_s: float = 10.0) -> Event:
    seen = watcher.wait_for(
        lambda m: m.topic == EVENTS and predicate(Event.model_validate_json(m.payload)), timeout_s
    )
    return Event.model_validate_json(seen.payload)


def wait_status(
    watcher: MosquittoSub, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
) -> Status:
    """The first status (seen or arriving) whose JSON matches; the JSON keeps the difference of absent and null."""
    seen = watcher.wait_for(lambda m: m.topic == STATUS and predicate(json.loads(m.payload)), timeout_s)
    return Status.model_validate_json(seen.payload)


def ping(operator: PahoPeer) -> CommandReply:
    operator.publish(f"{DEVICE}/cmd/ping", b"", response_topic=REPLIES, correlation=b"c")
    return CommandReply.model_validate_json(operator.next_message().payload)


def operator_of(peers: Callable[..., PahoPeer], broker: Broker) -> PahoPeer:
    operator = peers(broker, "op-1")
    operator.subscribe(REPLIES)
    return operator


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def killed_run_leaves(state: Path, message: str) -> None:
    """A previous run that stored one event and was killed (its -wal and -shm files stay), and a birth number."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from agent.link import Event
        from agent.link.outbox import Outbox
        outbox = Outbox(Path({str(state / "outbox.sqlite")!r}))
        outbox.put("event", {EVENTS!r}, Event(type="source", message={message!r}).to_bytes())
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    BirthCounter(state).commit(4)
    assert (state / "outbox.sqlite-wal").exists()


def test_read_only_state_dir_with_files_still_publishes_from_memory_and_says_so(
    mounts: Mounts,
    broker: Broker,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    peers: Callable[..., PahoPeer],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    killed_run_leaves(state, "stored by the last run")
    mounts.read_only(state)
    watcher = observers(broker, [f"{DEVICE}/#"])
    link = links(
        link_config(broker, results={"mode": "every", "max_per_s": None}), state_dir=state, outbox=fast()
    )
    assert link.wait_connected(10)
    # The fleet hears that this device cannot store, once, and sees it in the retained status.
    alarm = wait_event(watcher, lambda e: e.severity == "critical")
    assert alarm.type == "error" and alarm.message.startswith("cannot store: read-only file system")
    assert alarm.evidence["storage"] == "read-only" and alarm.evidence["memory_max_bytes"] == 1024 * 1024
    online = wait_status(watcher, lambda s: s["state"] == "online" and s.get("storage") == "read-only")
    assert online.storage_reason is not None and "read-only" in online.storage_reason
    late = observers(broker, [STATUS])  # the retained status says it to an operator who comes later, too
    assert wait_status(late, lambda s: True).storage == "read-only"
    # It still publishes: events, results and telemetry go out from memory.
    event = Event(type="anomaly", severity="warning", message="seen while read-only")
    assert link.publish_event(event)
    assert link.publish_result({"label": "cat"}, seq=1)
    assert link.publish_telemetry({"fps": 5.0})
    wait_event(watcher, lambda e: e.id == event.id)
    watcher.wait_for(lambda m: m.topic == RESULTS and json.loads(m.payload)["seq"] == 1)
    telemetry = Telemetry.model_validate_json(
        watcher.wait_for(lambda m: m.topic.endswith("/telemetry")).payload
    )
    assert telemetry.link["storage"] == "read-only" and "read-only" in telemetry.link["storage_reason"]
    # What the last run stored is read from the read-only file and sent as well.
    wait_event(watcher, lambda e: e.message == "stored by the last run")
    assert ping(operator_of(peers, broker)).status == "ok"
    stats = link.stats()["outbox"]
    assert stats["storage"] == "read-only" and stats["dropped"] == {}
    assert [e.severity for e in events_in(watcher)].count("critical") == 1  # one per condition, not a flood


def test_read_only_empty_state_dir_at_start_opens_the_outbox_by_itself_once_writable(
    mounts: Mounts,
    broker: Broker,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    peers: Callable[..., PahoPeer],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    mounts.read_only(state)
    watcher = observers(broker, [f"{DEVICE}/#"])
    link = links(link_config(broker), state_dir=state, outbox=fast())
    assert link.wait_connected(10)
    operator = operator_of(peers, broker)
    assert wait_event(watcher, lambda e: e.severity == "critical").evidence["storage"] == "read-only"
    wait_status(watcher, lambda s: s["state"] == "online" and s.get("storage") == "read-only")
    assert ping(operator).status == "ok"
    held = Event(type="anomaly", message="held while read-only")
    assert link.publish_event(held)
    wait_event(watcher, lambda e: e.id == held.id)

    mounts.writable(state)
    took = wait_until(
        lambda: link.outbox is not None and link.outbox.storage().condition == "ok", RECOVERY_S, "ok"
    )
    print(f"outbox opened {took:.1f} s after the state directory became writable")
    recovered = wait_event(watcher, lambda e: e.severity == "info" and e.type == "error")
    assert recovered.message.startswith("outbox storage recovered") and "was read-only" in recovered.message
    assert (state / "outbox.sqlite").is_file()
    wait_status(watcher, lambda s: s["state"] == "online" and "storage" not in s)
    assert ping(operator).status == "ok"
    after = Event(type="anomaly", message="stored on disk")
    assert link.publish_event(after)
    wait_event(watcher, lambda e: e.id == after.id)
    assert link.stats()["outbox"]["held_bytes"] == 0 and link.stats()["outbox"]["dropped"] == {}


def test_read_only_remount_under_the_open_database_then_repair_loses_nothing_and_keeps_order(
    mounts: Mounts,
    broker_factory: Callable[..., Broker],
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    card = needs_ext4_errors(mounts, state)
    broker = broker_factory(BrokerOptions(persistence=True))
    watcher = observers(broker, [EVENTS, RESULTS], client_id="storage-observer")
    broker.stop()  # the broker is away: everything waits in the device, on disk or in memory
    config = link_config(broker, results={"mode": "every", "max_per_s": None})
    # sync full: what was stored before the failure is on the card (sync normal may lose the last 5 s, by contract)
    link = links(config, state_dir=state, outbox=fast(sync="full"))
    events: list[str] = []
    results: list[int] = []

    def produce(tag: str, count: int) -> None:
        for i in range(count):
            event = Event(type="anomaly", message=f"{tag} {i}")
            assert link.publish_event(event), (tag, i)
            events.append(event.id)
            assert link.publish_result({"tag": tag}, seq=len(results)), (tag, i)
            results.append(len(results))

    produce("before", 10)
    assert link.stats()["outbox"]["rows"]["event"] == 10
    card.fail()  # the kernel remounts the card read-only under the open database
    produce("during", 10)
    stats = link.stats()["outbox"]
    assert stats["storage"] == "read-only" and stats["held_rows"]["event"] >= 10, stats
    card.repair()
    wait_until(lambda: link.stats()["outbox"]["storage"] == "ok", RECOVERY_S, "storage ok")
    produce("after", 5)
    assert link.stats()["outbox"]["dropped"] == {}
    broker.start()
    deadline = time.monotonic() + 30
    while not set(events) <= {e.id for e in events_in(watcher)} or len(
        {json.loads(m.payload)["seq"] for m in watcher.seen if m.topic == RESULTS}
    ) < len(results):
        assert time.monotonic() < deadline, "not everything arrived"
        watcher.collect(quiet_s=0.2, timeout_s=1.0)
    arrived: dict[str, None] = {}
    for event in events_in(watcher):
        arrived.setdefault(event.id, None)
    assert [i for i in arrived if i in set(events)] == events  # every event, in order (after dedupe by id)
    seqs: dict[int, None] = {}
    for message in watcher.seen:
        if message.topic == RESULTS:
            seqs.setdefault(json.loads(message.payload)["seq"], None)
    assert list(seqs) == results  # every result, in order
    storage_events = [e for e in events_in(watcher) if e.type == "error" and "storage" in e.evidence]
    assert [e.severity for e in storage_events][:2] == ["critical", "info"]
    assert "read-only" in storage_events[0].message and "was read-only" in storage_events[1].message


def test_full_state_dir_at_start_recovers_by_itself_once_space_is_freed(
    mounts: Mounts,
    broker: Broker,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    peers: Callable[..., PahoPeer],
    tmp_path: Path,
) -> None:
    state = mounts.tmpfs(tmp_path / "state", 2 * 1024 * 1024)
    filler = fill(state)
    watcher = observers(broker, [f"{DEVICE}/#"])
    link = links(link_config(broker), state_dir=state, outbox=fast())
    assert link.wait_connected(10)
    operator = operator_of(peers, broker)
    alarm = wait_event(watcher, lambda e: e.severity == "critical")
    assert alarm.evidence["storage"] == "full" and "disk full" in alarm.message
    wait_status(watcher, lambda s: s["state"] == "online" and s.get("storage") == "full")
    held = Event(type="anomaly", message="held while the disk is full")
    assert link.publish_event(held)
    wait_event(watcher, lambda e: e.id == held.id)
    assert ping(operator).status == "ok"

    filler.unlink()
    wait_until(lambda: link.outbox is not None and link.outbox.storage().condition == "ok", RECOVERY_S, "ok")
    assert "was full" in wait_event(watcher, lambda e: e.type == "error" and e.severity == "info").message
    assert (state / "outbox.sqlite").is_file() and (state / "outbox.sqlite.ballast").is_file()
    wait_status(watcher, lambda s: s["state"] == "online" and "storage" not in s)
    assert ping(operator).status == "ok"


def test_disk_at_100_percent_evicts_results_and_telemetry_to_keep_events(
    mounts: Mounts,
    broker_factory: Callable[..., Broker],
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    tmp_path: Path,
) -> None:
    state = mounts.tmpfs(tmp_path / "state", 12 * 1024 * 1024)
    broker = broker_factory(BrokerOptions(persistence=True))
    watcher = observers(broker, [EVENTS], client_id="full-disk-observer")
    broker.stop()
    link = links(link_config(broker, results={"mode": "every", "max_per_s": None}), state_dir=state)
    assert link.outbox is not None
    for seq in range(200):
        assert link.publish_result({"pad": "r" * 2000}, seq=seq)
        assert link.publish_telemetry({"pad": "t" * 2000})
    link.outbox.maintain(force_checkpoint=True)  # what the link's upkeep does every 0.5 s
    filler = fill(state)  # 100 % full, with results and telemetry queued
    sent = [Event(type="anomaly", message=f"event {i}", evidence={"pad": "e" * 800}) for i in range(600)]
    refused = [event.id for event in sent if not link.publish_event(event)]
    stats = link.stats()["outbox"]
    print(
        f"at 100 % full: rows {stats['rows']}, held in memory {stats.get('held_rows')}, dropped {stats['dropped']}"
    )
    assert not refused, (len(refused), stats["dropped"], stats["rows"])
    assert stats["dropped"].get("event", {}) == {}, stats["dropped"]
    assert stats["dropped"]["telemetry"]["evicted"] > 0, stats["dropped"]
    assert stats["storage"] == "full" and stats["rows"]["result"] + stats["rows"]["telemetry"] > 0
    assert set(stats["dropped"]["telemetry"]) | set(stats["dropped"].get("result", {})) <= {"evicted"}

    broker.start()
    deadline = time.monotonic() + 30
    wanted = {event.id for event in sent}
    while not wanted <= {e.id for e in events_in(watcher)}:
        assert time.monotonic() < deadline, (
            f"{len(wanted - {e.id for e in events_in(watcher)})} events missing"
        )
        watcher.collect(quiet_s=0.2, timeout_s=1.0)
    arrived: dict[str, None] = {}
    for event in events_in(watcher):
        arrived.setdefault(event.id, None)
    assert [i for i in arrived if i in wanted] == [e.id for e in sent]
    assert any(e.severity == "critical" and e.evidence.get("storage") == "full" for e in events_in(watcher))
    filler.unlink()  # room again: the reserve is made again and the condition clears
    wait_until(lambda: link.stats()["outbox"]["storage"] == "ok", RECOVERY_S, "the reserve made again")
    assert (state / "outbox.sqlite.ballast").is_file()
    assert "was full" in wait_event(watcher, lambda e: e.type == "error" and e.severity == "info").message


@pytest.mark.parametrize("damage", ["not_a_database", "truncated"])
def test_corrupt_outbox_at_start_is_reported_with_the_rows_it_held(
    damage: str,
    broker: Broker,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "outbox.sqlite"
    if damage == "not_a_database":
        path.write_bytes(b"this is not a database" * 100)
    else:
        with Outbox(path) as outbox:
            for i in range(70):
                outbox.put(
                    "event",
                    EVENTS,
                    Event(type="anomaly", message=f"lost {i}", evidence={"pad": "x" * 400}).to_bytes(),
                )
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    watcher = observers(broker, [EVENTS])
    link = links(link_config(broker), state_dir=state)
    assert link.wait_connected(10)
    report = wait_event(watcher, lambda e: e.message.startswith("outbox was corrupt"))
    assert report.type == "error" and report.severity == "error"
    assert Path(report.evidence["moved_to"]).is_file() and report.evidence["path"] == str(path)
    if damage == "not_a_database":
        assert report.evidence["rows"] == "unknown" and "unknown number" in report.message
    else:
        rows = report.evidence["rows"]
        assert isinstance(rows, int) and 0 < rows <= 70, report.evidence
        assert report.evidence["counted"] == "from the pages that remain"
        assert f"about {rows} queued messages lost" in report.message
    assert link.outbox is not None and link.outbox.storage().condition == "ok"


def test_birth_numbers_grow_across_restarts_on_a_read_only_state_dir(
    mounts: Mounts,
    broker: Broker,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    BirthCounter(state).commit(3)
    mounts.read_only(state)
    watcher = observers(broker, [STATUS])
    births: list[int] = []
    outbox = fast(
        path=str(tmp_path / "elsewhere" / "outbox.sqlite")
    )  # only the birth counter faces the mount
    for _ in range(3):
        link = links(link_config(broker), state_dir=state, outbox=outbox)
        assert link.wait_connected(10)
        birth = link.state().birth
        assert birth is not None
        births.append(birth)
        wait_status(watcher, lambda s, b=birth: s["state"] == "online" and s["birth"] == b)  # type: ignore[misc]
        link.stop()
    assert 3 < births[0] < births[1] < births[2], births


def test_without_a_set_clock_birth_numbers_still_grow_across_restarts_within_a_boot(
    mounts: Mounts, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    BirthCounter(state).commit(3)
    mounts.read_only(state)
    uptime = [100.0]  # CLOCK_MONOTONIC goes on across restarts of the agent; the wall clock says 1970

    def restart() -> int:
        uptime[0] += 7.5
        counter = BirthCounter(state, clock=lambda: 12.0, monotonic=lambda: uptime[0])
        birth = counter.peek_next()
        with pytest.raises(OSError):
            counter.commit(birth)
        assert counter.peek_next() > birth  # a reconnect in the same run goes on from the number used
        return birth

    births = [restart() for _ in range(3)]
    assert 3 < births[0] < births[1] < births[2], births
