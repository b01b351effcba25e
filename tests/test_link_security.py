"""Who may connect and what they may touch: TLS, mutual TLS, bad certificates, bad passwords, and the fleet ACL
generated from an inventory (agent/fleet/acl.py) under the shipped firmware-config/mosquitto/mosquitto.conf, against a
real Mosquitto, the PKI from scripts/make_certs.py, and mosquitto_pub / mosquitto_sub as independent clients."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.link import Event, Link

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    TEST_INVENTORY,
    UNLISTED_DEVICE,
    Broker,
    BrokerOptions,
    MosquittoSub,
    PahoPeer,
    link_config,
    mosquitto_pub,
    needs_mosquitto,
    shipped_acl_broker,
)

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

SHIPPED = ROOT / "firmware-config" / "mosquitto"
DEV_A = f"edge/{FLEET}/devices/dev-a"


def wait_refused(link: Link, timeout_s: float = 10.0) -> str:
    """Waits until the link reports `refused`; returns the reason."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = link.state()
        if status.state == "refused":
            assert status.reason is not None
            return status.reason
        time.sleep(0.05)
    raise AssertionError(f"not refused: {link.state()}")


def errors_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name == "agent.link" and r.levelno >= logging.ERROR
    )


def test_tls_with_the_fleet_ca_connects(
    broker_factory: Callable[..., Broker],
    certs: Path,
    links: Callable[..., Link],
    observers: Callable[..., MosquittoSub],
) -> None:
    broker = broker_factory(BrokerOptions(tls=True), certs=certs)
    watcher = observers(broker, [f"{DEV_A}/events"])
    link = links(link_config(broker))
    assert link.wait_connected(10), link.state()
    event = Event(type="model", message="over TLS")
    link.publish_event(event)
    assert json.loads(watcher.wait_for(lambda m: True, 10).payload)["id"] == event.id


def test_mutual_tls_connects_as_the_certificate_identity(
    broker_factory: Callable[..., Broker], certs: Path, links: Callable[..., Link]
) -> None:
    broker = broker_factory(
        BrokerOptions(tls=True, require_certificate=True, use_identity_as_username=True), certs=certs
    )
    link = links(link_config(broker, device="dev-a"))
    assert link.wait_connected(10), link.state()
    assert "New client connected" in broker.log() and "u'dev-a'" in broker.log()


