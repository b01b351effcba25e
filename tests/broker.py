"""A real Mosquitto for tests: generated config (plain, TLS, mutual TLS, password file, ACL), on a free port.

Also: independent clients (`mosquitto_sub` and `mosquitto_pub` as subprocesses, and a small paho client), the test
PKI and ACL from scripts/make_certs.py and the test inventory (tests/data/fleet-inventory.toml), and pytest fixtures.
Test modules load the fixtures with `pytest_plugins = ["broker"]` and import helpers with `from broker import ...`
(pytest puts tests/ on sys.path; tests/ is not a package).

Invariants: every broker listens on 127.0.0.1 only, on a port picked free by the OS; `stop` and the fixtures' cleanup
always terminate the processes they started (by pid); a broker can be stopped and started again on the same port,
with its persistence file, to simulate an outage.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.link import DeviceIdentity, Link, LinkConfig

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HAVE_MOSQUITTO = Path(MOSQUITTO).exists() and Path(MOSQUITTO_SUB).exists()

# Skipped on a workstation without the broker; under CI (which installs it) a missing broker fails loudly instead.
needs_mosquitto = pytest.mark.skipif(
    not HAVE_MOSQUITTO and not os.environ.get("CI"),
    reason="Mosquitto is not installed (scripts/setup-env dev installs it)",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class BrokerOptions:
    """What the generated mosquitto.conf enables."""

    tls: bool = False
    require_certificate: bool = False
    use_identity_as_username: bool = False
    passwords: dict[str, str] | None = None
    acl: str | None = None
    allow_anonymous: bool = True
    persistence: bool = False
    max_queued_messages: int | None = None
    extra: list[str] = field(default_factory=list)


class Broker:
    """One Mosquitto process on 127.0.0.1:`port` with a config generated in `folder`."""

    def __init__(
        self,
        folder: Path,
        options: BrokerOptions | None = None,
        certs: Path | None = None,
        raw_config: Callable[[int], str] | None = None,
    ) -> None:
        """`raw_config(port)`, when given, is the whole mosquitto.conf (options then only describe it to clients)."""
        self.folder = folder
        self.options = options or BrokerOptions()
        self.certs = certs
        self.port = free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "mosquitto.log"
        folder.mkdir(parents=True, exist_ok=True)
        if raw_config is not None:
            self.conf_path = folder / "mosquitto.conf"
            self.conf_path.write_text(raw_config(self.port))
        else:
            self.conf_path = self._write_config()

    def _write_config(self) -> Path:
        o = self.options
        lines = [
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if o.allow_anonymous else 'false'}",
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        if o.persistence:
            lines += ["persistence true", f"persistence_location {self.folder}/", "autosave_interval 1"]
        if o.max_queued_messages is not None:
            lines.append(f"max_queued_messages {o.max_queued_messages}")
        if o.tls:
            if self.certs is None:
                raise ValueError("a TLS broker needs certs")
            lines += [
                f"cafile {self.certs / 'ca.crt'}",
                f"certfile {self.certs / 'broker.crt'}",
                f"keyfile {self.certs / 'broker.key'}",
                f"require_certificate {'true' if o.require_certificate else 'false'}",
                f"use_identity_as_username {'true' if o.use_identity_as_username else 'false'}",
            ]
        if o.passwords is not None:
            password_file = self.folder / "passwords"
            password_file.write_text("")
            for user, password in o.passwords.items():
                subprocess.run(
                    [MOSQUITTO_PASSWD, "-b", str(password_file), user, password], check=True, timeout=30
                )
            lines.append(f"password_file {password_file}")
        if o.acl is not None:
            acl_file = self.folder / "acl"
            acl_file.write_text(o.acl)
            lines.append(f"acl_file {acl_file}")
        lines += o.extra
        path = self.folder / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout_s: float = 10.0) -> Broker:
        """Starts Mosquitto and waits until it accepts TCP connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.process.returncode}):\n{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops Mosquitto cleanly (SIGTERM: it saves its persistence file), killing it if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def reload(self, timeout_s: float = 10.0) -> None:
        """SIGHUP: Mosquitto re-reads its ACL (and password file), keeping every connection; waits for its log line."""
        assert self.process is not None and self.process.poll() is None, "the broker is not running"
        before = self.log().count("Reloading config.")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self.log().count("Reloading config.") <= before:
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not reload within {timeout_s} s:\n{self.log()[-2000:]}")
            time.sleep(0.02)

    def log(self) -> str:
        """Everything Mosquitto logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url_args(self) -> list[str]:
        """-h/-p arguments for mosquitto_sub and mosquitto_pub."""
        return ["-h", self.host, "-p", str(self.port)]

    def tls_args(self, device: str | None = None) -> list[str]:
        """--cafile (and --cert/--key for `device`) arguments for the mosquitto clients."""
        if not self.options.tls or self.certs is None:
            return []
        args = ["--cafile", str(self.certs / "ca.crt")]
        if device is not None:
            args += ["--cert", str(self.certs / f"{device}.crt"), "--key", str(self.certs / f"{device}.key")]
        return args


@dataclass(frozen=True)
class Seen:
    """One message an observer received."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class MosquittoSub:
    """An independent observer: `mosquitto_sub` as a subprocess, printing retain, topic and payload per line."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *extra: str,
        client_id: str | None = None,
        cert: str | None = None,
    ) -> None:
        """`cert`: connect with that client certificate (mutual TLS); its CN is then also the client id."""
        args = [MOSQUITTO_SUB, *broker.url_args(), *broker.tls_args(cert), "-V", "mqttv5", "-q", "1"]
        args += ["-F", "%r\t%t\t%p"]
        # A named client keeps a persistent session (it survives a broker restart with persistence on).
        name = client_id or cert or f"observer-{os.urandom(4).hex()}"
        args += ["-i", name, "-c", "-x", "600"] if client_id is not None else ["-i", name]
        for topic in topics:
            args += ["-t", topic]
        args += list(extra)
        suback = f"Sending SUBACK to {name}"
        acked_before = broker.log().count(suback)
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: queue.Queue[Seen] = queue.Queue()
        self.seen: list[Seen] = []
        self._reader = threading.Thread(target=self._read, name="mosquitto-sub-reader", daemon=True)
        self._reader.start()
        # Wait for the broker's SUBACK (it logs every packet), so a message published next is never missed.
        deadline = time.monotonic() + 15
        while broker.log().count(suback) <= acked_before:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"mosquitto_sub {name} never subscribed:\n{broker.log()[-2000:]}")
            time.sleep(0.02)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            retain, topic, payload = line.rstrip(b"\n").split(b"\t", 2)
            self.messages.put(Seen(topic.decode(), payload, retain == b"1"))

    def wait_for(self, predicate: Callable[[Seen], bool], timeout_s: float = 10.0) -> Seen:
        """Returns the first message (seen before or arriving) that matches, or fails the test."""
        for seen in self.seen:
            if predicate(seen):
                return seen
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout_s} s; saw {self.seen[-5:]}")
            try:
                seen = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(seen)
            if predicate(seen):
                return seen

    def collect(self, quiet_s: float = 0.5, timeout_s: float = 10.0) -> list[Seen]:
        """Everything received until nothing arrives for `quiet_s` (at most `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.seen.append(self.messages.get(timeout=quiet_s))
            except queue.Empty:
                break
        return self.seen

    def close(self) -> None:
        """Ends the subprocess."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def mosquitto_pub(
    broker: Broker, topic: str, payload: str, cert: str | None = None, retain: bool = False
) -> subprocess.CompletedProcess[str]:
    """Publishes one QoS 1 message with `mosquitto_pub` (MQTT 5) as `cert`'s identity. A publish the ACL refuses is
    answered with reason code 135, which mosquitto_pub reports on stderr (`Publish 1 failed: Not authorized`)."""
    args = [MOSQUITTO_PUB, *broker.url_args(), *broker.tls_args(cert), "-V", "mqttv5", "-q", "1"]
    args += ["-t", topic, "-m", payload, *(["-r"] if retain else [])]
    if cert is not None:
        args += ["-i", cert]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


class PahoPeer:
    """A second MQTT 5 client (an operator or another device) driven from the test thread."""

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        device_cert: str | None = None,
    ) -> None:
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if broker.options.tls and broker.certs is not None:
            self.client.tls_set(
                ca_certs=str(broker.certs / "ca.crt"),
                certfile=str(broker.certs / f"{device_cert}.crt") if device_cert else None,
                keyfile=str(broker.certs / f"{device_cert}.key") if device_cert else None,
            )
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.acks: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.connected = threading.Event()
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.acks.put((mid, reason))
        self.client.on_subscribe = lambda _c, _u, _mid, reasons, _p: self.subacks.put(reasons)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: (
            self.connected.set() if not reason.is_failure else None
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise AssertionError(f"{client_id} could not connect")

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        """Subscribes and returns the SUBACK reason codes."""
        self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=10)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> Any:
        """Publishes and waits for the PUBACK; returns its reason code."""
        properties = None
        if response_topic is not None or correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if qos == 0:
            return None
        while True:
            mid, reason = self.acks.get(timeout=10)
            if mid == info.mid:
                return reason

    def next_message(self, timeout_s: float = 10.0) -> MQTTMessage:
        """The next message received, or fails the test."""
        try:
            return self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout_s} s") from None

    def close(self) -> None:
        """Disconnects."""
        self.client.disconnect()
        self.client.loop_stop()


FLEET = "f1"


def link_config(broker: Broker, device: str | None = None, **overrides: Any) -> LinkConfig:
    """An enabled LinkConfig for `broker` (TLS with the test CA, and `device`'s certificate, when it has TLS)."""
    data: dict[str, Any] = {
        "enabled": True,
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 10,
        "connect_timeout_s": 5,
        "backoff": {"initial_s": 0.2, "max_s": 1.0},
    }
    if broker.options.tls and broker.certs is not None:
        tls: dict[str, Any] = {"ca_file": str(broker.certs / "ca.crt")}
        if device is not None:
            tls |= {
                "cert_file": str(broker.certs / f"{device}.crt"),
                "key_file": str(broker.certs / f"{device}.key"),
            }
        data["tls"] = tls
    data.update(overrides)
    return LinkConfig.model_validate(data)


TEST_INVENTORY = ROOT / "tests" / "data" / "fleet-inventory.toml"
"""Fleet f1: dev-a (group g1), dev-b (g2); fleet f2: dev-x (g1); operators `operator` and `operator-watch` (all
fleets), `ops-f1` (f1 only); repository user `repo` (f1)."""
UNLISTED_DEVICE = "dev-c"
"""Has a certificate from the test CA but is not in the inventory: the ACL grants it nothing."""


def make_test_certs(folder: Path) -> Path:
    """Runs scripts/make_certs.py with the test inventory (a certificate per identity, and `edge-fleet.acl`), plus
    dev-c (not in the inventory), an expired 'old-dev' and an unrelated CA."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_certs.py"),
            str(folder),
            "--inventory",
            str(TEST_INVENTORY),
            "--device",
            UNLISTED_DEVICE,
            "--expired",
            "old-dev",
            "--other-ca",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return folder


def kill_process(process: subprocess.Popen[Any]) -> None:
    """SIGKILLs a process we started (by pid) and reaps it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


# -- fixtures ---------------------------------------------------------------------------------------------------------


SHIPPED_MOSQUITTO = ROOT / "firmware-config" / "mosquitto"


def shipped_acl_broker(broker_factory: Callable[..., Broker], certs: Path, acl: Path | None = None) -> Broker:
    """Mosquitto running the shipped mosquitto.conf (mutual TLS) with the test PKI, on a free local port, and the ACL
    generated from the test inventory (`certs`/edge-fleet.acl), or `acl`."""
    conf = (SHIPPED_MOSQUITTO / "mosquitto.conf").read_text()
    acl_file = acl or certs / "edge-fleet.acl"

    def rewrite(port: int) -> str:
        text = conf.replace("listener 8883", f"listener {port} 127.0.0.1")
        text = text.replace("/etc/mosquitto/certs/", f"{certs}/")
        text = text.replace("/etc/mosquitto/edge-fleet.acl", str(acl_file))
        return f"user {getpass.getuser()}\nlog_dest stderr\nlog_type all\n{text}"

    return broker_factory(
        BrokerOptions(tls=True, require_certificate=True, use_identity_as_username=True),
        certs=certs,
        raw_config=rewrite,
    )


def start_link_agent(broker: Broker, state_dir: Path, device: str = "dev-a") -> subprocess.Popen[str]:
    """tests/link_agent.py as a real process with a connected Link (it printed `started` and `connected`)."""
    spec = {
        "config": link_config(broker).model_dump(mode="json"),
        "identity": {"device": device, "fleet": FLEET},
        "state_dir": str(state_dir),
        "wait_connected": True,
    }
    agent = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "link_agent.py"), json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert agent.stdout is not None
    assert agent.stdout.readline().strip() == "started"
    assert agent.stdout.readline().strip() == "connected"
    return agent


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test PKI (CA, broker for 127.0.0.1, every identity of the test inventory, dev-c, expired old-dev,
    other-ca, stranger) and the ACL rendered from the inventory (edge-fleet.acl)."""
    return make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Makes and starts brokers (`options`, `certs=`); stops them all at the end of the test."""
    started: list[Broker] = []

    def make(
        options: BrokerOptions | None = None,
        certs: Path | None = None,
        start: bool = True,
        raw_config: Callable[[int], str] | None = None,
    ) -> Broker:
        broker = Broker(tmp_path / f"broker{len(started)}", options, certs, raw_config)
        started.append(broker)
        return broker.start() if start else broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A plain, anonymous Mosquitto on a free port."""
    return broker_factory()


@pytest.fixture
def links(tmp_path: Path) -> Iterator[Callable[..., Link]]:
    """Makes and starts Links (device dev-a, fleet f1, a state dir per device); stops them at the end of the test."""
    started: list[Link] = []

    def make(
        config: LinkConfig,
        device: str = "dev-a",
        state_dir: Path | None = None,
        start: bool = True,
        **kwargs: Any,
    ) -> Link:
        link = Link(
            config,
            DeviceIdentity(device=device, fleet=FLEET, group="g1"),
            state_dir or tmp_path / f"state-{device}",
            **kwargs,
        )
        started.append(link)
        if start:
            link.start()
        return link

    yield make
    for link in started:
        link.stop()


@pytest.fixture
def observers() -> Iterator[Callable[..., MosquittoSub]]:
    """Starts `mosquitto_sub` observers; ends them at the end of the test."""
    started: list[MosquittoSub] = []

    def make(
        broker: Broker, topics: list[str], *extra: str, client_id: str | None = None, cert: str | None = None
    ) -> MosquittoSub:
        observer = MosquittoSub(broker, topics, *extra, client_id=client_id, cert=cert)
        started.append(observer)
        return observer

    yield make
    for observer in started:
        observer.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., PahoPeer]]:
    """Connects paho peers (operators, other devices); disconnects them at the end of the test."""
    started: list[PahoPeer] = []

    def make(broker: Broker, client_id: str, **kwargs: Any) -> PahoPeer:
        peer = PahoPeer(broker, client_id, **kwargs)
        started.append(peer)
        return peer

    yield make
    for peer in started:
        peer.close()
