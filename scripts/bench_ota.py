#!/usr/bin/env python3
"""Part 1 of the OTA benchmark: the throughput of `edge-fleet serve` against a bare paho publisher, in one run.

    .venv/bin/python scripts/bench_ota.py [--mb 50] [--runs 3] [--window 100] [--default-rate]

Starts its own Mosquitto (default settings: max_queued_messages 1000, Receive Maximum 20) on a free 127.0.0.1 port,
packs `--mb` MB of random bytes as an archive in a release store, cuts it into FastCDC blocks (`block_index`), then,
in interleaved runs, has the same paced device fetch every block:
  device:   a raw paho MQTT 5 subscriber keeping `--window` blocks asked and not yet received (the receiver paces:
            it asks for the next block as each one arrives), checking each block's SHA-256;
  serve:    `edge-fleet serve --rate 0` (no rate limit) as a subprocess, reading blocks from disk per request;
  bare:     a bare paho publisher (a subprocess too) holding every block in memory, answering the same requests
            with the same QoS 1 publishes and user properties, no parsing beyond `json.loads`, no checks;
  with `--default-rate`, also serve at its default 100 publishes/s (AWS IoT Core's per-connection limit).
Prints MB/s of each (medians), the ratio serve / bare, and the server's RSS growth (peak during the run minus peak
at start).
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.release.chunking import block_index
from agent.release.formats import MAX_BLOCKS_PER_REQUEST, BlockIndex

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
FLEET = "bench"
REQUESTS = f"edge/{FLEET}/repo/get"
ANSWERS = f"edge/{FLEET}/devices/dev-1/blocks"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto with its default limits on a free port, waiting until it listens."""
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_listening(port)
    return process, port


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def make_store(folder: Path, megabytes: float) -> BlockIndex:
    """A release store holding one archive of random bytes and its block index."""
    bundles = folder / "targets" / "bundles" / "bench"
    bundles.mkdir(parents=True)
    (folder / "metadata").mkdir()
    archive = folder / "bench.tar"
    with archive.open("wb") as out:
        left = int(megabytes * 1_000_000)
        while left > 0:
            out.write(os.urandom(min(left, 1 << 20)))
            left -= 1 << 20
    index = block_index(archive)
    archive.replace(bundles / f"{index.archive_sha256}.1.tar")
    (bundles / "index.1.blocks.json").write_text(index.model_dump_json(by_alias=True))
    return index


BROKER_RECEIVE_MAX = 20
"""Mosquitto's default max_inflight_messages: `serve` reads it from the CONNACK; paho ignores it, so it is set here."""


def mqtt_client(name: str, port: int) -> Client:
    client = Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(BROKER_RECEIVE_MAX)
    client.connect("127.0.0.1", port)
    return client


# -- the two servers ----------------------------------------------------------------------------------------------------


def bare_publisher(port: int, store: Path) -> int:
    """The baseline: every block in memory, answered on request with QoS 1 publishes (runs until killed)."""
    index = BlockIndex.model_validate_json(next(store.rglob("*.blocks.json")).read_bytes())
    data = next(store.rglob("*.tar")).read_bytes()
    blocks = [data[b.offset : b.offset + b.size] for b in index.blocks]
    client = mqtt_client("bare-publisher", port)

    def on_message(_c: Client, _u: Any, message: MQTTMessage) -> None:
        request = json.loads(message.payload)
        for number in request["blocks"]:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
            properties.UserProperty = [("status", "200"), ("block", str(number))]
            client.publish(message.properties.ResponseTopic, blocks[number], qos=1, properties=properties)  # type: ignore[union-attr]

    client.on_message = on_message
    client.subscribe(f"$share/repo/{REQUESTS}", qos=1)
    print("serving", flush=True)
    client.loop_forever()
    return 0


def start_server(kind: str, port: int, store: Path, window: int) -> subprocess.Popen[str]:
    """`serve` (rate 0 or the default) or the bare publisher as a subprocess; returns once it subscribed."""
    if kind == "bare":
        command = [sys.executable, __file__, "--bare-publisher", str(port), str(store)]
    else:
        command = [
            sys.executable,
            "-m",
            "agent.fleet.cli",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
        ]
        command += ["--window", str(window), "--host", "127.0.0.1"]
        command += ["--rate", "0"] if kind == "serve" else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_FLEET_")}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "serving" in line:
            threading.Thread(target=lambda: process.stdout and process.stdout.read(), daemon=True).start()
            return process
    raise SystemExit(f"{kind} did not start")


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


