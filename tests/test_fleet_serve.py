"""`edge-fleet serve`, the block repository: its answers as a pure function of the store (parts, 404, 400 for paths
that escape, blocks at their offsets, unknown digests, out-of-range and too-many requests), its pacing (round robin,
bounds, token bucket), and the real thing as a subprocess over a real Mosquitto (plain, and the shipped ACL with
mutual TLS), fetched by a device-side paho MQTT 5 client written here: whole archives reassembled, two copies behind
one shared subscription, a window of 100 blocks of 128 KiB under Mosquitto's default queue, a flood from one device,
malformed requests, a broker restart, SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage

from agent.fleet.answers import MAX_FILE_BYTES, Answer, BadRequest, Reply, answer, parse_request, refusal
from agent.fleet.errors import UsageError
from agent.fleet.options import ConnectOptions
from agent.fleet.pacing import Job, KeyedLimiter, Scheduler, TokenBucket
from agent.fleet.serve import request_filter, response_client
from agent.fleet.store import Store, UnsafePath
from agent.release.archive import pack
from agent.release.chunking import block_index
from agent.release.formats import (
    MAX_BLOCK_BYTES,
    MAX_BLOCKS_PER_REQUEST,
    PART_BYTES,
    Block,
    BlockIndex,
    RepoRequest,
)

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    TEST_INVENTORY,
    Broker,
    PahoPeer,
    kill_process,
    needs_mosquitto,
    shipped_acl_broker,
)

pytest_plugins = ["broker"]

MODEL = ROOT / "models" / "digits-det-tflite"
BLOCKS_TOPIC = "edge/{fleet}/devices/{device}/blocks"


# -- the store --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """An archive published into a store, with its block index."""

    archive: Path
    index: BlockIndex

    @property
    def digest(self) -> str:
        return self.index.archive_sha256

    @property
    def data(self) -> bytes:
        return self.archive.read_bytes()


def make_store(root: Path) -> Path:
    """A store as `release publish` leaves it: two roots, timestamp, snapshot, a large targets file."""
    (root / "metadata").mkdir(parents=True)
    (root / "targets" / "bundles").mkdir(parents=True)
    (root / "metadata" / "1.root.json").write_text(json.dumps({"signed": {"_type": "root", "version": 1}}))
    (root / "metadata" / "2.root.json").write_text(json.dumps({"signed": {"_type": "root", "version": 2}}))
    (root / "metadata" / "timestamp.json").write_text(json.dumps({"signed": {"_type": "timestamp"}}))
    (root / "metadata" / "3.snapshot.json").write_text(json.dumps({"signed": {"_type": "snapshot"}}))
    # A targets file of several parts (150 KiB): the third part is short.
    (root / "metadata" / "5.targets.json").write_bytes(os.urandom(150 * 1024))
    return root


def publish(store: Path, archive: Path, name: str, version: int, index: BlockIndex | None = None) -> Release:
    """Puts `archive` and its block index under targets/ with consistent-snapshot names."""
    index = index or block_index(archive)
    folder = store / "targets" / "bundles" / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{index.archive_sha256}.{version}.tar"
    archive.replace(target)
    data = index.model_dump_json(by_alias=True).encode()
    (folder / f"{hashlib.sha256(data).hexdigest()}.{version}.blocks.json").write_bytes(data)
    return Release(target, index)


def publish_model(store: Path, tmp: Path, model: Path = MODEL) -> Release:
    """A bundled model packed with `archive.pack` and indexed with `chunking.block_index`."""
    manifest = json.loads((model / "manifest.json").read_text())
    archive = tmp / f"{manifest['name']}.tar"
    pack(model, archive)
    return publish(store, archive, manifest["name"], manifest["version"])


def publish_fixed(
    store: Path, tmp: Path, count: int, size: int = MAX_BLOCK_BYTES, name: str = "big"
) -> Release:
    """An archive of `count` blocks of `size` bytes each (a distinct block each), indexed in fixed blocks."""
    archive = tmp / f"{name}.tar"
    seed = os.urandom(size)
    blocks = []
    with archive.open("wb") as out:
        for number in range(count):
            chunk = number.to_bytes(8, "big") + seed[8:]
            out.write(chunk)
            blocks.append(Block(offset=number * size, size=size, sha256=hashlib.sha256(chunk).hexdigest()))
    index = BlockIndex(
        archive_sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        archive_length=count * size,
        chunking=f"fixed/{size}",
        blocks=tuple(blocks),
    )
    return publish(store, archive, name, 1, index)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return make_store(tmp_path / "store")


@pytest.fixture
def release(store_dir: Path, tmp_path: Path) -> Release:
    return publish_model(store_dir, tmp_path)


def replies(store: Store, request: dict[str, Any]) -> list[Reply]:
    """Every message the server sends for `request` (given as its JSON)."""
    try:
        parsed = parse_request(json.dumps(request).encode())
    except BadRequest as problem:
        return list(refusal(400, str(problem)))
    return list(answer(store, parsed))


def only(messages: list[Reply], status: int, *fragments: str) -> Reply:
    """The single message of a refusal, with its status and an error holding every fragment."""
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.status == status and message.payload == b"", message
    assert message.error is not None
    for fragment in fragments:
        assert fragment in message.error, message.error
    return message


# -- pure answers -----------------------------------------------------------------------------------------------------


def test_a_metadata_file_is_answered_in_parts_of_part_bytes(store_dir: Path) -> None:
    store = Store(store_dir)
    parts = replies(store, {"kind": "metadata", "path": "5.targets.json"})
    assert [(p.status, p.part, p.parts) for p in parts] == [(200, 0, 3), (200, 1, 3), (200, 2, 3)]
    assert all(len(p.payload) == PART_BYTES for p in parts[:2])
    assert b"".join(p.payload for p in parts) == (store_dir / "metadata" / "5.targets.json").read_bytes()
    assert parts[0].properties() == (("status", "200"), ("part", "0"), ("parts", "3"))
    small = replies(store, {"kind": "metadata", "path": "2.root.json"})
    assert len(small) == 1 and small[0].parts == 1
    assert small[0].payload == (store_dir / "metadata" / "2.root.json").read_bytes()


def test_a_target_file_is_answered_in_parts(store_dir: Path, release: Release) -> None:
    index_file = next(release.archive.parent.glob("*.blocks.json"))
    path = index_file.relative_to(store_dir / "targets").as_posix()
    parts = replies(Store(store_dir), {"kind": "target", "path": path})
    assert b"".join(p.payload for p in parts) == index_file.read_bytes()
    assert BlockIndex.model_validate_json(b"".join(p.payload for p in parts)) == release.index


def test_a_file_the_store_does_not_have_is_one_404(store_dir: Path) -> None:
    store = Store(store_dir)
    only(replies(store, {"kind": "metadata", "path": "6.root.json"}), 404, "6.root.json")
    only(replies(store, {"kind": "target", "path": "bundles/x/1.tar"}), 404)
    only(replies(store, {"kind": "metadata", "path": "bundles"}), 404)  # not a regular file
    # metadata/ and targets/ are apart: a metadata name is not a target
    only(replies(store, {"kind": "target", "path": "2.root.json"}), 404)


@pytest.mark.parametrize("path", ["../secret.json", "bundles/../../secret.json", "/etc/passwd", ""])
def test_a_path_that_escapes_its_folder_is_400(store_dir: Path, path: str) -> None:
    (store_dir / "secret.json").write_text("operator key")
    store = Store(store_dir)
    # Refused by the request schema (the device's own check) ...
    only(replies(store, {"kind": "metadata", "path": path}), 400)
    # ... and by the store itself, for a request that skipped the schema.
    forged = RepoRequest.model_construct(kind="metadata", path=path, digest=None, blocks=())
    only(list(answer(store, forged)), 400)
    with pytest.raises(UnsafePath):
        store.resolve("targets", path)


def test_a_symlink_out_of_its_folder_is_400_and_one_inside_is_served(store_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text("not for devices")
    (store_dir / "metadata" / "evil.json").symlink_to(outside)
    (store_dir / "metadata" / "to-targets.json").symlink_to(store_dir / "targets" / "bundles")
    (store_dir / "targets" / "keys.json").symlink_to(store_dir / "metadata" / "2.root.json")
    (store_dir / "metadata" / "latest.root.json").symlink_to("2.root.json")
    (store_dir / "metadata" / "dir").symlink_to(tmp_path, target_is_directory=True)
    store = Store(store_dir)
    only(replies(store, {"kind": "metadata", "path": "evil.json"}), 400, "outside")
    only(replies(store, {"kind": "metadata", "path": "to-targets.json"}), 400)
    only(replies(store, {"kind": "target", "path": "keys.json"}), 400)  # into metadata/: out of targets/
    only(replies(store, {"kind": "metadata", "path": "dir/outside.json"}), 400)
    served = replies(store, {"kind": "metadata", "path": "latest.root.json"})
    assert (
        served[0].status == 200 and served[0].payload == (store_dir / "metadata" / "2.root.json").read_bytes()
    )


def test_an_archive_asked_for_as_a_file_is_400_fetch_it_by_blocks(store_dir: Path, tmp_path: Path) -> None:
    big = publish_fixed(store_dir, tmp_path, count=MAX_FILE_BYTES // MAX_BLOCK_BYTES + 1)
    path = big.archive.relative_to(store_dir / "targets").as_posix()
    only(replies(Store(store_dir), {"kind": "target", "path": path}), 400, "fetched by its blocks")


def test_every_block_is_read_at_its_offset_and_the_archive_reassembles(
    store_dir: Path, release: Release
) -> None:
    store = Store(store_dir)
    assert set(store.archives) == {release.digest}
    count = len(release.index.blocks)
    messages = replies(
        store, {"kind": "blocks", "digest": release.digest, "blocks": list(range(count))[::-1]}
    )
    assert [m.block for m in messages] == list(range(count))[::-1]  # in the order asked
    assert all(m.status == 200 and m.properties()[1] == ("block", str(m.block)) for m in messages)
    for message in messages:
        assert message.block is not None
        block = release.index.blocks[message.block]
        assert len(message.payload) == block.size <= MAX_BLOCK_BYTES
        assert hashlib.sha256(message.payload).hexdigest() == block.sha256
    assert b"".join(m.payload for m in sorted(messages, key=lambda m: m.block or 0)) == release.data


def test_a_block_asked_twice_in_one_request_is_sent_once(store_dir: Path, release: Release) -> None:
    messages = replies(Store(store_dir), {"kind": "blocks", "digest": release.digest, "blocks": [1, 0, 1, 1]})
    assert [m.block for m in messages] == [1, 0]


def test_an_unknown_digest_is_one_404(store_dir: Path, release: Release) -> None:
    only(replies(Store(store_dir), {"kind": "blocks", "digest": "0" * 64, "blocks": [0]}), 404, "0" * 64)


def test_a_block_out_of_range_is_400_and_nothing_is_sent(store_dir: Path, release: Release) -> None:
    count = len(release.index.blocks)
    request = {"kind": "blocks", "digest": release.digest, "blocks": [0, count]}
    only(replies(Store(store_dir), request), 400, f"block {count} is out of range", f"{count} blocks")


def test_too_many_blocks_at_once_is_400(store_dir: Path, release: Release) -> None:
    request = {"kind": "blocks", "digest": release.digest, "blocks": list(range(MAX_BLOCKS_PER_REQUEST + 1))}
    only(replies(Store(store_dir), request), 400, "blocks")
    forged = RepoRequest.model_construct(
        kind="blocks", path=None, digest=release.digest, blocks=tuple(range(MAX_BLOCKS_PER_REQUEST + 1))
    )
    only(list(answer(Store(store_dir), forged)), 400, f"at most {MAX_BLOCKS_PER_REQUEST}")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"not json", "not a repository request"),
        (b'{"kind": "blocks"}', "digest"),
        (b'{"kind": "tarball", "path": "x"}', "kind"),
        (b'{"kind": "metadata", "path": "1.root.json", "extra": 1}', "extra"),
        (b'{"kind": "blocks", "digest": "' + b"a" * 64 + b'", "blocks": ["1"]}', "blocks"),
        (b"[" * 20000, "bytes"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_problem(payload: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        parse_request(payload)


def test_a_new_release_is_found_when_its_digest_is_first_asked(store_dir: Path, tmp_path: Path) -> None:
    now = [0.0]
    store = Store(store_dir, min_rescan_s=1.0, clock=lambda: now[0])
    assert store.archives == {}
    now[0] = 5.0
    release = publish_model(store_dir, tmp_path)
    assert store.archive(release.digest) is not None  # a miss rescans
    assert store.archive("1" * 64) is None
    later = publish_fixed(store_dir, tmp_path, count=2, size=1024)
    assert store.archive(later.digest) is None  # a second miss within min_rescan_s does not rescan
    now[0] = 6.5
    assert store.archive(later.digest) is not None


def test_an_archive_whose_size_is_not_its_index_length_is_not_served(
    store_dir: Path, release: Release
) -> None:
    with release.archive.open("ab") as handle:  # a partly written or damaged archive
        handle.write(b"x")
    assert Store(store_dir).archive(release.digest) is None


def test_a_broken_block_index_is_skipped_and_the_others_served(store_dir: Path, release: Release) -> None:
    (store_dir / "targets" / "bundles" / "junk.blocks.json").write_text("{not json")
    assert set(Store(store_dir).archives) == {release.digest}


# -- response topics and filters --------------------------------------------------------------------------------------


def test_answers_go_only_under_the_request_fleets_devices_blocks() -> None:
    request = f"edge/{FLEET}/repo/get"
    assert response_client(request, f"edge/{FLEET}/devices/dev-a/blocks/t1") == "dev-a"
    assert response_client(request, f"edge/{FLEET}/devices/dev-a/blocks") == "dev-a"
    for bad in [
        None,
        f"edge/{FLEET}/devices/dev-a/cmd/reboot",  # a device's command topic: never
        f"edge/{FLEET}/devices/dev-a/status",
        "edge/f2/devices/dev-x/blocks/t1",  # another fleet than the request's
        f"edge/{FLEET}/devices/+/blocks/t1",
        f"edge/{FLEET}/devices/dev-a/blocks/#",
        f"edge/{FLEET}/devices/$x/blocks/t1",
        "elsewhere",
    ]:
        with pytest.raises(BadRequest):
            response_client(request, bad)


def test_the_subscription_is_shared_and_covers_every_fleet_without_fleet() -> None:
    options = ConnectOptions()
    assert request_filter(options, None, "repo") == "$share/repo/edge/+/repo/get"
    assert request_filter(options, "f1", "repo") == "$share/repo/edge/f1/repo/get"
    assert request_filter(options, "f1", None) == "edge/f1/repo/get"
    custom = ConnectOptions(prefix_template="acme/{fleet}/v1/")
    assert request_filter(custom, None, "r") == "$share/r/acme/+/v1/repo/get"
    with pytest.raises(UsageError):
        request_filter(ConnectOptions(prefix_template="edge-{fleet}/"), None, "repo")


# -- pacing -----------------------------------------------------------------------------------------------------------


def blocks_job(count: int, name: str = "t") -> Job:
    class Numbers(Answer):
        def __init__(self) -> None:
            super().__init__()
            self.left = list(range(count))

        def __next__(self) -> Reply:
            if not self.left:
                self.done = True
                raise StopIteration
            number = self.left.pop(0)
            self.done = not self.left
            return Reply(200, name.encode(), block=number)

    return Job(name, None, Numbers(), count)


def test_devices_are_served_in_turn_so_a_flood_delays_another_by_one_message() -> None:
    scheduler = Scheduler(max_pending=1000, max_pending_total=10_000)
    for _ in range(9):
        assert scheduler.offer("flood", blocks_job(100, "flood"))
    assert scheduler.offer("dev-b", blocks_job(3, "dev-b"))
    sent = []
    while (item := scheduler.next()) is not None:
        sent.append(item[0].topic)
    assert sent[:6] == ["flood", "dev-b", "flood", "dev-b", "flood", "dev-b"]
    assert len(sent) == 903 and scheduler.pending == 0 and not scheduler


def test_a_device_over_its_pending_bound_is_refused_and_others_are_not() -> None:
    scheduler = Scheduler(max_pending=200, max_pending_total=250)
    assert scheduler.offer("dev-a", blocks_job(100)) and scheduler.offer("dev-a", blocks_job(100))
    assert not scheduler.offer("dev-a", blocks_job(1))
    assert scheduler.pending_for("dev-a") == 200
    assert scheduler.offer("dev-b", blocks_job(50))
    assert not scheduler.offer("dev-c", blocks_job(1))  # the bound over every device
    assert scheduler.next() is not None
    assert scheduler.pending_for("dev-a") == 199 and scheduler.offer("dev-c", blocks_job(1))


def test_open_files_are_bounded_and_closed_when_the_queue_is_forgotten(store_dir: Path) -> None:
    store = Store(store_dir)
    scheduler = Scheduler(max_open_files=2)
    request = parse_request(b'{"kind": "metadata", "path": "5.targets.json"}')
    answers = [answer(store, request) for _ in range(3)]
    for number, each in enumerate(answers):
        scheduler.offer(f"dev-{number}", Job("t", None, each, 1))
    sent: list[int] = []
    while (item := scheduler.next()) is not None:
        open_now = [a.holds_file for a in answers]
        assert sum(open_now) <= 2, open_now
        sent.append(answers.index(item[0].answer))  # type: ignore[arg-type]
        if len(sent) == 3:
            assert open_now == [True, True, False]  # the third waits for a free file
    assert sorted(sent) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sent.index(2) > sent.index(0) + 2  # it started once the first file was sent whole and closed
    assert not any(a.holds_file for a in answers)
    again = answer(store, request)
    scheduler.offer("dev-0", Job("t", None, again, 1))
    assert scheduler.next() is not None and again.holds_file
    scheduler.clear()
    assert not again.holds_file and not scheduler


def test_the_token_bucket_never_lets_more_than_rate_and_burst_in_a_second() -> None:
    now = 0.0
    bucket = TokenBucket(100.0, now)
    sent: list[float] = []
    while now < 10.0:
        if bucket.ready(now):
            bucket.spend()
            sent.append(now)
        else:
            now += max(bucket.wait_s(now), 1e-4)
    assert 990 <= len(sent) <= 1010
    worst = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert worst <= 100 + bucket.burst
    unlimited = TokenBucket(None, 0.0)
    assert all(unlimited.ready(0.0) for _ in range(10_000)) and unlimited.wait_s(0.0) == 0.0


def test_the_keyed_limiter_lets_one_per_interval_and_counts_the_rest() -> None:
    limiter = KeyedLimiter(60.0, max_keys=2)
    assert limiter.allow("dev-a", 0.0) == 0
    assert limiter.allow("dev-a", 1.0) is None and limiter.allow("dev-a", 2.0) is None
    assert limiter.allow("dev-b", 2.0) == 0
    assert limiter.allow("dev-a", 61.0) == 2
    limiter.allow("dev-c", 62.0)  # three keys: the oldest is forgotten
    assert limiter.allow("dev-b", 63.0) == 0


# -- over a real Mosquitto ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """One answer message as the device sees it."""

    topic: str
    correlation: bytes
    props: dict[str, str]
    payload: bytes

    @property
    def status(self) -> int:
        return int(self.props["status"])


class RepoDevice:
    """A device's side of the protocol, in raw paho MQTT 5: requests with a response topic, answers by correlation."""

    def __init__(self, peer: PahoPeer, device: str = "dev-a", fleet: str = FLEET) -> None:
        self.peer, self.device, self.fleet = peer, device, fleet
        self.topic = BLOCKS_TOPIC.format(fleet=fleet, device=device)
        self.inbox: queue.Queue[Response] = queue.Queue()
        self.by_correlation: dict[bytes, list[Response]] = {}
        peer.client.on_message = self._on_message
        reasons = peer.subscribe(self.topic + "/#")
        assert not reasons[0].is_failure, reasons
        self._tokens = iter(range(1, 1 << 30))
        self.asked = 0

    def _on_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        props = message.properties
        user = dict(getattr(props, "UserProperty", None) or [])
        correlation = bytes(getattr(props, "CorrelationData", b"") or b"")
        self.inbox.put(Response(message.topic, correlation, user, bytes(message.payload)))

    def ask(
        self, request: dict[str, Any] | bytes, *, wait_ack: bool = True, response_topic: str | None = None
    ) -> bytes:
        """Publishes a request (QoS 1) with a fresh response topic and correlation data; returns the correlation."""
        token = f"{self.device}-{next(self._tokens)}"
        self.asked += 1
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        topic = f"edge/{self.fleet}/repo/get"
        answer_to = response_topic or f"{self.topic}/{token}"
        if wait_ack:
            self.peer.publish(topic, payload, response_topic=answer_to, correlation=token.encode())
        else:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = answer_to
            properties.CorrelationData = token.encode()
            self.peer.client.publish(topic, payload, qos=1, properties=properties)
        return token.encode()

    def receive(self, timeout_s: float) -> Response | None:
        """The next answer (kept by correlation too), or None after `timeout_s`."""
        try:
            response = self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None
        self.by_correlation.setdefault(response.correlation, []).append(response)
        return response

    def drain(self, quiet_s: float = 0.5) -> None:
        """Keeps receiving until nothing comes for `quiet_s`."""
        while self.receive(quiet_s) is not None:
            pass

    def answers(self, correlation: bytes, count: int, timeout_s: float = 10.0) -> list[Response]:
        """The first `count` answers to one request, or fails the test."""
        deadline = time.monotonic() + timeout_s
        while len(self.by_correlation.get(correlation, [])) < count:
            if self.receive(max(0.0, deadline - time.monotonic())) is None and time.monotonic() >= deadline:
                got = self.by_correlation.get(correlation, [])
                raise AssertionError(f"{len(got)} of {count} answers within {timeout_s} s: {got[:3]}")
        return self.by_correlation[correlation][:count]

    def fetch_file(self, kind: str, path: str, timeout_s: float = 10.0) -> bytes:
        """A metadata file or target, reassembled from its parts."""
        correlation = self.ask({"kind": kind, "path": path})
        first = self.answers(correlation, 1, timeout_s)[0]
        assert first.status == 200, first.props
        parts = self.answers(correlation, int(first.props["parts"]), timeout_s)
        assert sorted(int(p.props["part"]) for p in parts) == list(range(len(parts)))
        return b"".join(p.payload for p in sorted(parts, key=lambda p: int(p.props["part"])))

    def fetch_blocks(self, index: BlockIndex, window: int, timeout_s: float = 30.0) -> bytes:
        """Every block, keeping `window` asked and not yet received (the receiver paces): the archive's bytes."""
        wanted = list(range(len(index.blocks)))
        got: dict[int, bytes] = {}
        first = wanted[:window]
        for start in range(0, len(first), MAX_BLOCKS_PER_REQUEST):
            self.ask({"kind": "blocks", "digest": index.archive_sha256, "blocks": first[start : start + 100]})
        following = iter(wanted[window:])
        deadline = time.monotonic() + timeout_s
        while len(got) < len(wanted):
            response = self.receive(max(0.0, deadline - time.monotonic()))
            assert response is not None, f"{len(got)} of {len(wanted)} blocks within {timeout_s} s"
            assert response.status == 200, response.props
            number = int(response.props["block"])
            assert number not in got, f"block {number} came twice"
            assert hashlib.sha256(response.payload).hexdigest() == index.blocks[number].sha256
            got[number] = response.payload
            following_block = next(following, None)
            if following_block is not None:
                self.ask({"kind": "blocks", "digest": index.archive_sha256, "blocks": [following_block]})
        return b"".join(got[number] for number in wanted)


