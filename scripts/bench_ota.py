#!/usr/bin/env python3
"""Part 1 of the OTA benchmark: the throughput of `edge-fleet serve` against a bare paho publisher, in one run.

    .venv/bin/python scripts/bench_ota.py [--mb 50] [--runs 3] [--window 100] [--default-rate]
        [--concurrent-mb 10] [--device-processes 2] [--part1-only]

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

Parts 2-4 (skip them with `--part1-only`), on the same broker, against a TUF repository made with the operator CLI
(`edge-fleet keys new`, `trust init`, `bundle pack`, `release publish`), device side the agent's own updater: a real
`Link` per device, `MqttRepoPort` over it and `ModelUpdater.check` (TUF metadata, release checks, block transfer,
TUF's hash check, manifest check, unpack, archive kept), in a subprocess sampling its own /proc/self/status VmHWM:
  2. a release of `--mb` MB (the digits-det bundle with its model file replaced by random bytes, packed with
     `agent.release.archive.pack` since `bundle pack`'s golden test cannot run on it) through `serve --rate 0` to the
     agent, interleaved with the bare publisher -> bare subscriber of the very same archive; MB/s of the download
     (the `downloading` to `verifying` events) and of the whole check, the ratio, the agent's peak RSS growth
     during the download (and over the whole first check, which imports the runtimes the probe looks for);
  3. one `serve --rate 0` and 20 agent devices (20 Link + ModelUpdater, own ids and state dirs, in
     `--device-processes` processes) fetching a `--concurrent-mb` MB release at once: completed, aggregate and
     slowest MB/s, serve's RSS growth;
  4. `scripts/heavy_model.py`'s INT8 classifier as v1 and v2 with only its last layer's weights changed (golden
     cases made again), both through `bundle pack`, published in turn; one device installs v1 then v2: bytes
     fetched for v2 as a share of its archive (the update record), and the share by block index alone.
Ends with one line per target, met or MISSED.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import hashlib
import json
import math
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

import numpy as np
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


# -- parts 2-4: the agent's own updater ---------------------------------------------------------------------------------

ROLES = ("root", "targets", "snapshot", "timestamp")
GROUP = "g1"
RSS_TARGET_MB = 30.0
RATIO_TARGET = 0.5
SHARE_TARGET = 0.30
CONCURRENT = 20


def fleet_cli(*args: str | Path) -> str:
    """`python -m agent.fleet ARGS` (the operator CLI), its stdout; exits the bench when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_FLEET_")}
    done = subprocess.run(
        [sys.executable, "-m", "agent.fleet", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"edge-fleet {' '.join(map(str, args[:2]))} failed: {done.stderr}")
    return done.stdout


def make_repository(folder: Path) -> tuple[Path, list[str]]:
    """`keys new` for the four roles and `trust init`: an empty signed repository; returns it and the --sign args."""
    keys, repo = folder / "keys", folder / "repo"
    for role in ROLES:
        fleet_cli("keys", "new", role, "--out", keys)
    init: list[str | Path] = ["trust", "init", "--repo", repo, "--root-threshold", "1"]
    for role in ROLES:
        init += [f"--{role}-key", keys / f"{role}.pub.json", "--sign", f"{role}={keys / f'{role}.key'}"]
    fleet_cli(*init)
    signing = [arg for role in ROLES[1:] for arg in ("--sign", f"{role}={keys / f'{role}.key'}")]
    return repo, signing


def publish_release(repo: Path, signing: list[str], archive: Path) -> None:
    fleet_cli("release", "publish", archive, "--repo", repo, "--fleet", FLEET, "--group", GROUP, *signing)


def set_model_file(bundle: Path, name: str, version: int, model: bytes | None = None) -> None:
    """Rewrites the bundle's manifest: name, version, and the model file's sha256/size (after writing `model`)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if model is not None:
        (bundle / manifest["model"]).write_bytes(model)
    data = (bundle / manifest["model"]).read_bytes()
    manifest["name"], manifest["version"] = name, version
    manifest["files"][manifest["model"]] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def big_archive(folder: Path, name: str, megabytes: float) -> Path:
    """A bundle whose model file is `megabytes` MB of random bytes (the digits-det bundle with its model replaced),
    packed with `agent.release.archive.pack`: `bundle pack` would refuse it (its golden self-test cannot run on
    random bytes), the device's install checks (manifest, listed files, sha256 and sizes) pass."""
    from agent.release.archive import pack

    bundle = folder / name
    shutil.copytree(ROOT / "models" / "digits-det-onnx", bundle)
    set_model_file(bundle, name, 1, os.urandom(int(megabytes * 1_000_000)))
    archive = folder / f"{name}-v1.tar"
    pack(bundle, archive)
    return archive


def last_layer_archives(folder: Path) -> tuple[Path, Path]:
    """`scripts/heavy_model.py`'s Pi-class INT8 classifier as v1, and v2 with only its last layer's weights (the
    classifier's quantized `fc` tensor) changed, golden cases made again for it; both through `bundle pack`."""
    import onnx
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT / "scripts"))
    import heavy_model

    from agent.inference.bundler import InputHints, init_bundle

    v1 = heavy_model.build(folder / "heavy-v1")
    model = onnx.load(str(v1 / "model.onnx"))
    fc = next(t for t in model.graph.initializer if t.name.startswith("fc") and len(t.dims) == 2)
    weights = numpy_helper.to_array(fc)
    changed = np.random.default_rng(7).integers(-127, 128, weights.shape).astype(weights.dtype)
    fc.CopyFrom(numpy_helper.from_array(changed, fc.name))
    model_v2 = folder / "heavy-v2.onnx"
    onnx.save(model, str(model_v2))
    rng = np.random.default_rng(1)  # the frames heavy_model.build takes its golden cases from
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    v2 = init_bundle(
        model_v2,
        folder / "heavy-v2",
        name="heavy-cls",
        version=2,
        task="classification",
        samples=frames,
        labels=[f"class{i}" for i in range(10)],
        hints=InputHints(color="RGB", mean=(127.5,), std=(127.5,), resize="stretch"),
        golden_count=1,
        description="benchmark-only Pi-class INT8 classifier (random weights)",
    )
    archives = []
    for bundle, version in ((v1, 1), (v2.path, 2)):
        archive = folder / f"heavy-cls-v{version}.tar"
        fleet_cli("bundle", "pack", bundle, "-o", archive)
        archives.append(archive)
    return archives[0], archives[1]


