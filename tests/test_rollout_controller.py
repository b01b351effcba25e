"""`edge-fleet rollout`'s driver against a real Mosquitto and devices that speak the protocol (retained status with
the update's state and figures, retained desired state, the `rollback` command with its reply), each device's
behaviour chosen by the test: the controls (pause, resume, abort, take-over), the holds (inconclusive, timeout),
`--abort-on` figures, and a restart of the operator tool.

The devices here are stand-ins for speed (an agent takes seconds per release); tests/test_rollout_end_to_end.py runs
the same driver against four real agents."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client, MQTTMessage
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytest.register_assert_rewrite("broker")
from broker import Broker, needs_mosquitto  # noqa: E402
from conftest import ROOT  # noqa: E402

pytest_plugins = ["broker"]
pytestmark = needs_mosquitto

FLEET = "f1"
PREFIX = f"edge/{FLEET}/"


class Devices:
    """Stand-in devices of group g1 serving det v1: each answers a desired state as its behaviour says."""

    def __init__(self, broker: Broker, behaviour: dict[str, str]) -> None:
        self.behaviour = dict(behaviour)
        self.figures: dict[str, dict[str, Any]] = {}
        self.serving = dict.fromkeys(behaviour, 1)
        self.rollbacks: list[tuple[str, dict[str, Any]]] = []
        self.desired: dict[str, Any] = {}
        self.births = dict.fromkeys(behaviour, 1)
        self.lock = threading.Lock()
        self.client = Client(
            CallbackAPIVersion.VERSION2, client_id="stand-ins", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        for device in behaviour:
            self.status(device)
        self.client.subscribe([(f"{PREFIX}devices/+/desired", 1), (f"{PREFIX}devices/+/cmd/rollback", 1)])

    def status(self, device: str, state: str = "online", update: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {
            "schema": 1,
            "state": state,
            "device": device,
            "birth": self.births[device],
            "time": time.time(),
            "agent_version": "test",
            "model": {"name": "det", "version": self.serving[device]},
            "group": "g1",
            "sources": {},
        }
        if update is not None:
            payload["update"] = update
        self.client.publish(f"{PREFIX}devices/{device}/status", json.dumps(payload), qos=1, retain=True)

    def offline(self, device: str) -> None:
        self.status(device, "offline")

    def back(self, device: str) -> None:
        self.births[device] += 1
        self.status(device)

    def _on_message(self, _client: Client, _userdata: object, message: MQTTMessage) -> None:
        device = message.topic.split("/")[3]
        if device not in self.behaviour:
            return
        if message.topic.endswith("/desired"):
            if not message.payload:
                self.desired.pop(device, None)
                return
            desired = json.loads(message.payload)
            self.desired[device] = desired
            threading.Thread(target=self._update, args=(device, desired["version"]), daemon=True).start()
        elif message.topic.endswith("/cmd/rollback"):
            request = json.loads(message.payload)
            with self.lock:
                self.rollbacks.append((device, request["args"]))
            served = self.serving[device]
            ok = served == request["args"].get("version")
            if ok:
                self.serving[device] = 1
                self.status(
                    device,
                    update={"state": "rejected", "name": "det", "version": served, "reason": "rollback"},
                )
            reply = {
                "schema": 1,
                "correlation": request["id"],
                "command": "rollback",
                "status": "ok" if ok else "error",
                "reason": None if ok else "not in service",
                "data": {},
            }
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
            self.client.publish(
                message.properties.ResponseTopic, json.dumps(reply), qos=1, properties=properties
            )  # type: ignore[union-attr]

    def _update(self, device: str, version: int) -> None:
        if version == self.serving[device]:
            return
        behaviour = self.behaviour[device]
        brief = {"name": "det", "version": version}
        self.status(device, update={"state": "downloading", **brief})
        if behaviour == "silent":
            return
        time.sleep(0.2)
        if behaviour == "reject":
            self.status(device, update={"state": "rejected", "reason": "golden: output off", **brief})
        elif behaviour == "inconclusive":
            self.serving[device] = version
            self.status(device, update={"state": "trial", "verdict": "inconclusive", **brief})
        else:
            self.serving[device] = version
            figures = self.figures.get(device, {"agreement": 0.99, "latency_p95_ms": 3.0})
            self.status(device, update={"state": "committed", "verdict": "pass", "figures": figures, **brief})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def devices(broker: Broker, request: pytest.FixtureRequest) -> Iterator[Devices]:
    made = Devices(broker, request.param)
    yield made
    made.close()


def fleet_args(broker: Broker, client_id: str) -> list[str]:
    return [sys.executable, "-m", "agent.fleet", "--host", "127.0.0.1", "--port", str(broker.port), "--fleet", FLEET,
            "--client-id", client_id]  # fmt: skip


def rollout(
    broker: Broker, state: Path, *args: str, who: str = "bob", timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fleet_args(broker, who), "rollout", *args, "--state-dir", str(state)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def driver(broker: Broker, state: Path, *args: str, who: str = "alice") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*fleet_args(broker, who), "rollout", *args, "--state-dir", str(state)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def record(broker: Broker, state: Path, rollout_id: str = "det-v2-g1") -> dict[str, Any]:
    result = rollout(broker, state, "status", rollout_id, "--json", who="carol")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def wait_record(broker: Broker, state: Path, check: Any, what: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = rollout(broker, state, "status", "det-v2-g1", "--json", who="carol")
        if result.returncode == 0:
            data: dict[str, Any] = json.loads(result.stdout)
            if check(data):
                return data
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def finish(process: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the driver did not end:\n{output}") from None
    assert "Traceback" not in output, output
    return process.returncode, output


FOUR_GOOD = {f"cam-{n}": "commit" for n in range(1, 5)}
START = ("start", "det:2", "--group", "g1", "--waves", "25%,50%,100%", "--soak", "0s")


@pytest.mark.parametrize("devices", [FOUR_GOOD], indirect=True)
def test_a_completed_rollout_leaves_the_group_desiring_the_release_and_no_per_device_override(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    done = rollout(broker, tmp_path, *START)
    assert done.returncode == 0, done.stderr
    data = record(broker, tmp_path)
    assert data["state"] == "completed"
    assert [len(wave["devices"]) for wave in data["waves"]] == [1, 1, 2]
    assert all(wave["state"] == "passed" for wave in data["waves"])
    assert devices.serving == dict.fromkeys(FOUR_GOOD, 2)
    assert devices.desired == {}, "the per-device desired states were cleared"
    seen = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"{PREFIX}groups/g1/desired", "-C", "1", "-W", "5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert json.loads(seen.stdout)["version"] == 2
    again = rollout(broker, tmp_path, *START)
    assert again.returncode == 2 and "already ran" in again.stderr


@pytest.mark.parametrize("devices", [FOUR_GOOD], indirect=True)
def test_the_same_rollout_re_run_elsewhere_picks_the_same_devices_in_the_same_waves(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    plans = []
    for folder in ("one", "two"):
        done = rollout(broker, tmp_path / folder, *START, "--id", "same-plan")
        assert done.returncode == 0, done.stderr
        plans.append([wave["devices"] for wave in record(broker, tmp_path / folder, "same-plan")["waves"]])
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"{PREFIX}rollouts/same-plan", "-r", "-n"],
            check=True,
        )  # fmt: skip
    assert plans[0] == plans[1]


@pytest.mark.parametrize("devices", [FOUR_GOOD | {"cam-1": "silent"}], indirect=True)
def test_pause_from_another_terminal_stops_the_driver_and_resume_takes_it_to_the_end(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    running = driver(broker, tmp_path, *START, "--waves", "100%")
    wait_record(broker, tmp_path, lambda r: r["waves"][0]["state"] == "running", "the wave running")
    second = rollout(broker, tmp_path / "elsewhere", *START, "--waves", "100%")
    assert second.returncode == 2 and "exists" in second.stderr, "two operators cannot drive one rollout"
    paused = rollout(broker, tmp_path, "pause", "det-v2-g1", "--reason", "lunch")
    assert paused.returncode == 0, paused.stderr
    code, output = finish(running)
    assert code == 4, output
    assert record(broker, tmp_path)["state"] == "paused" and "lunch" in record(broker, tmp_path)["reason"]
    devices.behaviour["cam-1"] = "commit"
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", f"{PREFIX}devices/cam-1/desired", "-r",
         "-m", json.dumps({"schema": 1, "model": "det", "version": 2})],
        check=True,
    )  # fmt: skip
    resumed = rollout(broker, tmp_path, "resume", "det-v2-g1")
    assert resumed.returncode == 0, resumed.stderr
    assert record(broker, tmp_path)["state"] == "completed"


@pytest.mark.parametrize("devices", [FOUR_GOOD | {"cam-2": "inconclusive"}], indirect=True)
def test_an_inconclusive_device_holds_the_wave_for_the_operator_instead_of_guessing(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    result = rollout(broker, tmp_path, *START, "--waves", "100%")
    assert result.returncode == 4, result.stderr
    data = record(broker, tmp_path)
    assert data["state"] == "paused" and "inconclusive" in data["reason"], data
    assert data["waves"][0]["judgement"]["counts"]["inconclusive"] == 1
    assert devices.rollbacks == [], "a hold rolls nothing back"


@pytest.mark.parametrize("devices", [FOUR_GOOD], indirect=True)
def test_a_quality_figure_named_by_abort_on_aborts_and_rolls_back_every_device_the_rollout_updated(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    for device in FOUR_GOOD:
        devices.figures[device] = {"agreement": 0.8, "latency_p95_ms": 3.0}
    result = rollout(broker, tmp_path, *START, "--abort-on", "agreement<0.9")
    assert result.returncode == 3, result.stderr
    data = record(broker, tmp_path)
    assert data["state"] == "aborted" and "agreement" in data["reason"], data
    (victim,) = data["waves"][0]["devices"]
    assert [device for device, _ in devices.rollbacks] == [victim]
    assert devices.rollbacks[0][1]["version"] == 2
    assert devices.desired[victim]["version"] == 1, "its desired state is the release it ran"
    assert devices.serving[victim] == 1
    assert data["devices"][victim]["rollback"] == "rolled back"
    assert sum(devices.serving.values()) == 4, "the rest of the fleet untouched"


@pytest.mark.parametrize("devices", [FOUR_GOOD | {"cam-3": "silent", "cam-4": "silent"}], indirect=True)
def test_a_killed_driver_is_taken_over_and_the_old_one_stops_when_it_sees_the_higher_epoch(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    first = driver(broker, tmp_path, *START, "--waves", "100%")
    wait_record(broker, tmp_path, lambda r: r["waves"][0]["state"] == "running", "the wave running")
    refused = rollout(broker, tmp_path, "resume", "det-v2-g1", who="dave")
    assert refused.returncode == 2 and "driven by" in refused.stderr, refused.stderr
    second = driver(broker, tmp_path, "resume", "det-v2-g1", "--take-over", who="dave")
    code, output = finish(first)
    assert code == 2 and "taken over" in output, output
    wait_record(broker, tmp_path, lambda r: r["owner"]["epoch"] == 2, "the new owner")
    aborted = rollout(broker, tmp_path, "abort", "det-v2-g1", "--reason", "enough")
    assert aborted.returncode == 0, aborted.stderr
    code, output = finish(second)
    assert code == 3, output
    assert {device for device, _ in devices.rollbacks} == set(FOUR_GOOD)


@pytest.mark.parametrize("devices", [FOUR_GOOD | {"cam-1": "silent", "cam-2": "silent"}], indirect=True)
def test_an_operator_on_another_machine_aborts_a_paused_rollout_from_its_retained_record(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    running = driver(broker, tmp_path / "laptop", *START, "--waves", "100%")
    wait_record(
        broker, tmp_path / "laptop", lambda r: r["waves"][0]["state"] == "running", "the wave running"
    )
    assert rollout(broker, tmp_path / "laptop", "pause", "det-v2-g1").returncode == 0
    assert finish(running)[0] == 4
    elsewhere = tmp_path / "desk"  # no record on disk there: the retained one is read
    aborted = rollout(broker, elsewhere, "abort", "det-v2-g1", "--reason", "bad batch")
    assert aborted.returncode == 0, aborted.stderr
    data = record(broker, elsewhere)
    assert data["state"] == "aborted" and "bad batch" in data["reason"]
    assert all(desired["version"] == 1 for desired in devices.desired.values())
    assert set(devices.desired) == set(FOUR_GOOD)
    for device in ("cam-3", "cam-4"):
        assert data["devices"][device]["rollback"] == "rolled back"


@pytest.mark.parametrize("devices", [FOUR_GOOD], indirect=True)
def test_devices_offline_when_planned_are_skipped_and_left_to_the_groups_desired_state(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    devices.offline("cam-1")
    devices.offline("cam-2")
    done = rollout(broker, tmp_path, *START, "--waves", "100%")
    assert done.returncode == 0, done.stderr
    data = record(broker, tmp_path)
    assert sorted(data["skipped"]) == ["cam-1", "cam-2"]
    assert sorted(data["devices"]) == ["cam-3", "cam-4"] and data["state"] == "completed"


@pytest.mark.parametrize("devices", [FOUR_GOOD], indirect=True)
def test_a_device_offline_for_less_than_the_grace_is_neither_a_failure_nor_an_abort(
    broker: Broker, devices: Devices, tmp_path: Path
) -> None:
    running = driver(broker, tmp_path, *START, "--waves", "100%", "--soak", "3s", "--offline-grace", "30s")
    wait_record(broker, tmp_path, lambda r: r["waves"][0]["state"] == "soaking", "the soak")
    devices.offline("cam-2")  # a planned reboot during the soak
    time.sleep(1.5)
    devices.back("cam-2")
    code, output = finish(running)
    assert code == 0, output
    data = record(broker, tmp_path)
    assert data["state"] == "completed" and data["devices"]["cam-2"]["standing"] == "committed"
    assert devices.rollbacks == []


@pytest.mark.parametrize(
    "args",
    [
        ("start", "det", "--group", "g1"),
        ("start", "det:0", "--group", "g1"),
        ("start", "det:2", "--group", "g1", "--waves", "50%,10%"),
        ("start", "det:2", "--group", "g1", "--abort-on", "speed>3"),
        ("start", "det:2", "--group", "g/1"),
        ("start", "det:2", "--group", "g1", "--soak", "soon"),
    ],
)
def test_a_malformed_rollout_is_a_usage_error_before_anything_is_sent(
    broker: Broker, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = rollout(broker, tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip()
    assert not list(tmp_path.glob("*.json"))


def test_a_group_with_no_device_online_is_an_error_and_no_rollout(broker: Broker, tmp_path: Path) -> None:
    result = rollout(broker, tmp_path, "start", "det:2", "--group", "nobody")
    assert result.returncode == 1 and "no device of group 'nobody' is online" in result.stderr
    assert not list(tmp_path.glob("*.json"))
