"""plan_reload: which live steps each config change takes, table-driven (pure, no daemon)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import AgentConfig, apply_patch
from agent.daemon.reload import Step, adopt, changed_sections, plan_reload

S = Step
BASE = AgentConfig()
WINDOWS = {"source": {"type": "synthetic"}}

CASES: list[tuple[str, dict[str, Any], tuple[str, ...], tuple[Step, ...]]] = [
    ("nothing changed", {}, (), ()),
    ("log level only", {"log_level": "debug"}, ("log_level",), (S.SET_LOG_LEVEL,)),
    (
        "another model bundle",
        {"model": {"bundle": "models/digits-det-onnx"}},
        ("model",),
        (S.LOAD_MODEL, S.RESTART_PIPELINE),
    ),
    ("model warm-up runs", {"model": {"warmup_runs": 1}}, ("model",), (S.LOAD_MODEL, S.RESTART_PIPELINE)),
    ("same kind of source", {"source": {"loop": False}}, ("source",), (S.RESTART_PIPELINE,)),
    ("frames to sensor windows", WINDOWS, ("source",), (S.LOAD_MODEL, S.RESTART_PIPELINE)),
    ("pipeline rate", {"pipeline": {"max_rate_hz": 2}}, ("pipeline",), (S.RESTART_PIPELINE,)),
    ("monitor thresholds", {"monitor": {"drift": {"every_n": 48}}}, ("monitor",), (S.RESTART_PIPELINE,)),
    ("snapshot budget", {"snapshots": {"max_bytes": 2_000_000}}, ("snapshots",), (S.RESTART_PIPELINE,)),
    ("sinks only", {"sinks": {"jsonl": {"enabled": True}}}, ("sinks",), (S.REPLACE_SINKS,)),
    (
        "sinks with a restart",
        {"sinks": {"jsonl": {"enabled": True}}, "pipeline": {"max_rate_hz": 2}},
        ("pipeline", "sinks"),
        (S.RESTART_PIPELINE,),
    ),
    ("link", {"link": {"enabled": True, "host": "broker"}}, ("link",), (S.RESTART_UPLINK,)),
    ("outbox", {"outbox": {"max_bytes": 1_000_000}}, ("outbox",), (S.RESTART_UPLINK,)),
    ("device identity", {"device": {"group": "door"}}, ("device",), (S.RESTART_UPLINK,)),
    ("control socket (at the next start)", {"control": {"socket": "/tmp/x/c.sock"}}, ("control",), ()),
    (
        "everything at once, in execution order",
        {
            "log_level": "debug",
            "model": {"warmup_runs": 1},
            "sinks": {"jsonl": {"enabled": True}},
            "device": {"group": "g"},
        },
        ("log_level", "device", "model", "sinks"),
        (S.SET_LOG_LEVEL, S.LOAD_MODEL, S.RESTART_PIPELINE, S.RESTART_UPLINK),
    ),
]


@pytest.mark.parametrize(("case", "patch", "changed", "steps"), CASES, ids=[c[0] for c in CASES])
def test_each_config_change_takes_the_live_steps_it_needs(case, patch, changed, steps):
    new = apply_patch(BASE, patch)
    plan = plan_reload(BASE, new)
    assert set(plan.changed) == set(changed), case
    assert plan.steps == steps, case
    assert list(plan.steps) == sorted(plan.steps)


def test_a_plan_restricted_to_some_sections_adopts_only_those():
    new = apply_patch(BASE, {"log_level": "debug", "pipeline": {"max_rate_hz": 3}, "device": {"group": "g"}})
    plan = plan_reload(BASE, new, only={"pipeline"})
    assert plan.changed == ("pipeline",) and plan.steps == (S.RESTART_PIPELINE,)
    adopted = adopt(BASE, new, plan)
    assert adopted.pipeline.max_rate_hz == 3
    assert adopted.log_level == BASE.log_level and adopted.device.group == BASE.device.group
    assert changed_sections(BASE, adopted) == ["pipeline"]