def agent_devices(port: int, spec: str) -> int:
    """The device side, in its own process: `count` devices (each a real `Link` to the broker, `MqttRepoPort` and
    `ModelUpdater` with its own id and state dir) checking the desired versions in turn, all devices at once.
    Prints `ready` with its peak RSS once connected, waits for a line on stdin, then one JSON line per check."""
    import numpy  # noqa: F401  (what the daemon has loaded anyway: the updater's probe imports the runtimes)

    from agent.link import DeviceIdentity, Link, LinkConfig
    from agent.ota.config import OtaConfig
    from agent.ota.mqtt_port import MqttRepoPort
    from agent.ota.updater import ModelUpdater
    from agent.release.formats import Desired

    plan = json.loads(spec)
    config = OtaConfig(enabled=True, trust_root=Path(plan["trust_root"]))
    devices = []
    for number in range(plan["count"]):
        device = f"{plan['prefix']}-{number}"
        state = Path(plan["state"]) / device
        state.mkdir(parents=True)
        link = Link(
            LinkConfig(enabled=True, host="127.0.0.1", port=port),
            DeviceIdentity(device=device, fleet=FLEET, group=GROUP),
            state,
        )
        repo_port = MqttRepoPort(link)
        link.start()
        devices.append((device, state, link, repo_port))
    for _device, _state, link, _port in devices:
        if not link.wait_connected(20):
            raise SystemExit("a device link did not connect")
    print(json.dumps({"ready": True, "hwm_kb": peak_rss_kb(os.getpid())}), flush=True)
    sys.stdin.readline()
    lock = threading.Lock()

    def one(device: str, state: Path, repo_port: MqttRepoPort) -> None:
        marks: dict[str, float] = {}

        peaks: dict[str, int] = {}

        def emit(event: Any) -> None:
            state = str(event.evidence.get("state"))
            if state not in marks:
                marks[state] = time.monotonic()
                peaks[state] = peak_rss_kb(os.getpid())

        updater = ModelUpdater(config, state, repo_port, emit, fleet=FLEET, group=GROUP, input_kind="image")
        for version in plan["versions"]:
            marks.clear()
            start = time.monotonic()
            try:
                outcome = updater.check(Desired(model=plan["model"], version=version))
            except Exception as problem:  # reported as a line: the parent says it did not complete
                with lock:
                    print(
                        json.dumps(
                            {
                                "device": device,
                                "version": version,
                                "status": "crashed",
                                "reason": repr(problem),
                                "hwm_kb": peak_rss_kb(os.getpid()),
                            }
                        ),
                        flush=True,
                    )
                return
            took = time.monotonic() - start
            record, transfer = outcome.record, outcome.transfer
            line = {
                "device": device,
                "version": version,
                "status": outcome.status.value,
                "reason": outcome.reason,
                "check_s": took,
                "download_s": marks.get("verifying", math.nan) - marks.get("downloading", math.nan),
                "archive": record.length if record is not None else None,
                "fetched": record.bytes_fetched if record is not None else None,
                "reused": record.bytes_reused if record is not None else None,
                "transfer": None if transfer is None else dataclasses.asdict(transfer),
                "hwm_kb": peak_rss_kb(os.getpid()),
                "download_growth_kb": peaks.get("verifying", 0) - peaks.get("downloading", 0),
            }
            with lock:
                print(json.dumps(line), flush=True)

    threads = [
        threading.Thread(target=one, args=(device, state, repo_port))
        for device, state, _link, repo_port in devices
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for _device, _state, link, _port in devices:
        link.stop()
    return 0


def run_agents(
    port: int, state: Path, trust_root: Path, model: str, versions: list[int], count: int, processes: int = 1
) -> tuple[list[dict[str, Any]], list[float], float]:
    """`count` agent devices over `processes` subprocesses, started together; their result lines, each
    process's RSS growth (MB, peak after the checks minus peak once connected) and the seconds all took."""
    per = [count // processes + (1 if n < count % processes else 0) for n in range(processes)]
    started = []
    for number, share in enumerate(per):
        spec = {
            "count": share,
            "prefix": f"{model}-{state.name}-{number}",
            "state": str(state),
            "trust_root": str(trust_root),
            "model": model,
            "versions": versions,
        }
        child = subprocess.Popen(
            [sys.executable, __file__, "--agent-devices", str(port), json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise SystemExit("the agent devices did not start")
        started.append((child, ready["hwm_kb"]))
    begin = time.monotonic()
    for child, _ in started:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    lines: list[dict[str, Any]] = []
    growth = []
    for child, baseline in started:
        assert child.stdout is not None
        mine = [json.loads(line) for line in child.stdout]
        child.wait(30)
        lines += mine
        growth.append((max(line["hwm_kb"] for line in mine) - baseline) / 1024 if mine else math.nan)
    return lines, growth, time.monotonic() - begin


def bare_store(folder: Path, archive: Path) -> BlockIndex:
    """Part 1's store layout for the bare publisher, holding `archive` (the release's very bytes)."""
    bundles = folder / "targets" / "bundles" / "bench"
    bundles.mkdir(parents=True)
    index = block_index(archive)
    shutil.copyfile(archive, bundles / f"{index.archive_sha256}.1.tar")
    (bundles / "index.1.blocks.json").write_text(index.model_dump_json(by_alias=True))
    return index


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def agent_parts(args: argparse.Namespace, folder: Path, port: int, part1_bare: list[float]) -> list[str]:
    """Parts 2-4 on the broker of part 1; returns the summary lines."""
    repo, signing = make_repository(folder / "fleet")
    trust_root = repo / "metadata" / "1.root.json"
    (folder / "bundles").mkdir()
    big = big_archive(folder / "bundles", "bench-big", args.mb)
    many = big_archive(folder / "bundles", "bench-many", args.concurrent_mb)
    heavy_v1, heavy_v2 = last_layer_archives(folder / "bundles")
    for archive in (big, many, heavy_v1, heavy_v2):
        publish_release(repo, signing, archive)
    summary = []

    # 2. the agent's download path against the bare path, interleaved
    index = bare_store(folder / "bare-release", big)
    size_mb = index.archive_length / 1e6
    print(
        f"\n## 2. agent download path: {size_mb:.1f} MB release ({len(index.blocks)} blocks), `serve --rate 0` -> "
        "Link + MqttRepoPort + ModelUpdater.check (TUF, transfer, verify, unpack) vs bare paho -> bare paho"
    )
    bare_rates: list[float] = []
    agent_rates: list[float] = []
    check_rates: list[float] = []
    agent_growth: list[float] = []
    check_growth: list[float] = []
    for run in range(args.runs):
        server = start_server("bare", port, folder / "bare-release", args.window)
        try:
            took = fetch(port, index, args.window, f"bare-release-{run}")
        finally:
            server.terminate()
            server.wait(10)
        bare_rates.append(size_mb / took)
        server = start_server("serve", port, repo, args.window)
        try:
            lines, growth, _ = run_agents(port, folder / f"agent-{run}", trust_root, "bench-big", [1], 1)
        finally:
            server.terminate()
            server.wait(10)
        line = lines[0] if lines else {"status": "no result"}
        if line["status"] != "installed":
            raise SystemExit(f"the agent did not install: {line}")
        agent_rates.append(size_mb / line["download_s"])
        check_rates.append(size_mb / line["check_s"])
        agent_growth.append(line["download_growth_kb"] / 1024)
        check_growth.append(growth[0])
        print(
            f"  run {run + 1} bare {bare_rates[-1]:7.1f} MB/s | agent download {agent_rates[-1]:7.1f} MB/s "
            f"({line['download_s']:.2f} s; whole check {line['check_s']:.2f} s), agent peak RSS +"
            f"{agent_growth[-1]:.1f} MB during the download (+{growth[0]:.1f} MB over the whole first check)",
            flush=True,
        )
    bare, agent = statistics.median(bare_rates), statistics.median(agent_rates)
    print(
        f"| path | MB/s (median of {args.runs}) |\n| --- | --- |\n| bare paho -> bare paho (release bytes) | "
        f"{bare:.1f} |\n| part 1's bare run (random bytes, same size) | {statistics.median(part1_bare):.1f} |\n"
        f"| serve -> agent updater, download | {agent:.1f} |\n| serve -> agent updater, whole check | "
        f"{statistics.median(check_rates):.1f} |"
    )
    print(f"ratio agent download / bare: {agent / bare:.2f} (target at least {RATIO_TARGET})")
    print(
        f"agent RSS growth during the download: {max(agent_growth):.1f} MB at most (target under {RSS_TARGET_MB:.0f}); "
        f"over the whole first check of the process (TUF, the probe's runtime imports, verify, unpack): "
        f"{max(check_growth):.1f} MB"
    )
    summary.append(
        f"agent download / bare paho: {agent / bare:.2f} (>= {RATIO_TARGET}) -> {verdict(agent / bare >= RATIO_TARGET)}"
    )
    summary.append(
        f"agent RSS growth: {max(agent_growth):.1f} MB (< {RSS_TARGET_MB:.0f}) -> "
        f"{verdict(max(agent_growth) < RSS_TARGET_MB)}"
    )

    # 3. one serve, 20 concurrent agent downloads
    processes = args.device_processes
    print(
        f"\n## 3. one `serve --rate 0`, {CONCURRENT} concurrent agent downloads of a {args.concurrent_mb:g} MB release "
        f"({CONCURRENT} Link + ModelUpdater, own ids and state dirs, in {processes} processes)"
    )
    server = start_server("serve", port, repo, args.window)
    try:
        before = peak_rss_kb(server.pid)
        lines, growth, took = run_agents(
            port, folder / "many", trust_root, "bench-many", [1], CONCURRENT, processes
        )
        serve_growth = (peak_rss_kb(server.pid) - before) / 1024
    finally:
        server.terminate()
        server.wait(10)
    done = [line for line in lines if line["status"] == "installed"]
    many_mb = (done[0]["archive"] / 1e6) if done else math.nan
    slowest = min((many_mb / line["download_s"] for line in done), default=math.nan)
    aggregate = many_mb * len(done) / max((line["check_s"] for line in done), default=math.nan)
    for line in lines:
        if line["status"] != "installed":
            print(f"  {line['device']}: {line['status']} {line['reason']}")
    print(
        f"completed {len(done)}/{CONCURRENT}; aggregate {aggregate:.1f} MB/s ({len(done)} x {many_mb:.1f} MB over the "
        f"slowest whole check), slowest download {slowest:.1f} MB/s; serve RSS growth {serve_growth:.1f} MB; "
        f"device processes' RSS growth {', '.join(f'{g:.1f}' for g in growth)} MB"
    )
    summary.append(
        f"one serve, {CONCURRENT} concurrent downloads: {len(done)}/{CONCURRENT} completed, aggregate "
        f"{aggregate:.1f} MB/s -> {verdict(len(done) == CONCURRENT)}"
    )

    # 4. a release that changes only the last layer
    indexes = [BlockIndex.model_validate_json(path.read_bytes()) for path in block_indexes(repo, "heavy-cls")]
    v1_index, v2_index = indexes
    known = {block.sha256 for block in v1_index.blocks}
    new_blocks = [block for block in v2_index.blocks if block.sha256 not in known]
    by_index = sum(block.size for block in new_blocks) / v2_index.archive_length
    server = start_server("serve", port, repo, args.window)
    try:
        lines, _growth, _ = run_agents(port, folder / "layer", trust_root, "heavy-cls", [1, 2], 1)
    finally:
        server.terminate()
        server.wait(10)
    first, second = lines
    print(
        f"\n## 4. a release changing only the last layer: heavy-cls (scripts/heavy_model.py, INT8) v1 "
        f"{v1_index.archive_length / 1e6:.2f} MB -> v2 {v2_index.archive_length / 1e6:.2f} MB, "
        f"{len(v2_index.blocks)} blocks"
    )
    print(f"  v1 install: {first['status']}, fetched {first['fetched']} bytes")
    if second["status"] != "installed":
        raise SystemExit(f"v2 did not install: {second}")
    share = second["fetched"] / second["archive"]
    print(
        f"  v2 install: {second['status']}, fetched {second['fetched']} bytes, reused {second['reused']} of "
        f"{second['archive']}: {share:.1%} of the archive fetched (target at most {SHARE_TARGET:.0%}); by block "
        f"index alone {len(new_blocks)} new blocks, {by_index:.1%}"
    )
    summary.append(
        f"last-layer release fetched: {share:.1%} (<= {SHARE_TARGET:.0%}) -> {verdict(share <= SHARE_TARGET)}"
    )
    return summary


def block_indexes(repo: Path, name: str) -> list[Path]:
    """The signed block indexes of `name`, by version (consistent-snapshot names: `{hash}.{file}`)."""
    found = sorted(repo.rglob(f"*{name}*blocks.json")) or sorted(
        path for path in (repo / "targets").rglob("*.blocks.json") if name in str(path)
    )
    return sorted(found, key=lambda path: int(path.name.split(".")[-3]))


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
    parser.add_argument(
        "--concurrent-mb",
        type=float,
        default=10.0,
        help="part 3: the release each of the 20 devices fetches, MB (10)",
    )
    parser.add_argument(
        "--device-processes", type=int, default=2, help="part 3: processes the 20 agent devices run in (2)"
    )
    parser.add_argument("--part1-only", action="store_true", help="skip parts 2-4 (the agent's updater)")
    parser.add_argument("--bare-publisher", nargs=2, metavar=("PORT", "STORE"), help=argparse.SUPPRESS)
    parser.add_argument("--agent-devices", nargs=2, metavar=("PORT", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_publisher:
        return bare_publisher(int(args.bare_publisher[0]), Path(args.bare_publisher[1]))
    if args.agent_devices:
        return agent_devices(int(args.agent_devices[0]), args.agent_devices[1])

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
            summary = [] if args.part1_only else agent_parts(args, folder, port, rates["bare"])
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
    if summary:
        print("\n## summary")
        for line in summary:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
