"""Commands over a real Mosquitto: MQTT 5 response topic and correlation data, bad requests, a flood, slow handlers.

An operator (a paho peer) sends requests; replies are read by that peer and, independently, by `mosquitto_sub`.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.link import CommandError, CommandReply, Event, Link, SetLogLevelArgs, SnapshotArgs

pytest.register_assert_rewrite("broker")
from broker import (  # noqa: E402
    FLEET,
    MOSQUITTO_PUB,
    Broker,
    MosquittoSub,
    PahoPeer,
    link_config,
    needs_mosquitto,
)

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

ROOT_TOPIC = f"edge/{FLEET}/devices/dev-a"
REPLIES = f"{ROOT_TOPIC}/reply/op-1"


@pytest.fixture
def setup(
    broker: Broker,
    links: Callable[..., Link],
    peers: Callable[..., PahoPeer],
    observers: Callable[..., MosquittoSub],
) -> tuple[Link, PahoPeer, MosquittoSub]:
    """A connected device link (commands limited to 60/min, burst 10, 2 KiB), an operator, and an observer."""
    link = links(link_config(broker, commands={"rate_per_min": 60, "burst": 10, "max_payload_bytes": 2048}))
    assert link.wait_connected(10)
    operator = peers(broker, "op-1")
    operator.subscribe(REPLIES)
    operator.subscribe(f"{ROOT_TOPIC}/cmd/+/reply")
    watcher = observers(broker, [f"{ROOT_TOPIC}/reply/#", f"{ROOT_TOPIC}/cmd/+/reply"])
    return link, operator, watcher


def ask(operator: PahoPeer, name: str, payload: bytes | str = b"", correlation: bytes = b"c-1") -> Any:
    """Sends a command with a response topic and correlation data; returns the reply message."""
    operator.publish(f"{ROOT_TOPIC}/cmd/{name}", payload, response_topic=REPLIES, correlation=correlation)
    return operator.next_message()


def reply_of(message: Any) -> CommandReply:
    return CommandReply.model_validate_json(message.payload)


def test_ping_round_trip_with_response_topic_and_correlation_data(
    setup: tuple[Link, PahoPeer, MosquittoSub],
) -> None:
    _link, operator, watcher = setup
    message = ask(operator, "ping", b"", correlation=b"\x01req-42")
    reply = reply_of(message)
    assert message.topic == REPLIES
    assert message.properties.CorrelationData == b"\x01req-42"
    assert reply.status == "ok" and reply.command == "ping" and reply.data["pong"] is True
    assert reply.correlation == b"\x01req-42".hex()
    seen = watcher.wait_for(lambda m: m.topic == REPLIES, 5)  # the independent observer saw it too
    assert CommandReply.model_validate_json(seen.payload).status == "ok"


def test_request_without_response_topic_is_answered_on_cmd_reply(
    setup: tuple[Link, PahoPeer, MosquittoSub], broker: Broker
) -> None:
    _link, _operator, watcher = setup
    subprocess.run(
        [
            MOSQUITTO_PUB,
            *broker.url_args(),
            "-t",
            f"{ROOT_TOPIC}/cmd/ping",
            "-m",
            '{"id": "plain-1"}',
            "-q",
            "1",
        ],
        check=True,
        timeout=10,
    )
    seen = watcher.wait_for(lambda m: m.topic == f"{ROOT_TOPIC}/cmd/ping/reply", 5)
    reply = CommandReply.model_validate_json(seen.payload)
    assert (reply.status, reply.correlation) == ("ok", "plain-1")


@pytest.mark.parametrize(
    ("name", "payload", "fragment"),
    [
        ("ping", b"{not json", "invalid JSON"),
        ("ping", b"\xff\xfe\x00", "invalid JSON"),
        ("ping", b"[]", "payload"),
        ("format-disk", b"{}", "unknown command"),
        ("set-log-level", b'{"args": {"level": 3}}', "level"),
        ("set-log-level", b'{"args": {"level": "DEBUG", "extra": 1}}', "extra"),
        ("ping", b'{"args": {}, "schema": 7}', "schema"),
        ("ping", b'{"pad": "' + b"x" * 4096 + b'"}', "too large"),
    ],
    ids=[
        "malformed",
        "not-utf8",
        "not-object",
        "unknown",
        "wrong-type",
        "unknown-arg",
        "future-schema",
        "oversize",
    ],
)
def test_bad_requests_get_error_replies_and_the_link_keeps_running(
    setup: tuple[Link, PahoPeer, MosquittoSub], name: str, payload: bytes, fragment: str
) -> None:
    link, operator, _watcher = setup
    link.router.register("set-log-level", lambda args: {"level": args.level}, SetLogLevelArgs)
    reply = reply_of(ask(operator, name, payload))
    assert reply.status == "error"
    assert reply.reason is not None and fragment in reply.reason
    assert reply_of(ask(operator, "ping")).status == "ok"
    assert link.state().state == "connected"


def test_handler_failures_become_error_replies(setup: tuple[Link, PahoPeer, MosquittoSub]) -> None:
    link, operator, _watcher = setup

    def snapshot(args: SnapshotArgs) -> dict[str, Any]:
        if args.max_bytes is not None and args.max_bytes < 100:
            raise CommandError("max_bytes too small for a snapshot")
        raise RuntimeError("camera exploded")

    link.router.register("snapshot", snapshot, SnapshotArgs)
    refused = reply_of(ask(operator, "snapshot", b'{"args": {"max_bytes": 10}}'))
    assert (refused.status, refused.reason) == ("error", "max_bytes too small for a snapshot")
    crashed = reply_of(ask(operator, "snapshot", b"{}"))
    assert crashed.status == "error" and crashed.reason is not None and "RuntimeError" in crashed.reason
    assert link.stats()["commands"]["error"] == 2


def test_command_flood_is_rate_limited_counted_and_survived(
    setup: tuple[Link, PahoPeer, MosquittoSub], broker: Broker
) -> None:
    link, operator, _watcher = setup
    lines = "".join(json.dumps({"id": f"f{i}"}) + "\n" for i in range(300))
    subprocess.run(
        [MOSQUITTO_PUB, *broker.url_args(), "-t", f"{ROOT_TOPIC}/cmd/ping", "-l", "-q", "1"],
        input=lines.encode(),
        check=True,
        timeout=30,
    )
    deadline = time.monotonic() + 10
    while link.stats()["commands"]["received"] < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = link.stats()["commands"]
    assert stats["received"] == 300
    assert 10 <= stats["ok"] <= 20  # the burst, plus 1 per second while the flood lasted
    assert stats["dropped"]["rate_limited"] == 300 - stats["ok"] - stats["error"]
    replies = []
    while True:
        try:
            replies.append(operator.next_message(timeout_s=0.5))
        except AssertionError:
            break
    assert len(replies) == stats["ok"]  # the device did not flood back
    time.sleep(1.2)  # the bucket refills
    assert reply_of(ask(operator, "ping")).status == "ok"


def test_slow_handler_does_not_stall_publishing(
    setup: tuple[Link, PahoPeer, MosquittoSub], observers: Callable[..., MosquittoSub], broker: Broker
) -> None:
    link, operator, _watcher = setup
    release = threading.Event()
    link.router.register("restart-pipeline", lambda _args: {"ok": release.wait(10)}, SnapshotArgs)
    events = observers(broker, [f"{ROOT_TOPIC}/events"])
    operator.publish(f"{ROOT_TOPIC}/cmd/restart-pipeline", b"{}", response_topic=REPLIES, correlation=b"slow")
    time.sleep(0.2)
    event = Event(type="model", message="still talking")
    assert link.publish_event(event)
    events.wait_for(lambda m: event.id.encode() in m.payload, 5)  # sent while the handler blocks
    release.set()
    assert reply_of(operator.next_message()).status == "ok"