# -- the device ---------------------------------------------------------------------------------------------------------


def fetch(port: int, index: BlockIndex, window: int, run: str) -> float:
    """Every block with `window` asked and not received; checks each hash; the seconds from first ask to last block."""
    inbox: queue.Queue[MQTTMessage] = queue.Queue()
    client = mqtt_client(f"dev-1-{run}", port)
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, message: inbox.put(message)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe(f"{ANSWERS}/#", qos=1)
    client.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("the device could not subscribe")

    def ask(numbers: list[int]) -> None:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = f"{ANSWERS}/{run}"
        properties.CorrelationData = run.encode()
        request = {"schema": 1, "kind": "blocks", "digest": index.archive_sha256, "blocks": numbers}
        client.publish(REQUESTS, json.dumps(request), qos=1, properties=properties)

    count = len(index.blocks)
    start = time.monotonic()
    first = list(range(min(window, count)))
    for at in range(0, len(first), MAX_BLOCKS_PER_REQUEST):
        ask(first[at : at + MAX_BLOCKS_PER_REQUEST])
    following = iter(range(len(first), count))
    seen = 0
    digest = hashlib.sha256()
    received: dict[int, bytes] = {}
    while seen < count:
        message = inbox.get(timeout=60)
        user = dict(message.properties.UserProperty)  # type: ignore[union-attr]
        number = int(user["block"])
        if hashlib.sha256(message.payload).hexdigest() != index.blocks[number].sha256:
            raise SystemExit(f"block {number} is wrong")
        received[number] = message.payload
        seen += 1
        following_block = next(following, None)
        if following_block is not None:
            ask([following_block])
    took = time.monotonic() - start
    for number in range(count):
        digest.update(received.pop(number))
    if digest.hexdigest() != index.archive_sha256:
        raise SystemExit("the reassembled archive differs")
    client.loop_stop()
    client.disconnect()
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=50.0, help="archive size, MB (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument(
        "--window", type=int, default=MAX_BLOCKS_PER_REQUEST, help="blocks asked at once (100)"
    )
    parser.add_argument(
        "--default-rate", action="store_true", help="also serve at its default 100 publishes/s"
    )
    parser.add_argument("--bare-publisher", nargs=2, metavar=("PORT", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_publisher:
        return bare_publisher(int(args.bare_publisher[0]), Path(args.bare_publisher[1]))

    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder)
        try:
            index = make_store(folder / "store", args.mb)
            size_mb = index.archive_length / 1e6
            sizes = [b.size for b in index.blocks]
            print(
                f"archive {size_mb:.1f} MB in {len(sizes)} blocks (FastCDC, mean {statistics.mean(sizes) / 1024:.0f} "
                f"KiB, max {max(sizes) / 1024:.0f} KiB); device window {args.window} blocks; Mosquitto defaults"
            )
            kinds = ["bare", "serve"] + (["serve-default-rate"] if args.default_rate else [])
            rates: dict[str, list[float]] = {kind: [] for kind in kinds}
            growth: list[float] = []
            for run in range(args.runs):
                for kind in kinds:
                    server = start_server(kind, port, folder / "store", args.window)
                    try:
                        before = peak_rss_kb(server.pid)
                        took = fetch(port, index, args.window, f"{kind}-{run}")
                        if kind == "serve":
                            growth.append((peak_rss_kb(server.pid) - before) / 1024)
                    finally:
                        server.terminate()
                        server.wait(10)
                    rates[kind].append(size_mb / took)
                    print(f"  run {run + 1} {kind:<18} {size_mb / took:7.1f} MB/s ({took:.2f} s)", flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    bare = statistics.median(rates["bare"])
    print(f"\n| path | MB/s (median of {args.runs}) | ratio to bare paho |\n| --- | --- | --- |")
    for kind in kinds:
        median = statistics.median(rates[kind])
        runs = ", ".join(f"{r:.1f}" for r in rates[kind])
        print(f"| {kind} | {median:.1f} (runs {runs}) | {median / bare:.2f} |")
    print(f"\nserve RSS growth during a download: {max(growth):.1f} MB at most (peak minus peak at start)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
