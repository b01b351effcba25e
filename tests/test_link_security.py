"""Who may connect and what they may touch: TLS, mutual TLS, bad certificates, bad passwords, and the fleet ACL
shipped in firmware-config/mosquitto/, against a real Mosquitto and the PKI from scripts/make_certs.py."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.link import Event, Link

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    ROOT,
    Broker,
    BrokerOptions,
    MosquittoSub,
    PahoPeer,
    link_config,
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

    # An operator's command reaches dev-a and only dev-a. (One operator connection only: the broker forces the
    # client id to the certificate's name, so a second one would take this session over.)
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
