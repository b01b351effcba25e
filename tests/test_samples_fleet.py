"""`edge-fleet samples list|pull` and `edge-fleet retrain-watch` as real subprocesses against a real Mosquitto: a real
device link answering with the real sample commands over a real store, and the daemon itself capturing hard examples
from its loop. Pulls verify every sample by hash, resume, leave a damaged sample on the device, and confirm only what
is safely written."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from daemon_support import DaemonDir, start_daemon, stop, wait_status

from agent.config import CaptureConfig
from agent.daemon.capture import HardExamples
from agent.daemon.sample_commands import SampleCommands
from agent.inference.results import ClassificationResult, Label
from agent.link import Link, SampleChunkArgs, SampleMeta, parse
from agent.pipeline import ResultRecord, StageTimes
from agent.pipeline.samples import SampleStore
from agent.sources.base import Item

pytest.register_assert_rewrite("broker")
from broker import FLEET, ROOT, Broker, kill_process, link_config, needs_mosquitto  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

TIMES = StageTimes(0.0, 0.001, 0.01, 0.001)


def names(folder: Path) -> list[str]:
    return [path.name for path in Path(folder).iterdir()]


def fleet_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("EDGE_FLEET_")}


def on(broker: Broker, *args: str, fleet: str = FLEET) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--fleet", fleet, *args]


def run_fleet(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.fleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=fleet_env(),
    )


def fill_store(store: SampleStore, count: int) -> list[str]:
    """Keeps `count` samples the way the monitors do: a JPEG frame, and windows large enough for several chunks."""
    hard = HardExamples(CaptureConfig(enabled=True, min_interval_s=0), store)
    rng = np.random.default_rng(5)
    ids = []
    for seq in range(count):
        if seq % 2:
            data, kind = rng.normal(size=(20_000, 3)).astype(np.float32), "window"  # 240 KB: 4 chunks
        else:
            data, kind = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), "frame"
        result = ClassificationResult((Label(1, "one", 0.2),))
        record = ResultRecord(Item(data, seq, 1_765_000_000.0, 0.0, kind), result, "digits", 3, TIMES, 0.0)  # type: ignore[arg-type]
        job = hard.observe(record)
        assert job is not None
        sample_id = hard.save(job)
        assert sample_id is not None
        ids.append(sample_id)
    return ids


@pytest.fixture
def device(broker: Broker, links: Callable[..., Link], tmp_path: Path) -> Iterator[tuple[Link, SampleStore]]:
    """dev-a: a real link whose router answers the real sample commands over a real store."""
    store = SampleStore(tmp_path / "dev-a-samples", 50_000_000)
    link = links(link_config(broker), start=False)
    SampleCommands(store).register(link.router)
    link.start()
    assert link.wait_connected(10), link.state()
    yield link, store


def test_pull_fetches_every_sample_in_chunks_verifies_writes_and_then_confirms(
    broker: Broker, device: tuple[Link, SampleStore], tmp_path: Path
) -> None:
    _, store = device
    ids = fill_store(store, 3)
    sizes = {sample.id: sample.size for sample in store.samples()}
    listed = run_fleet(*on(broker, "samples", "list", "dev-a", "--json"))
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    assert [m["id"] for m in listing["samples"]] == ids and listing["count"] == 3

    out = tmp_path / "pulled"
    result = run_fleet(*on(broker, "samples", "pull", "dev-a", "--out", str(out), "--json"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pulled"] == ids and report["confirmed"] == ids and report["failed"] == {}
    for sample_id in ids:
        meta = parse(SampleMeta, (out / "dev-a" / f"{sample_id}.json").read_bytes())
        data = (out / "dev-a" / meta.file_name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta.sha256 and len(data) == sizes[sample_id]
        if meta.format == "jpeg":
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)
        else:
            assert np.load(io.BytesIO(data), allow_pickle=False).shape == (20_000, 3)
    assert max(sizes.values()) > 3 * 65_536  # the windows really went in several chunks
    assert store.samples() == [] and store.status()["confirmed"] == 3  # deleted only now, on the device

    again = run_fleet(*on(broker, "samples", "pull", "dev-a", "--out", str(out)))
    assert again.returncode == 0 and "0 pulled" in again.stdout, again.stderr


def test_a_rerun_after_a_crash_before_the_confirmation_skips_what_is_here_and_confirms_it(
    broker: Broker, device: tuple[Link, SampleStore], tmp_path: Path
) -> None:
    _, store = device
    ids = fill_store(store, 2)
    out = tmp_path / "pulled" / "dev-a"
    out.mkdir(parents=True)
    first = store.samples()[0]  # as a pull killed between its writes and its confirmation leaves it
    meta = parse(SampleMeta, store.read_meta(first))
    (out / meta.file_name).write_bytes((store.folder / first.data_name).read_bytes())
    (out / f"{meta.id}.json").write_bytes(meta.to_bytes() + b"\n")
    result = run_fleet(*on(broker, "samples", "pull", "dev-a", "--out", str(tmp_path / "pulled"), "--json"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["present"] == [ids[0]] and report["pulled"] == [ids[1]] and report["confirmed"] == ids
    assert store.samples() == []


def test_a_sample_damaged_on_the_device_is_refetched_once_reported_and_kept_there(
    broker: Broker, device: tuple[Link, SampleStore], tmp_path: Path
) -> None:
    _, store = device
    ids = fill_store(store, 2)
    damaged = store.samples()[1]
    path = store.folder / damaged.data_name
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a bit flipped on the card after it was kept
    path.write_bytes(bytes(raw))
    out = tmp_path / "pulled"
    result = run_fleet(*on(broker, "samples", "pull", "dev-a", "--out", str(out)))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "fetching it again" in result.stderr  # one refetch of the whole sample
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-fleet: error: 1 sample(s) failed their hash") and ids[1] in last
    assert "1 pulled" in result.stdout and "1 confirmed" in result.stdout
    assert [s.id for s in store.samples()] == [ids[1]]  # not confirmed: still on the device
    assert not any(name.startswith(ids[1]) for name in names(out / "dev-a"))  # nothing half-written here


@pytest.mark.parametrize("bad_replies", [1, 99])
def test_a_chunk_corrupted_in_transit_is_refetched_or_reported(
    broker: Broker, links: Callable[..., Link], tmp_path: Path, bad_replies: int
) -> None:
    store = SampleStore(tmp_path / "dev-a-samples", 50_000_000)
    ids = fill_store(store, 2)
    commands = SampleCommands(store)
    spoiled = [0]

    def in_transit(args: SampleChunkArgs) -> dict[str, Any]:
        """The real handler's reply with one byte changed on the way, its hash left as the device computed it."""
        reply = commands.sample_chunk(args)
        if args.id == ids[1] and spoiled[0] < bad_replies:
            spoiled[0] += 1
            raw = bytearray(base64.b64decode(reply["data_base64"]))
            raw[0] ^= 0xFF
            reply["data_base64"] = base64.b64encode(bytes(raw)).decode()
        return reply

    link = links(link_config(broker), start=False)
    commands.register(link.router)
    link.router.register("sample-chunk", in_transit, SampleChunkArgs)
    link.start()
    assert link.wait_connected(10)
    result = run_fleet(*on(broker, "samples", "pull", "dev-a", "--out", str(tmp_path / "pulled"), "--json"))
    assert "SHA-256 mismatch (corrupted in transit); fetching the chunk again" in result.stderr
    if bad_replies == 1:  # the second fetch is good: the pull succeeds and everything is confirmed
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["confirmed"] == ids and store.samples() == []
    else:  # corrupted every time: reported after one refetch of the chunk, and kept on the device
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert json.loads(result.stdout)["failed"].keys() == {ids[1]}
        assert [sample.id for sample in store.samples()] == [ids[1]]