class Serve:
    """`edge-fleet serve` as a real subprocess; its stderr lines collected."""

    def __init__(self, broker: Broker, store: Path, *args: str, identity: str | None = None) -> None:
        command = [sys.executable, "-m", "agent.fleet.cli", "serve", "--store", str(store)]
        command += ["--host", broker.host, "--port", str(broker.port), *args]
        if identity is not None:
            assert broker.certs is not None
            certs = broker.certs
            command += ["--ca-file", str(certs / "ca.crt"), "--cert-file", str(certs / f"{identity}.crt")]
            command += ["--key-file", str(certs / f"{identity}.key")]
        env = {key: value for key, value in os.environ.items() if not key.startswith("EDGE_FLEET_")}
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("serving ")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, fragment: str, timeout_s: float = 15.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                if fragment in line:
                    return line
            if self.process.poll() is not None:
                self._reader.join(2)
                break
            time.sleep(0.02)
        raise AssertionError(f"serve never said {fragment!r}:\n" + "\n".join(self.lines))

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])

    def stop(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; the exit status and the seconds it took."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_process(self.process)
            raise AssertionError("serve ignored SIGTERM:\n" + "\n".join(self.lines)) from None
        took = time.monotonic() - start
        self._reader.join(2)
        return code, took


@pytest.fixture
def serves() -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def make(*args: Any, **kwargs: Any) -> Serve:
        serve = Serve(*args, **kwargs)
        started.append(serve)
        return serve

    yield make
    for serve in started:
        if serve.process.poll() is None:
            kill_process(serve.process)


def device(
    peers: Callable[..., PahoPeer], broker: Broker, name: str = "dev-a", fleet: str = FLEET
) -> RepoDevice:
    cert = name if broker.options.tls else None
    return RepoDevice(peers(broker, name, device_cert=cert), name, fleet)


@needs_mosquitto
def test_a_device_fetches_metadata_and_every_block_and_reassembles_the_archive(
    broker: Broker,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    serve = serves(broker, store_dir)
    assert "$share/repo/edge/+/repo/get" in serve.wait_for("serving 1 archives")
    dev = device(peers, broker)
    assert dev.fetch_file("metadata", "2.root.json") == (store_dir / "metadata" / "2.root.json").read_bytes()
    assert (
        dev.fetch_file("metadata", "5.targets.json")
        == (store_dir / "metadata" / "5.targets.json").read_bytes()
    )
    data = dev.fetch_blocks(release.index, window=2)
    assert data == release.data and hashlib.sha256(data).hexdigest() == release.digest
    missing = dev.answers(dev.ask({"kind": "metadata", "path": "9.root.json"}), 1)[0]
    assert missing.status == 404 and "9.root.json" in missing.props["error"] and missing.payload == b""
    unknown = dev.answers(dev.ask({"kind": "blocks", "digest": "f" * 64, "blocks": [0]}), 1)[0]
    assert unknown.status == 404
    escape = dev.answers(dev.ask({"kind": "metadata", "path": "../targets/x"}), 1)[0]
    assert escape.status == 400
    code, _took = serve.stop()
    assert code == 0 and f"answered {dev.asked} requests" in serve.lines[-1]


@pytest.fixture(scope="module")
def certs_two_repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test PKI and ACL for the test inventory plus a second repository identity `repo-2` (one per copy)."""
    inventory = tmp_path_factory.mktemp("inventory") / "fleet-inventory.toml"
    inventory.write_text(TEST_INVENTORY.read_text() + '\n[[repository]]\nname = "repo-2"\nfleets = ["f1"]\n')
    folder = tmp_path_factory.mktemp("certs-two-repos")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_certs.py"), str(folder), "--inventory", str(inventory)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


@needs_mosquitto
def test_under_the_shipped_acl_the_repo_identity_serves_its_fleet_over_mutual_tls(
    broker_factory: Callable[..., Broker],
    certs: Path,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    serve = serves(broker, store_dir, identity="repo")  # every fleet: the ACL leaves it f1's requests only
    dev = device(peers, broker, "dev-a")
    assert (
        dev.fetch_file("metadata", "timestamp.json") == (store_dir / "metadata/timestamp.json").read_bytes()
    )
    assert dev.fetch_blocks(release.index, window=4) == release.data
    # dev-x is in fleet f2, which `repo` does not serve: its request never reaches the server.
    other = device(peers, broker, "dev-x", fleet="f2")
    other.ask({"kind": "metadata", "path": "timestamp.json"})
    assert other.receive(1.0) is None
    # A device cannot point answers at another device's topics: the server refuses to, and the broker too.
    dev.ask(
        {"kind": "metadata", "path": "timestamp.json"},
        response_topic=f"edge/{FLEET}/devices/dev-b/cmd/reboot",
    )
    assert dev.receive(0.5) is None
    code, _took = serve.stop()
    assert code == 0 and "1 without a usable response topic" in serve.lines[-1]
    assert "Denied PUBLISH from repo" not in broker.log()


@needs_mosquitto
def test_two_copies_with_their_own_identities_split_the_requests_and_answer_each_once(
    broker_factory: Callable[..., Broker],
    certs_two_repos: Path,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    broker = shipped_acl_broker(broker_factory, certs_two_repos)
    first = serves(broker, store_dir, identity="repo")
    second = serves(broker, store_dir, identity="repo-2")
    dev = device(peers, broker, "dev-a")
    count = len(release.index.blocks)
    asked = {}
    for number in range(40):
        if number % 2:
            asked[dev.ask({"kind": "metadata", "path": "5.targets.json"})] = 3
        else:
            asked[dev.ask({"kind": "blocks", "digest": release.digest, "blocks": list(range(count))})] = count
    for correlation, expected in asked.items():
        dev.answers(correlation, expected)
    dev.drain(0.5)
    for correlation, expected in asked.items():
        got = dev.by_correlation[correlation]
        keys = [r.props.get("block", r.props.get("part")) for r in got]
        assert len(got) == expected and len(set(keys)) == expected, f"answered more than once: {keys}"
    assert first.stop()[0] == 0 and second.stop()[0] == 0
    served = [int(s.lines[-1].split("answered ")[1].split()[0]) for s in (first, second)]
    assert sum(served) == 40 and min(served) >= 10, (
        served
    )  # Mosquitto hands a shared subscription round robin


@needs_mosquitto
def test_a_window_of_100_blocks_of_128_kib_arrives_completely_with_mosquittos_default_queue(
    broker: Broker,
    store_dir: Path,
    tmp_path: Path,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    big = publish_fixed(store_dir, tmp_path, count=320)  # 40 MiB
    assert "max_queued_messages" not in broker.conf_path.read_text()  # Mosquitto's default: 1000
    serve = serves(broker, store_dir, "--rate", "0")
    before = serve.rss_kb()
    dev = device(peers, broker)
    assert dev.fetch_blocks(big.index, window=100, timeout_s=60) == big.data
    growth_mb = (serve.rss_kb() - before) / 1024
    print(f"serve RSS peak growth {growth_mb:.1f} MB")
    assert growth_mb < 15, f"serve grew by {growth_mb:.1f} MB serving 40 MiB"  # bounded by the window
    assert serve.stop()[0] == 0


@needs_mosquitto
def test_a_request_flood_from_one_device_does_not_stop_others_being_served(
    broker: Broker,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    serve = serves(broker, store_dir, "--rate", "200")
    flood = device(peers, broker, "dev-flood")
    count = len(release.index.blocks)
    flooding = threading.Event()

    def keep_flooding() -> None:  # ~1000 requests of every block a second, 20 times what the server sends
        while not flooding.is_set():
            flood.ask(
                {"kind": "blocks", "digest": release.digest, "blocks": list(range(count))}, wait_ack=False
            )
            time.sleep(0.001)

    flooder = threading.Thread(target=keep_flooding, daemon=True)
    flooder.start()
    try:
        time.sleep(1.0)
        dev = device(peers, broker, "dev-b")
        start = time.monotonic()
        root = dev.fetch_file("metadata", "2.root.json", timeout_s=5)
        assert dev.fetch_blocks(release.index, window=count, timeout_s=5) == release.data
        took = time.monotonic() - start
    finally:
        flooding.set()
        flooder.join(5)
    assert root == (store_dir / "metadata/2.root.json").read_bytes()
    # In turn with the flood: dev-b's 5 messages go among the flood's, within a few hundredths of a second at 200/s
    # (served one device after the other, the flood's queue, refilled to its bound, would never let dev-b in).
    assert took < 0.8, took
    flood.drain(0.3)
    statuses = {r.status for answers in flood.by_correlation.values() for r in answers}
    assert 429 in statuses and 200 in statuses
    code, _took = serve.stop()
    assert code == 0 and "refused as busy" in serve.lines[-1]


@needs_mosquitto
def test_malformed_requests_are_answered_400_logged_once_per_device_and_the_server_goes_on(
    broker: Broker,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    serve = serves(broker, store_dir)
    dev = device(peers, broker)
    bad = [b"not json", b"{}", b'{"kind": "blocks", "digest": "x", "blocks": [0]}', b"\xff" * 10]
    for payload in bad * 5:
        response = dev.answers(dev.ask(payload), 1)[0]
        assert response.status == 400 and "not a repository request" in response.props["error"]
    watcher = peers(broker, "watcher")
    watcher.subscribe("edge/#")
    no_response_topic = b'{"kind": "metadata", "path": "2.root.json"}'
    dev.peer.publish(f"edge/{FLEET}/repo/get", no_response_topic)
    assert dev.fetch_blocks(release.index, window=1) == release.data
    assert serve.process.poll() is None
    assert len([line for line in serve.lines if "bad request from dev-a" in line]) == 1
    assert any("no MQTT 5 response topic" in line for line in serve.lines)
    time.sleep(0.3)
    seen = [watcher.messages.get_nowait().topic for _ in range(watcher.messages.qsize())]
    assert seen and all(t == f"edge/{FLEET}/repo/get" or t.startswith(f"{dev.topic}/") for t in seen), seen
    assert serve.stop()[0] == 0


@needs_mosquitto
def test_serve_reconnects_after_a_broker_restart_and_serves_again(
    broker: Broker,
    store_dir: Path,
    release: Release,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    serve = serves(broker, store_dir)
    broker.stop()
    serve.wait_for("lost the broker")
    broker.start()
    serve.wait_for("reconnected to")
    dev = device(peers, broker)
    assert dev.fetch_blocks(release.index, window=2) == release.data
    assert serve.stop()[0] == 0


@needs_mosquitto
def test_the_rate_limit_holds_publishes_per_second(
    broker: Broker,
    store_dir: Path,
    tmp_path: Path,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    small = publish_fixed(store_dir, tmp_path, count=100, size=1024, name="small")
    serve = serves(broker, store_dir, "--rate", "50")
    dev = device(peers, broker)
    start = time.monotonic()
    dev.answers(dev.ask({"kind": "blocks", "digest": small.digest, "blocks": list(range(100))}), 100)
    took = time.monotonic() - start
    assert 1.7 <= took <= 4.0, took  # 100 at 50/s, after a burst of a few
    assert serve.stop()[0] == 0


@needs_mosquitto
def test_sigterm_stops_within_2_s_idle_busy_and_while_the_broker_is_away(
    broker: Broker,
    store_dir: Path,
    tmp_path: Path,
    serves: Callable[..., Serve],
    peers: Callable[..., PahoPeer],
) -> None:
    idle = serves(broker, store_dir)
    code, took = idle.stop()
    assert code == 0 and took < 2.0 and "stopped:" in idle.lines[-1]

    big = publish_fixed(store_dir, tmp_path, count=100, size=4096)
    busy = serves(broker, store_dir, "--rate", "20")
    dev = device(peers, broker)
    dev.ask({"kind": "blocks", "digest": big.digest, "blocks": list(range(100))})
    assert dev.receive(5.0) is not None
    code, took = busy.stop()
    assert code == 0 and took < 2.0

    away = serves(broker, store_dir)
    broker.stop()
    away.wait_for("lost the broker")
    time.sleep(1.0)  # into the backoff
    code, took = away.stop()
    assert code == 0 and took < 2.0


def test_serve_refuses_a_store_that_is_not_a_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.fleet.cli", "serve", "--store", str(tmp_path / "none"), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not a folder" in result.stderr.strip().splitlines()[-1]
