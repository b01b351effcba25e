#!/usr/bin/env python3
"""Events per second through the agent's outbox and link, against `mosquitto_pub` on the same broker, in one run.

    .venv/bin/python scripts/bench_link.py [--events 5000] [--runs 3] [--inflight 16]

Starts its own Mosquitto on a free 127.0.0.1 port (max_queued_messages 0, so the subscriber never drops), then for
each run measures, from the first publish to the last message received by an independent `mosquitto_sub -C N`:
  agent live:     N x Link.publish_event(Event(...)): pydantic model, JSON, SQLite outbox put; the link thread
                  drains the outbox meanwhile, paced by PUBACKs (window --inflight), deleting each row on its ack;
  agent backlog:  N events already in the outbox when the link starts (the link after an outage);
  mosquitto_pub:  the same N event payloads as lines on stdin of `mosquitto_pub -l -q 1` (C, no disk, no model).
Also reports how fast events go into the outbox alone (puts/s, what the inference side pays). Prints the medians
and the ratio agent / mosquitto_pub.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.link import DeviceIdentity, Event, Link, LinkConfig, OutboxConfig

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free port, waiting until it listens."""
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
    )
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("mosquitto did not start")


def subscriber(port: int, topic: str, count: int) -> subprocess.Popen[bytes]:
    """`mosquitto_sub` that exits after `count` messages; returns once it is subscribed."""
    process = subprocess.Popen(
        [
            MOSQUITTO_SUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            str(count),
            "-V",
            "mqttv5",
        ],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return process


def bench_agent(port: int, state_dir: Path, events: int, inflight: int) -> tuple[float, float]:
    """(events/s end to end, puts/s into the outbox) for the agent."""
    config = LinkConfig(enabled=True, host="127.0.0.1", port=port, max_inflight=inflight)
    link = Link(config, DeviceIdentity(device="bench", fleet="bench"), state_dir, outbox=OutboxConfig())
    link.start()
    if not link.wait_connected(10):
        raise SystemExit(f"link did not connect: {link.state()}")
    sub = subscriber(port, link.topics.events, events)
    started = time.perf_counter()
    for seq in range(events):
        link.publish_event(
            Event(type="anomaly", severity="info", message=f"bench {seq}", evidence={"seq": seq})
        )
    put_s = time.perf_counter() - started
    sub.wait(300)
    elapsed = time.perf_counter() - started
    link.stop()
    return events / elapsed, events / put_s


def bench_backlog(port: int, state_dir: Path, events: int, inflight: int) -> float:
    """Events/s for draining a backlog of `events` already in the outbox (the link after an outage)."""
    config = LinkConfig(enabled=True, host="127.0.0.1", port=port, max_inflight=inflight)
    link = Link(config, DeviceIdentity(device="backlog", fleet="bench"), state_dir, outbox=OutboxConfig())
    for seq in range(events):
        link.publish_event(
            Event(type="anomaly", severity="info", message=f"bench {seq}", evidence={"seq": seq})
        )
    sub = subscriber(port, link.topics.events, events)
    started = time.perf_counter()
    link.start()
    sub.wait(300)
    elapsed = time.perf_counter() - started
    link.stop()
    return events / elapsed


def bench_mosquitto_pub(port: int, events: int) -> float:
    """Events/s end to end for `mosquitto_pub -l -q 1` sending the same payloads."""
    topic = "edge/bench/devices/pub/events"
    lines = "".join(
        json.dumps(
            Event(type="anomaly", message=f"bench {seq}", evidence={"seq": seq}).model_dump(by_alias=True)
        )
        + "\n"
        for seq in range(events)
    ).encode()
    sub = subscriber(port, topic, events)
    started = time.perf_counter()
    subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-l", "-V", "mqttv5"],
        input=lines,
        check=True,
    )
    sub.wait(300)
    return events / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per run (default 5000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default 3; medians are reported)")
    parser.add_argument("--inflight", type=int, default=16, help="link.max_inflight (default 16)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        try:
            agent_rates, put_rates, backlog_rates, pub_rates = [], [], [], []
            for run in range(args.runs):
                rate, put_rate = bench_agent(port, folder / f"state{run}", args.events, args.inflight)
                agent_rates.append(rate)
                put_rates.append(put_rate)
                backlog_rates.append(
                    bench_backlog(port, folder / f"backlog{run}", args.events, args.inflight)
                )
                pub_rates.append(bench_mosquitto_pub(port, args.events))
        finally:
            broker.terminate()
            broker.wait(10)
    agent, backlog, pub, put = (
        statistics.median(r) for r in (agent_rates, backlog_rates, pub_rates, put_rates)
    )

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{r:.0f}" for r in rates)

    print(f"events per run: {args.events}, runs: {args.runs}, link.max_inflight: {args.inflight}")
    print(f"agent, live (put + send) : {agent:8.0f} events/s end to end  (runs: {runs(agent_rates)})")
    print(f"agent, backlog drain     : {backlog:8.0f} events/s end to end  (runs: {runs(backlog_rates)})")
    print(f"mosquitto_pub -l -q 1    : {pub:8.0f} events/s end to end  (runs: {runs(pub_rates)})")
    print(f"publish_event while live : {put:8.0f} calls/s (what the caller pays, link draining meanwhile)")
    print(
        f"ratio agent live / mosquitto_pub: {agent / pub:.2f}; backlog / mosquitto_pub: {backlog / pub:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