def test_pull_from_a_silent_device_and_a_bad_device_id_fail_with_one_line(
    broker: Broker, tmp_path: Path
) -> None:
    bad = run_fleet(*on(broker, "samples", "pull", "dev/../x"))
    assert bad.returncode == 2 and "device id" in bad.stderr and "Traceback" not in bad.stderr
    silent = run_fleet(*on(broker, "samples", "list", "nobody", "--timeout", "0.5"))
    assert silent.returncode == 1 and "Traceback" not in silent.stderr
    assert "no reply from nobody to sample-list after 3 tries" in silent.stderr.strip().splitlines()[-1]


def test_retrain_watch_runs_the_hook_once_when_drift_persists_across_the_share(
    broker: Broker, links: Callable[..., Link], tmp_path: Path
) -> None:
    devices = {
        name: links(link_config(broker, device=name), device=name) for name in ("cam-1", "cam-2", "cam-3")
    }
    for link in devices.values():
        assert link.wait_connected(10)
    marker = tmp_path / "hook.txt"
    hook = f'echo "$EDGE_FLEET_GROUP|$EDGE_FLEET_DEVICES|$EDGE_FLEET_MEMBERS|$EDGE_FLEET_SHARE" >> {marker}'
    process = subprocess.Popen(
        [
            sys.executable, "-m", "agent.fleet.cli",
            *on(broker, "retrain-watch", "--group", "door", "--devices", "cam-1,cam-2,cam-3", "--share", "0.6"),
            "--hook", hook, "--json", "--count", "1", "--timeout", "40", "--client-id", "retrain-op",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=fleet_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while "Sending SUBACK to retrain-op" not in broker.log():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        devices["cam-1"].publish_telemetry({"drift": {"drifting": True}})
        devices["cam-2"].publish_telemetry({"drift": {"drifting": False}})
        devices["cam-3"].publish_telemetry({"drift": None})
        time.sleep(1.5)
        assert not marker.exists()  # 1 of 3 is below 0.6
        for _ in range(3):  # the episode goes on: the hook still runs only once
            devices["cam-2"].publish_telemetry({"drift": {"drifting": True}})
            time.sleep(0.3)
        out, err = process.communicate(timeout=30)
    finally:
        kill_process(process)
    assert process.returncode == 0, err
    episode = json.loads(out)
    assert episode["event"] == "retrain" and episode["drifting"] == ["cam-1", "cam-2"]
    assert marker.read_text().splitlines() == ["door|cam-1,cam-2|cam-1,cam-2,cam-3|0.6667"]


def test_the_daemon_keeps_hard_examples_from_its_loop_and_edge_fleet_pulls_them(
    broker: Broker, tmp_path: Path
) -> None:
    folder = DaemonDir(
        f'[device]\nid = "cam-9"\nfleet = "f1"\n'
        f'[link]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
        "[link.backoff]\ninitial_s = 0.2\nmax_s = 1.0\n"
        "[monitor.capture]\nenabled = true\nlow_confidence_below = 1.0\nmin_interval_s = 0.3\n"
    )
    process = start_daemon(folder)
    try:
        data = wait_status(
            folder, lambda s: (s["metrics"].get("samples") or {}).get("count", 0) >= 2, 60, "two samples kept"
        )
        assert data["metrics"]["samples"]["failures"] == 0
        out = tmp_path / "pulled"
        result = run_fleet(*on(broker, "samples", "pull", "cam-9", "--out", str(out), "--json", fleet="f1"))
        assert result.returncode == 0, (result.stdout, result.stderr)
        report = json.loads(result.stdout)
        assert len(report["pulled"]) >= 2 and report["confirmed"] == report["pulled"]
        meta = parse(SampleMeta, (out / "cam-9" / f"{report['pulled'][0]}.json").read_bytes())
        assert meta.trigger == "low-confidence" and meta.model is not None and meta.model.name == "digits-det"
        assert meta.result["task"] == "detection" and meta.format == "jpeg"
        image = cv2.imdecode(
            np.frombuffer((out / "cam-9" / meta.file_name).read_bytes(), np.uint8), cv2.IMREAD_COLOR
        )
        assert image is not None
        held = {path.name for path in (folder.state / "samples").iterdir()}
        assert not any(name.startswith(sample_id) for sample_id in report["pulled"] for name in held)
    finally:
        code, output, _ = stop(process)
        folder.cleanup()
    assert code == 0, output


def test_retrain_watch_takes_the_group_from_the_inventory_and_refuses_an_empty_group(
    broker: Broker, links: Callable[..., Link], tmp_path: Path
) -> None:
    inventory = Path(ROOT) / "tests" / "data" / "fleet-inventory.toml"
    empty = run_fleet(
        *on(broker, "retrain-watch", "--group", "g9", "--inventory", str(inventory)),
        "--share",
        "0.5",
        "--hook",
        "true",
    )
    assert empty.returncode == 2 and "group g9 has no devices" in empty.stderr, empty.stderr
    link = links(link_config(broker))  # dev-a, the one device of f1's group g1
    assert link.wait_connected(10)
    marker = tmp_path / "hook.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent.fleet.cli",
         *on(broker, "retrain-watch", "--group", "g1", "--inventory", str(inventory), "--share", "1"),
         "--hook", f'echo "$EDGE_FLEET_FLEET $EDGE_FLEET_MEMBERS" > {marker}', "--count", "1", "--timeout", "30",
         "--client-id", "retrain-inv"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=fleet_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while "Sending SUBACK to retrain-inv" not in broker.log():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        link.publish_telemetry({"drift": {"drifting": True}})
        out, err = process.communicate(timeout=30)
    finally:
        kill_process(process)
    assert process.returncode == 0, err
    assert "retrain: 1 of 1 devices of g1 drift (100%): dev-a" in out
    assert marker.read_text().strip() == f"{FLEET} dev-a"  # dev-x of f2's g1 is not a member
