"""The durable outbox on its own: order, acks, byte and age bounds, a full disk, SIGKILL, speed, threads, and rows
held in memory while the state directory cannot be written."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent.link import Outbox, OutboxConfig, OutboxError

pytest.register_assert_rewrite("mounts")
from mounts import Mounts  # noqa: E402

pytest_plugins = ["mounts"]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def drain_all(outbox: Outbox) -> list[tuple[str, bytes]]:
    rows = outbox.pending(10_000)
    outbox.ack(row.id for row in rows)
    return [(row.kind, row.payload) for row in rows]


def test_events_leave_before_results_before_telemetry_each_in_insertion_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        for i in range(3):
            outbox.put("telemetry", "t", b"t%d" % i)
            outbox.put("result", "r", b"r%d" % i)
            outbox.put("event", "e", b"e%d" % i)
        assert [p for _, p in drain_all(outbox)] == [
            b"e0",
            b"e1",
            b"e2",
            b"r0",
            b"r1",
            b"r2",
            b"t0",
            b"t1",
            b"t2",
        ]


def test_pending_respects_the_window_and_per_class_cursors(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        for i in range(5):
            outbox.put("event", "e", b"e%d" % i)
        outbox.put("telemetry", "t", b"t0")
        first = outbox.pending(2)
        assert [r.payload for r in first] == [b"e0", b"e1"]
        after = {0: first[-1].id}
        assert [r.payload for r in outbox.pending(10, after)] == [b"e2", b"e3", b"e4", b"t0"]


def test_rows_stay_until_acknowledged_even_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as outbox:
        for i in range(4):
            outbox.put("event", "e", b"e%d" % i)
        rows = outbox.pending(10)
        assert outbox.ack([rows[0].id, rows[1].id]) == 2
        assert outbox.ack([rows[0].id]) == 0  # a second ack is harmless
    with Outbox(path) as reopened:
        assert [r.payload for r in reopened.pending(10)] == [b"e2", b"e3"]
        assert reopened.stats().rows["event"] == 2


def test_byte_bound_drops_telemetry_before_results_before_events(tmp_path: Path) -> None:
    config = OutboxConfig(max_bytes=10_000)
    with Outbox(tmp_path / "o.sqlite", config) as outbox:
        payload = b"x" * 999  # 1000 bytes with the 1-byte topic
        for kind in ("telemetry", "telemetry", "telemetry", "result", "result", "result", "event", "event"):
            assert outbox.put(kind, "t", payload)  # type: ignore[arg-type]
        assert outbox.stats().total_bytes == 8000
        for _ in range(4):  # 4 more events: 2 fit, then 2 telemetry rows are evicted, oldest first
            assert outbox.put("event", "t", payload)
        stats = outbox.stats()
        assert stats.rows == {"event": 6, "result": 3, "telemetry": 1}
        assert stats.dropped["telemetry"] == {"evicted": 2}
        for _ in range(3):  # telemetry gone, then results go
            assert outbox.put("event", "t", payload)
        stats = outbox.stats()
        assert stats.rows == {"event": 9, "result": 1, "telemetry": 0}
        assert stats.dropped["result"] == {"evicted": 2}
        assert stats.dropped["telemetry"] == {"evicted": 3}
        assert stats.total_bytes <= config.max_bytes
        assert outbox.stats().dropped["event"] == {}


def test_lower_class_never_evicts_a_higher_one(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", OutboxConfig(max_bytes=5000)) as outbox:
        for _ in range(5):
            assert outbox.put("event", "t", b"x" * 999)
        assert not outbox.put("telemetry", "t", b"y" * 100)
        assert not outbox.put("result", "t", b"y" * 100)
        stats = outbox.stats()
        assert stats.rows["event"] == 5
        assert stats.dropped["telemetry"] == {"full": 1}
        assert stats.dropped["result"] == {"full": 1}


def test_events_evict_their_own_oldest_when_only_events_remain(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", OutboxConfig(max_bytes=4096)) as outbox:
        for i in range(10):
            assert outbox.put("event", "t", b"%04d" % i + b"x" * 996)
        assert [r.payload[:4] for r in outbox.pending(10)] == [b"0006", b"0007", b"0008", b"0009"]
        assert outbox.stats().dropped["event"] == {"evicted": 6}


def test_a_row_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", OutboxConfig(max_bytes=4096)) as outbox:
        assert not outbox.put("event", "t", b"x" * 5000)
        assert outbox.stats().dropped["event"] == {"too_large": 1}


def test_expired_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path / "o.sqlite", OutboxConfig(max_age_s=60), clock=clock) as outbox:
        outbox.put("event", "e", b"old")
        outbox.put("telemetry", "t", b"old")
        clock.now += 50
        outbox.put("event", "e", b"new")
        clock.now += 20
        outbox.maintain()
        assert [r.payload for r in outbox.pending(10)] == [b"new"]
        assert outbox.stats().dropped == {
            "event": {"expired": 1},
            "result": {},
            "telemetry": {"expired": 1},
        }


def test_full_disk_is_counted_and_never_raises(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite", OutboxConfig(memory_max_bytes=200_000)) as outbox:
        for _ in range(20):
            outbox.put("telemetry", "t", b"t" * 3000)
        assert outbox._store is not None
        database = outbox._store.db
        pages = database.execute("PRAGMA page_count").fetchone()[0]
        # The database may not grow past its current size: a full disk, as SQLite sees it (on this connection).
        database.execute(f"PRAGMA max_page_count={pages}")
        # Events still get in: telemetry rows are evicted and their pages reused.
        for _ in range(10):
            assert outbox.put("event", "e", b"e" * 3000)
        stats = outbox.stats()
        assert stats.rows["event"] == 10
        assert stats.dropped["telemetry"].get("evicted", 0) >= 10
        assert stats.dropped["event"] == {}
        # A row that cannot fit even if everything were evicted is held in memory (never raises; what was stored
        # stays); one that does not fit in memory either is dropped and counted.
        assert outbox.put("event", "e", b"E" * 150_000) is True
        assert outbox.put("event", "e", b"E" * 300_000) is False
        stats = outbox.stats()
        assert stats.dropped["event"] == {"disk_full": 1}
        assert stats.disk_full is True and stats.storage == "full"
        assert stats.rows["event"] == 11 and stats.held_rows["event"] == 1
        # Delivering frees space; the outbox recovers by itself (the upkeep retries) and stores on disk again.
        outbox.ack(r.id for r in outbox.pending(1000))
        assert outbox.retry_storage()
        assert outbox.put("event", "e", b"after")
        stats = outbox.stats()
        assert stats.disk_full is False and stats.storage == "ok"
        assert stats.held_rows["event"] == 0 and [r.payload for r in outbox.pending(10)] == [b"after"]


def test_disk_full_from_the_os_is_recognised() -> None:
    import errno
    import sqlite3

    from agent.link.sqlitedb import is_disk_full as _is_disk_full

    assert _is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert _is_disk_full(sqlite3.OperationalError("database or disk is full"))
    assert not _is_disk_full(sqlite3.OperationalError("database is locked"))


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox, pytest.raises(OutboxError):
        outbox.put("gossip", "t", b"x")  # type: ignore[arg-type]


def test_corrupt_database_is_moved_aside_and_the_outbox_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with Outbox(path) as outbox:
        assert outbox.put("event", "e", b"x")
    assert list(tmp_path.glob("o.sqlite.corrupt-*"))


def test_puts_acknowledged_before_sigkill_survive(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from agent.link import Outbox
        outbox = Outbox(Path({str(path)!r}))
        i = 0
        while True:
            if outbox.put("event", "e", b"%d" % i):
                print(i, flush=True)
            i += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    printed = [int(process.stdout.readline()) for _ in range(2000)]
    process.kill()
    process.wait(10)
    with Outbox(path) as outbox:
        stored = {int(row.payload) for row in outbox.pending(1_000_000)}
    assert set(printed) <= stored


def test_put_is_fast_enough_for_the_inference_side(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as outbox:
        payload = b'{"schema":1,"type":"anomaly","message":"' + b"x" * 150 + b'"}'
        outbox.put("event", "e", payload)
        n = 2000
        started = time.perf_counter()
        for _ in range(n):
            outbox.put("event", "edge/f/devices/d/events", payload)
        per_put_us = (time.perf_counter() - started) / n * 1e6
        print(f"outbox put: {per_put_us:.1f} µs per 200-byte event (sync normal)")
        assert per_put_us < 2000  # loose: a shared CI machine; typically 20-60 µs


def test_concurrent_puts_and_drains_lose_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    delivered: list[bytes] = []
    done = threading.Event()

    def drain() -> None:
        cursor: dict[int, int] = {}
        while not (done.is_set() and outbox.stats().total_rows == 0):
            rows = outbox.pending(16, cursor)
            for row in rows:
                cursor[0] = row.id
            delivered.extend(row.payload for row in rows)
            outbox.ack(row.id for row in rows)
            outbox.maintain()

    thread = threading.Thread(target=drain)
    thread.start()
    for i in range(3000):
        assert outbox.put("event", "e", b"%d" % i)
    done.set()
    thread.join(30)
    outbox.close()
    assert delivered == [b"%d" % i for i in range(3000)]


# -- a state directory that cannot be written (real mounts: tests/mounts.py) -----------------------------------------


def test_while_the_database_cannot_be_written_memory_keeps_events_first(
    mounts: Mounts, tmp_path: Path
) -> None:
    state = mounts.read_only(tmp_path / "state")
    with Outbox(state / "o.sqlite", OutboxConfig(memory_max_bytes=10_000)) as outbox:
        assert outbox.storage().condition == "read-only"
        payload = b"x" * 999  # 1000 bytes with the 1-byte topic
        for kind in ("telemetry", "telemetry", "telemetry", "result", "result", "result", "event", "event"):
            assert outbox.put(kind, "t", payload)  # type: ignore[arg-type]
        for _ in range(4):  # 2 more events fit, then the 2 oldest telemetry rows are evicted
            assert outbox.put("event", "t", payload)
        stats = outbox.stats()
        assert stats.held_rows == stats.rows == {"event": 6, "result": 3, "telemetry": 1}
        assert stats.dropped["telemetry"] == {"evicted": 2} and stats.held_bytes <= 10_000
        assert [row.kind for row in outbox.pending(100)] == ["event"] * 6 + ["result"] * 3 + ["telemetry"]
        for _ in range(4):  # telemetry gone, then results go; never an event
            assert outbox.put("event", "t", payload)
        assert outbox.stats().held_rows == {"event": 10, "result": 0, "telemetry": 0}
        assert not outbox.put("result", "t", payload)  # a lower class never evicts a higher one
        assert outbox.stats().dropped["result"] == {"evicted": 3, "error": 1}
        assert outbox.stats().dropped["event"] == {}


def test_rows_in_flight_from_memory_are_neither_skipped_nor_repeated_once_written_to_the_database(
    mounts: Mounts, tmp_path: Path
) -> None:
    state = mounts.read_only(tmp_path / "state")
    config = OutboxConfig.model_validate({"retry": {"initial_s": 0.01, "max_s": 0.01}})
    with Outbox(state / "o.sqlite", config) as outbox:
        for i in range(6):
            assert outbox.put("event", "e", b"e%d" % i)
        assert outbox.put("telemetry", "t", b"t0")
        first = outbox.claim(2)  # e0 and e1 go out from memory
        assert [row.payload for row in first] == [b"e0", b"e1"] and all(row.id < 0 for row in first)
        mounts.writable(state)
        assert outbox.retry_storage()  # what the upkeep does: memory written to the database, in order
        assert outbox.storage().condition == "ok" and outbox.stats().held_bytes == 0
        assert outbox.put("event", "e", b"e6")
        following = outbox.claim(3)
        assert [row.payload for row in following] == [
            b"e2",
            b"e3",
            b"e4",
        ]  # e0 and e1 not again, none skipped
        assert outbox.ack([first[0].id]) == 1  # the ack of a row sent from memory finds it in the database
        outbox.unclaim(following[1:])  # paho did not take e3 and e4: they go next
        assert [row.payload for row in outbox.claim(10)] == [b"e3", b"e4", b"e5", b"e6", b"t0"]
        outbox.release()  # the connection is lost: everything not acknowledged goes again, in order
        assert [row.payload for row in outbox.claim(10)] == [b"e1", b"e2", b"e3", b"e4", b"e5", b"e6", b"t0"]
    with Outbox(state / "o.sqlite") as reopened:  # and it is on disk
        assert [row.payload for row in reopened.pending(10)] == [
            b"e1",
            b"e2",
            b"e3",
            b"e4",
            b"e5",
            b"e6",
            b"t0",
        ]
