"""The link's pure parts: topic layout and id rules, payload models, results policies, command router, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from agent.backoff import Backoff
from agent.link import (
    COMMAND_ARGS,
    CommandError,
    CommandLimits,
    CommandReply,
    CommandRouter,
    DeviceIdentity,
    Event,
    LinkConfig,
    LinkSetupError,
    PayloadError,
    ResultGate,
    ResultsPolicy,
    SetLogLevelArgs,
    Status,
    Telemetry,
    TlsConfig,
    TopicError,
    Topics,
    parse,
    resolve_password,
)
from agent.link.state import BirthCounter

# -- topics -------------------------------------------------------------------------------------------------------------


def test_topics_follow_the_design_layout() -> None:
    topics = Topics("cam-01", "acme", "lobby")
    assert topics.status == "edge/acme/devices/cam-01/status"
    assert topics.telemetry == "edge/acme/devices/cam-01/telemetry"
    assert topics.events == "edge/acme/devices/cam-01/events"
    assert topics.results == "edge/acme/devices/cam-01/results"
    assert topics.desired == "edge/acme/devices/cam-01/desired"
    assert topics.cmd("ping") == "edge/acme/devices/cam-01/cmd/ping"
    assert topics.cmd_filter == "edge/acme/devices/cam-01/cmd/+"
    assert topics.cmd_reply("ping") == "edge/acme/devices/cam-01/cmd/ping/reply"
    assert topics.group_desired() == "edge/acme/groups/lobby/desired"
    assert topics.blocks("s1") == "edge/acme/devices/cam-01/blocks/s1"
    assert topics.repo_get == "edge/acme/repo/get"


@pytest.mark.parametrize(
    "topic",
    [
        "edge/acme/devices/cam-01/status",
        "edge/acme/devices/cam-01/cmd/set-config",
        "edge/acme/devices/cam-01/cmd/ping/reply",
        "edge/acme/groups/lobby/desired",
        "edge/acme/devices/cam-01/blocks/s1",
        "edge/acme/repo/get",
    ],
)
def test_every_built_topic_parses_back(topic: str) -> None:
    assert Topics("cam-01", "acme", "lobby").parse(topic) is not None


def test_parse_names_the_command_and_the_device() -> None:
    parsed = Topics("cam-01", "acme", "g").parse("edge/acme/devices/cam-02/cmd/snapshot")
    assert parsed is not None
    assert (parsed.kind, parsed.device, parsed.name) == ("cmd", "cam-02", "snapshot")


@pytest.mark.parametrize(
    "topic",
    [
        "edge/other/devices/cam-01/status",
        "edge/acme/devices/cam-01/bogus",
        "edge/acme/devices//status",
        "edge/acme/releases/digits/7",
        "edge/acme/devices/cam-01/cmd/$SYS",
        "edge/acme",
    ],
)
def test_topics_outside_the_layout_parse_to_none(topic: str) -> None:
    assert Topics("cam-01", "acme", "g").parse(topic) is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "$SYS", "a b", "x" * 65, "café", "-lead", "a\x00b"])
def test_device_ids_that_could_escape_their_subtree_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        Topics(bad, "acme", "g")
    with pytest.raises(ValidationError):
        DeviceIdentity(device=bad, fleet="acme")


@pytest.mark.parametrize(
    "bad", ["edge/{fleet}", "edge/{device}/", "$aws/{fleet}/", "/edge/", "edge//x/", "e/+/"]
)
def test_bad_topic_prefixes_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        LinkConfig(topic_prefix=bad)


def test_prefix_may_be_empty_or_custom() -> None:
    assert Topics("d1", "f1", "g", "").status == "devices/d1/status"
    assert Topics("d1", "f1", "g", "site-3/{fleet}/").events == "site-3/f1/devices/d1/events"


def test_session_and_command_names_are_validated() -> None:
    topics = Topics("d1", "f1", "g")
    with pytest.raises(TopicError):
        topics.blocks("a/b")
    with pytest.raises(TopicError):
        topics.cmd("a/b")


# -- payloads -----------------------------------------------------------------------------------------------------------


def test_every_payload_carries_the_schema_field_on_the_wire() -> None:
    status = Status(state="online", device="d1", birth=3, time=1.0, agent_version="0.1.0")
    data = json.loads(status.to_bytes())
    assert data["schema"] == 1
    assert "schema_" not in data


def test_events_get_unique_ids() -> None:
    ids = {Event(type="drift", message="m").id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 for i in ids)


def test_event_type_and_severity_are_closed_sets() -> None:
    with pytest.raises(ValidationError):
        Event(type="gossip", message="m")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Event(type="error", severity="meh", message="m")  # type: ignore[arg-type]


def test_telemetry_accepts_numpy_scalars_in_metrics() -> None:
    telemetry = Telemetry(
        device="d", time=1.0, seq=0, uptime_s=1.0, metrics={"fps": np.float32(2.5), "n": np.int64(3)}
    )
    assert json.loads(telemetry.to_bytes())["metrics"] == {"fps": 2.5, "n": 3}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[1, 2]", "payload"),
        (b'{"schema": 99}', "schema"),
        (b'{"args": 5}', "args"),
        (b'{"surprise": 1}', "surprise"),
    ],
)
def test_bad_json_becomes_a_typed_error_not_a_traceback(data: bytes, fragment: str) -> None:
    from agent.link import CommandRequest

    with pytest.raises(PayloadError) as caught:
        parse(CommandRequest, data)
    assert fragment in caught.value.reason
    assert "\n" not in caught.value.reason


def test_command_arg_models_are_in_one_place() -> None:
    assert set(COMMAND_ARGS) == {
        "ping",
        "get-config",
        "set-config",
        "snapshot",
        "restart-pipeline",
        "set-log-level",
        "set-results-policy",
        "reset-baseline",
        "sample-list",
        "sample-chunk",
        "sample-confirm",
        "models-list",
        "activate",
        "rollback",
    }
    with pytest.raises(ValidationError):
        COMMAND_ARGS["set-log-level"].model_validate({"level": "LOUD"})
    assert COMMAND_ARGS["set-results-policy"].model_validate({"mode": "every"})


# -- results policy ----------------------------------------------------------------------------------------------------


def test_policy_every_sends_everything_without_cap() -> None:
    gate = ResultGate(ResultsPolicy(mode="every", max_per_s=None), now=0.0)
    assert all(gate.admit(i * 0.001, key="same") for i in range(100))


def test_policy_on_change_sends_only_changes() -> None:
    gate = ResultGate(ResultsPolicy(mode="on_change", max_per_s=None), now=0.0)
    keys = ["cat", "cat", "dog", "dog", "dog", "cat", ("det", ("a", "b")), ("det", ("a", "b"))]
    sent = [key for i, key in enumerate(keys) if gate.admit(float(i), key=key)]
    assert sent == ["cat", "dog", "cat", ("det", ("a", "b"))]
    assert gate.counters.held == {"unchanged": 4}


def test_policy_on_change_capped_change_goes_out_later() -> None:
    gate = ResultGate(ResultsPolicy(mode="on_change", max_per_s=1.0), now=0.0)
    assert gate.admit(0.0, key="a")
    assert not gate.admit(0.1, key="b")  # capped, not forgotten
    assert gate.admit(1.2, key="b")


def test_policy_above_threshold() -> None:
    gate = ResultGate(ResultsPolicy(mode="above_threshold", threshold=0.8, max_per_s=None), now=0.0)
    assert [gate.admit(0.0, score=s) for s in (0.1, 0.8, 0.95, None, float("nan"))] == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_policy_max_rate_caps_per_second() -> None:
    gate = ResultGate(ResultsPolicy(mode="max_rate", max_per_s=5.0), now=0.0)
    sent = sum(gate.admit(i / 100.0) for i in range(300))  # 100 results per second for 3 s
    assert 15 <= sent <= 20  # 5 per second plus the initial burst of 5


def test_policy_modes_need_their_parameters() -> None:
    with pytest.raises(ValidationError):
        ResultsPolicy(mode="above_threshold")
    with pytest.raises(ValidationError):
        ResultsPolicy(mode="max_rate", max_per_s=None)
    with pytest.raises(ValidationError):
        ResultsPolicy(mode="sometimes")  # type: ignore[arg-type]


def test_policy_survives_keys_with_a_broken_eq() -> None:
    class Weird:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        __hash__ = object.__hash__

    gate = ResultGate(ResultsPolicy(mode="on_change", max_per_s=None), now=0.0)
    assert gate.admit(0.0, key=Weird())
    assert gate.admit(1.0, key=Weird())


# -- command router -----------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(router: CommandRouter, name: str, payload: bytes, correlation: bytes | None = None) -> CommandReply:
    request = router.accept(name, payload, correlation)
    assert request is not None
    reply = router.run(request)
    assert CommandReply.model_validate_json(reply.payload).status == reply.reply.status
    return reply.reply


def test_router_ping_echoes_correlation() -> None:
    reply = run(CommandRouter(), "ping", b"", correlation=b"op-17")
    assert (reply.status, reply.correlation, reply.data["pong"]) == ("ok", "op-17", True)


def test_router_request_id_is_echoed_for_clients_without_correlation_data() -> None:
    assert run(CommandRouter(), "ping", b'{"id": "r-1"}').correlation == "r-1"


def test_router_binary_correlation_is_echoed_as_hex() -> None:
    assert run(CommandRouter(), "ping", b"", correlation=b"\x00\xff").correlation == "00ff"


def test_router_malformed_json_gets_an_error_reply() -> None:
    reply = run(CommandRouter(), "ping", b"{oops")
    assert reply.status == "error"
    assert reply.reason is not None and "invalid JSON" in reply.reason


def test_router_unknown_command_gets_an_error_reply_naming_known_ones() -> None:
    reply = run(CommandRouter(), "self-destruct", b"{}")
    assert reply.status == "error"
    assert reply.reason is not None and "unknown command" in reply.reason and "ping" in reply.reason


def test_router_wrong_arg_types_get_an_error_reply() -> None:
    router = CommandRouter()
    router.register("set-log-level", lambda args: {"level": args.level}, SetLogLevelArgs)
    reply = run(router, "set-log-level", b'{"args": {"level": 5}}')
    assert reply.status == "error"
    assert reply.reason is not None and "level" in reply.reason
    assert run(router, "set-log-level", b'{"args": {"level": "DEBUG"}}').data == {"level": "DEBUG"}


def test_router_oversize_payload_is_discarded_and_answered() -> None:
    router = CommandRouter(CommandLimits(max_payload_bytes=100))
    request = router.accept("ping", b"x" * 101)
    assert request is not None and request.payload == b""
    reply = router.run(request).reply
    assert reply.status == "error" and reply.reason is not None and "too large" in reply.reason


def test_router_handler_exceptions_become_error_replies() -> None:
    router = CommandRouter()

    def refuses(_args: BaseModel) -> dict[str, Any]:
        raise CommandError("pipeline is not running")

    def crashes(_args: BaseModel) -> dict[str, Any]:
        raise ZeroDivisionError("boom")

    def returns_junk(_args: BaseModel) -> dict[str, Any]:
        return {"handle": open}  # not JSON

    router.register("restart-pipeline", refuses, COMMAND_ARGS["restart-pipeline"])
    router.register("crash", crashes, COMMAND_ARGS["ping"])
    router.register("junk", returns_junk, COMMAND_ARGS["ping"])
    assert run(router, "restart-pipeline", b"").reason == "pipeline is not running"
    crash = run(router, "crash", b"")
    assert crash.status == "error" and crash.reason is not None and "ZeroDivisionError" in crash.reason
    assert run(router, "junk", b"").status in (
        "ok",
        "error",
    )  # serialized as a string or refused, never raised
    stats = router.stats()
    assert stats["received"] == stats["ok"] + stats["error"]


def test_router_flood_is_rate_limited_and_counted() -> None:
    clock = Clock()
    router = CommandRouter(CommandLimits(rate_per_min=60, burst=5), clock=clock)
    accepted = [router.accept("ping", b"") for _ in range(50)]
    assert sum(r is not None for r in accepted) == 5
    clock.now += 2.0
    assert router.accept("ping", b"") is not None  # refilled at 1 per second
    assert router.stats()["dropped"] == {"rate_limited": 45}


# -- config -------------------------------------------------------------------------------------------------------------


def test_link_is_off_by_default_and_tls_never_insecure_by_default() -> None:
    config = LinkConfig()
    assert config.enabled is False
    assert config.effective_port == 1883
    tls = LinkConfig(tls=TlsConfig())
    assert tls.effective_port == 8883
    assert tls.tls is not None and tls.tls.insecure is False
    assert config.clean_start is False and config.session_expiry_s > 0


def test_config_refuses_unknown_keys_and_half_a_client_certificate() -> None:
    with pytest.raises(ValidationError):
        LinkConfig.model_validate({"hots": "broker"})
    with pytest.raises(ValidationError):
        TlsConfig(cert_file=Path("a.crt"))
    with pytest.raises(ValidationError):
        LinkConfig.model_validate({"password": "hunter2"})  # never in the config tree


def test_every_config_field_has_a_description() -> None:
    from agent.link import config as config_module

    models = [getattr(config_module, name) for name in config_module.__all__]
    for model in [m for m in models if isinstance(m, type) and issubclass(m, BaseModel)]:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"


def test_password_sources_in_order(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd")
    config = LinkConfig(password_file=file)
    assert resolve_password(LinkConfig(), {}) is None
    assert resolve_password(config, {}).get_secret_value() == "from-file"  # type: ignore[union-attr]
    secret = resolve_password(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert secret is not None and secret.get_secret_value() == "from-systemd"
    secret = resolve_password(
        config, {"CREDENTIALS_DIRECTORY": str(creds), "EDGE_AGENT_MQTT_PASSWORD": "env"}
    )
    assert secret is not None and secret.get_secret_value() == "env"
    assert "env" not in repr(secret) and "env" not in str(secret)


def test_unreadable_password_file_is_a_clear_error_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(LinkSetupError, match="cannot read"):
        resolve_password(LinkConfig(password_file=tmp_path / "missing"), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(LinkSetupError, match="empty"):
        resolve_password(LinkConfig(password_file=tmp_path / "empty"), {})


def test_backoff_doubles_to_the_cap_with_jitter_either_side() -> None:
    from agent.link import BackoffConfig

    backoff = Backoff(BackoffConfig(initial_s=1, max_s=8, jitter=0.5))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, base in zip(delays, [1, 2, 4, 8, 16, 32], strict=True):
        assert min(8, base * 0.5) <= delay <= min(8, base * 1.5)
    backoff.reset()
    assert backoff.next_delay() <= 1.5


def test_birth_counter_grows_across_instances_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    counter = BirthCounter(tmp_path)
    assert counter.peek_next() == 1
    counter.commit(1)
    counter.commit(1)
    assert BirthCounter(tmp_path).peek_next() == 2
    counter.path.write_text("{garbage")
    assert BirthCounter(tmp_path).peek_next() > 2