def test_broker_certificate_from_another_ca_is_refused_with_a_clear_log_line(
    broker_factory: Callable[..., Broker],
    certs: Path,
    links: Callable[..., Link],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = broker_factory(BrokerOptions(tls=True), certs=certs)
    config = link_config(broker, tls={"ca_file": str(certs / "other-ca.crt")})
    link = links(config)
    reason = wait_refused(link)
    assert "certificate verify failed" in reason and "not signed by tls.ca_file" in reason
    assert "certificate verify failed" in errors_logged(caplog)
    assert link.state().connects == 0


def test_expired_client_certificate_is_refused(
    broker_factory: Callable[..., Broker],
    certs: Path,
    links: Callable[..., Link],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = broker_factory(
        BrokerOptions(tls=True, require_certificate=True, use_identity_as_username=True), certs
    )
    link = links(link_config(broker, device="old-dev"))
    reason = wait_refused(link)
    assert "expired" in reason
    assert "expired" in errors_logged(caplog)
    assert link.state().connects == 0


def test_client_certificate_from_an_unknown_ca_is_refused(
    broker_factory: Callable[..., Broker], certs: Path, links: Callable[..., Link]
) -> None:
    broker = broker_factory(
        BrokerOptions(tls=True, require_certificate=True, use_identity_as_username=True), certs
    )
    link = links(link_config(broker, device="stranger"))
    reason = wait_refused(link)
    assert "client certificate" in reason
    assert "certificate verify failed" in broker.log()  # the broker's side of the story


def test_missing_client_certificate_is_refused(
    broker_factory: Callable[..., Broker], certs: Path, links: Callable[..., Link]
) -> None:
    broker = broker_factory(
        BrokerOptions(tls=True, require_certificate=True, use_identity_as_username=True), certs
    )
    link = links(link_config(broker))  # CA only, no client certificate
    reason = wait_refused(link)
    assert "TLS failed" in reason


def test_wrong_password_is_refused_with_a_clear_log_line_and_never_logged(
    broker_factory: Callable[..., Broker],
    links: Callable[..., Link],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = broker_factory(
        BrokerOptions(allow_anonymous=False, passwords={"dev-a": "correct-horse-battery"})
    )
    wrong = "Wr0ng-s3cret-PW"
    link = links(link_config(broker), environ={"EDGE_AGENT_MQTT_PASSWORD": wrong})
    reason = wait_refused(link)
    # Mosquitto 2.0 answers a wrong password with 135 "Not authorized"; others use 134 "Bad user name or password".
    assert "Not authorized" in reason or "Bad user name or password" in reason
    assert link.state().rc in (134, 135)
    assert "password" in reason and reason in errors_logged(caplog)
    exposed = caplog.text + repr(link.config) + json.dumps(link.stats()) + link.config.model_dump_json()
    assert wrong not in exposed
    link.stop()

    right = tmp_path / "mqtt-password"
    right.write_text("correct-horse-battery\n")
    good = links(link_config(broker, password_file=str(right)), state_dir=tmp_path / "other", environ={})
    assert good.wait_connected(10), good.state()
    assert "correct-horse-battery" not in caplog.text


def test_unknown_user_is_refused_when_anonymous_is_off(
    broker_factory: Callable[..., Broker], links: Callable[..., Link]
) -> None:
    broker = broker_factory(BrokerOptions(allow_anonymous=False, passwords={"someone-else": "x"}))
    link = links(link_config(broker), environ={})
    assert "reason code 13" in wait_refused(link)  # 134 bad user name or password, or 135 not authorized


def test_shipped_acl_lets_a_device_do_its_whole_job(
    broker_factory: Callable[..., Broker],
    certs: Path,
    links: Callable[..., Link],
    peers: Callable[..., PahoPeer],
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    operator = peers(broker, "operator", device_cert="operator")
    assert all(not r.is_failure for r in operator.subscribe(f"edge/{FLEET}/#"))
    link = links(link_config(broker, device="dev-a", telemetry={"interval_s": 0.2}), telemetry_source=dict)
    assert link.wait_connected(10), link.state()
    link.publish_event(Event(type="model", message="allowed"))
    link.publish_result({"label": "cat"}, seq=1, key="cat")
    topics: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not {"status", "events", "results", "telemetry", "reply"} <= topics:
        message = operator.next_message()
        level = message.topic.split("/")[4]
        if level == "status" and "status" not in topics:  # online: commands are subscribed by now
            operator.publish(
                f"{DEV_A}/cmd/ping", b"", response_topic=f"{DEV_A}/reply/operator", correlation=b"x"
            )
        topics.add(level)
    assert {"status", "events", "results", "telemetry", "reply"} <= topics
    assert link.stats()["outbox"]["dropped"] == {}  # nothing the device sent was refused


def test_device_cannot_publish_to_or_read_another_devices_topics(
    broker_factory: Callable[..., Broker],
    certs: Path,
    links: Callable[..., Link],
    peers: Callable[..., PahoPeer],
    observers: Callable[..., MosquittoSub],
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    link = links(link_config(broker, device="dev-a"))
    assert link.wait_connected(10), link.state()
    time.sleep(0.3)
    intruder = peers(broker, "dev-b", device_cert="dev-b")

    # Mosquitto 2.0 grants the subscription but never delivers what the ACL forbids: checked below by delivery.
    intruder.subscribe(f"{DEV_A}/cmd/+")
    intruder.subscribe(f"{DEV_A}/#")
    # Forging dev-a's events, status, or a command to it is refused.
    for topic in (f"{DEV_A}/events", f"{DEV_A}/status", f"{DEV_A}/cmd/restart-pipeline", f"{DEV_A}/desired"):
        reason = intruder.publish(topic, b'{"forged": true}')
        assert reason.is_failure, topic
    # A device cannot set its own desired state either, nor send commands to itself.
    assert intruder.publish(f"edge/{FLEET}/devices/dev-b/desired", b"{}").is_failure
    assert intruder.publish(f"edge/{FLEET}/devices/dev-b/cmd/ping", b"{}").is_failure
    # But it may do its own job.
    assert not intruder.publish(f"edge/{FLEET}/devices/dev-b/events", b"{}").is_failure

    # An operator's command reaches dev-a and only dev-a. (The broker forces the client id to the certificate's name:
    # each operator tool has an identity of its own, see test_fleet_cli.py's side-by-side test.)
    operator = peers(broker, "operator", device_cert="operator")
    operator.subscribe(f"{DEV_A}/#")
    operator.publish(f"{DEV_A}/cmd/ping", b"", response_topic=f"{DEV_A}/reply/operator", correlation=b"op")
    link.publish_event(Event(type="model", message="for operators only"))
    seen = []
    while not any(b"for operators only" in m.payload for m in seen) or not any(
        b'"pong"' in m.payload for m in seen
    ):
        seen.append(operator.next_message(timeout_s=5))
    with pytest.raises(AssertionError):  # neither the command, the reply nor the event reached dev-b
        intruder.next_message(timeout_s=0.5)
    assert not any(b"forged" in m.payload for m in seen)
    assert link.router.stats()["received"] == 1


# -- the generated ACL: fleets, groups, operators, the repository, reloading -----------------------------------------

F2 = "edge/f2"
REFUSED = "Not authorized"


def test_shipped_example_acl_loads_in_mosquitto(broker_factory: Callable[..., Broker], certs: Path) -> None:
    broker = shipped_acl_broker(broker_factory, certs, acl=SHIPPED / "edge-fleet.acl")
    assert "Error" not in broker.log(), broker.log()


def test_device_cannot_publish_into_or_be_commanded_through_another_fleets_tree(
    broker_factory: Callable[..., Broker], certs: Path, observers: Callable[..., MosquittoSub]
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    # (Every client here has an identity of its own: one identity is one client id, and a second connection with it
    # would take the first one's session over.)
    other_fleet = observers(broker, [f"{F2}/#"], cert="operator-watch")
    own_fleet = observers(broker, [f"edge/{FLEET}/#"], cert="ops-f1")
    # dev-a's own subtree in fleet f2 (the probe's gap: `pattern write edge/+/devices/%u/events`), and f2's shared
    # topics: all refused.
    for topic in (f"{F2}/devices/dev-a/events", f"{F2}/devices/dev-a/status", f"{F2}/repo/get"):
        result = mosquitto_pub(broker, topic, "cross-fleet", cert="dev-a")
        assert REFUSED in result.stderr, (topic, result.stderr)
    # The same device, the same connection settings, its own fleet: delivered.
    result = mosquitto_pub(broker, f"{DEV_A}/events", "own-fleet", cert="dev-a")
    assert result.returncode == 0 and REFUSED not in result.stderr, result.stderr
    assert own_fleet.wait_for(lambda m: m.payload == b"own-fleet").topic == f"{DEV_A}/events"
    assert [m for m in other_fleet.collect(quiet_s=0.5) if m.payload == b"cross-fleet"] == []
    assert broker.log().count("Denied PUBLISH from dev-a") == 3

    # Nor can anyone who may write fleet f2 reach dev-a through f2's tree: it reads only its own fleet's topics.
    device = observers(broker, ["edge/+/devices/dev-a/#"], cert="dev-a")
    for topic in (f"{F2}/devices/dev-a/cmd/ping", f"{F2}/devices/dev-a/desired", f"{F2}/devices/dev-a/blocks/s"):
        assert REFUSED not in mosquitto_pub(broker, topic, "via-f2", cert="operator").stderr
    for topic in (f"{DEV_A}/cmd/ping", f"{DEV_A}/blocks/s"):
        assert REFUSED not in mosquitto_pub(broker, topic, "via-f1", cert="operator").stderr
    seen = device.collect(quiet_s=0.5)
    assert sorted(m.topic for m in seen if m.payload == b"via-f1") == [f"{DEV_A}/blocks/s", f"{DEV_A}/cmd/ping"]
    assert [m.topic for m in seen if m.payload == b"via-f2"] == []


def test_device_reads_only_the_desired_state_of_its_own_groups(
    broker_factory: Callable[..., Broker], certs: Path, observers: Callable[..., MosquittoSub]
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    dev_a = observers(broker, ["edge/+/groups/+/desired"], cert="dev-a")  # dev-a is in group g1 of fleet f1
    dev_b = observers(broker, ["edge/+/groups/+/desired"], cert="dev-b")  # dev-b is in group g2 of fleet f1
    for topic in (
        f"edge/{FLEET}/groups/g1/desired",
        f"edge/{FLEET}/groups/g2/desired",
        f"{F2}/groups/g1/desired",
    ):
        assert REFUSED not in mosquitto_pub(broker, topic, topic, cert="operator", retain=True).stderr
    assert sorted(m.topic for m in dev_a.collect(quiet_s=0.5)) == [f"edge/{FLEET}/groups/g1/desired"]
    assert sorted(m.topic for m in dev_b.collect(quiet_s=0.5)) == [f"edge/{FLEET}/groups/g2/desired"]
    # Retained desired state is filtered the same way when a device subscribes after it was set.
    dev_b.close()
    late = observers(broker, ["edge/+/groups/+/desired"], cert="dev-b")
    assert [(m.topic, m.retain) for m in late.collect(quiet_s=0.5)] == [
        (f"edge/{FLEET}/groups/g2/desired", True)
    ]
    # And no device may set a group's desired state.
    assert REFUSED in mosquitto_pub(broker, f"edge/{FLEET}/groups/g1/desired", "{}", cert="dev-a").stderr


def test_operator_limited_to_one_fleet_sees_and_commands_nothing_of_another(
    broker_factory: Callable[..., Broker], certs: Path, observers: Callable[..., MosquittoSub]
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    limited = observers(broker, ["edge/#"], cert="ops-f1")
    everything = observers(broker, ["edge/#"], cert="operator")
    assert REFUSED not in mosquitto_pub(broker, f"{DEV_A}/events", "f1-event", cert="dev-a").stderr
    assert REFUSED not in mosquitto_pub(broker, f"{F2}/devices/dev-x/events", "f2-event", cert="dev-x").stderr
    assert sorted(m.payload for m in everything.collect(quiet_s=0.5)) == [b"f1-event", b"f2-event"]
    assert [m.topic for m in limited.collect(quiet_s=0.5)] == [f"{DEV_A}/events"]
    limited.close()
    # It may command fleet f1's devices, not fleet f2's.
    assert REFUSED not in mosquitto_pub(broker, f"{DEV_A}/cmd/ping", "", cert="ops-f1").stderr
    assert REFUSED in mosquitto_pub(broker, f"{F2}/devices/dev-x/cmd/ping", "", cert="ops-f1").stderr
    assert REFUSED in mosquitto_pub(broker, f"{F2}/groups/g1/desired", "{}", cert="ops-f1").stderr


def test_repository_user_serves_only_its_fleets_and_does_nothing_else(
    broker_factory: Callable[..., Broker],
    certs: Path,
    observers: Callable[..., MosquittoSub],
    peers: Callable[..., PahoPeer],
) -> None:
    broker = shipped_acl_broker(broker_factory, certs)
    repo = peers(broker, "repo", device_cert="repo")  # serves fleet f1 only
    repo.subscribe("$share/repo/edge/+/repo/get")
    assert REFUSED not in mosquitto_pub(broker, f"{F2}/repo/get", "from-f2", cert="dev-x").stderr
    assert REFUSED not in mosquitto_pub(broker, f"edge/{FLEET}/repo/get", "from-f1", cert="dev-a").stderr
    request = repo.next_message()
    assert (request.topic, request.payload) == (f"edge/{FLEET}/repo/get", b"from-f1")
    with pytest.raises(AssertionError):  # fleet f2's request never reached it
        repo.next_message(timeout_s=0.5)
    # Blocks to fleet f1's devices: delivered. To fleet f2's: refused.
    dev_a_blocks = observers(broker, [f"{DEV_A}/blocks/#"], cert="dev-a")
    dev_x_blocks = observers(broker, [f"{F2}/devices/dev-x/blocks/#"], cert="dev-x")
    assert not repo.publish(f"{DEV_A}/blocks/0", b"block-0").is_failure
    assert dev_a_blocks.wait_for(lambda m: m.payload == b"block-0").topic == f"{DEV_A}/blocks/0"
    assert repo.publish(f"{F2}/devices/dev-x/blocks/0", b"block-x").is_failure
    assert dev_x_blocks.collect(quiet_s=0.5) == []
    # Nothing beyond its job: no commands, no desired state, no device's reports.
    for topic in (
        f"{DEV_A}/cmd/ping",
        f"{DEV_A}/desired",
        f"edge/{FLEET}/groups/g1/desired",
        f"{DEV_A}/status",
    ):
        assert repo.publish(topic, b"{}").is_failure, topic


def test_a_device_added_to_the_inventory_is_admitted_on_sighup_without_a_restart(
    broker_factory: Callable[..., Broker],
    certs: Path,
    observers: Callable[..., MosquittoSub],
    peers: Callable[..., PahoPeer],
    tmp_path: Path,
) -> None:
    inventory = tmp_path / "inventory.toml"
    shutil.copyfile(TEST_INVENTORY, inventory)
    acl = tmp_path / "edge-fleet.acl"

    def render() -> None:
        make_acl = [sys.executable, str(ROOT / "scripts" / "make_acl.py"), str(inventory), "-o", str(acl)]
        subprocess.run(make_acl, check=True, capture_output=True, timeout=60)

    render()
    broker = shipped_acl_broker(broker_factory, certs, acl=acl)
    pid = broker.process.pid if broker.process else None
    watcher = observers(broker, [f"edge/{FLEET}/devices/{UNLISTED_DEVICE}/#"], cert="operator")
    # Its certificate is valid, so it connects; but it may do nothing.
    newcomer = peers(broker, UNLISTED_DEVICE, device_cert=UNLISTED_DEVICE)
    assert newcomer.publish(f"edge/{FLEET}/devices/{UNLISTED_DEVICE}/events", b"before").is_failure

    with inventory.open("a") as handle:
        handle.write(f'\n[[fleets.{FLEET}.devices]]\nid = "{UNLISTED_DEVICE}"\ngroups = ["g1"]\n')
    render()
    broker.reload()
    # The same connection, the same broker process: now its own subtree is its own.
    assert not newcomer.publish(f"edge/{FLEET}/devices/{UNLISTED_DEVICE}/events", b"after").is_failure
    assert watcher.wait_for(lambda m: True).payload == b"after"
    assert [m.payload for m in watcher.collect(quiet_s=0.3)] == [b"after"]
    assert newcomer.publish(f"{DEV_A}/events", b"{}").is_failure  # and nothing else
    assert broker.process is not None and broker.process.pid == pid and broker.process.poll() is None
    assert watcher.process.poll() is None  # nobody was disconnected by the reload

    # Taking it out of the inventory again takes its rights away, at the next reload.
    inventory.write_text(TEST_INVENTORY.read_text())
    render()
    broker.reload()
    assert newcomer.publish(f"edge/{FLEET}/devices/{UNLISTED_DEVICE}/events", b"gone").is_failure
