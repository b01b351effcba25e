"""Task-typed results behave as the one-bag `Result` did: same JSON, summary, change key and fleet score per task.

The expected values below were produced by the pre-refactor `Result` (`to_dict`, `summary`), `ResultRecord.change_key`
and the daemon's per-task score branches on the same inputs; the bundled models' JSON is pinned by
`tests/data/wire_golden.json`, recorded before the refactor.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from conftest import BUNDLES, DATA, MODELS

from agent.inference import (
    AnomalyResult,
    ClassificationResult,
    Detection,
    DetectionResult,
    Label,
    Model,
    RawResult,
    Result,
    TensorSummary,
)
from agent.inference.inputs import load_inputs
from agent.pipeline.records import ResultRecord, StageTimes
from agent.sources.base import Item

BOX = (1.0, 2.0, 3.5, 4.25)
NORM = (0.1, 0.2, 0.35, 0.425)
_BOXES = '"box": [1.0, 2.0, 3.5, 4.25], "box_norm": [0.1, 0.2, 0.35, 0.425]'


def _det(index: int, label: str, score: float) -> Detection:
    return Detection(index, label, score, BOX, NORM)


# name, result, json.dumps(to_dict()), summary(), ResultRecord.change_key() (seq 42), fleet score
CASES: list[tuple[str, Result, str, str, tuple[Any, ...], float | None]] = [
    (
        "classification",
        ClassificationResult((Label(3, "fall", 0.7), Label(0, "walk", 0.2))),
        '{"task": "classification", "labels": [{"index": 3, "label": "fall", "score": 0.7}, '
        '{"index": 0, "label": "walk", "score": 0.2}]}',
        "fall 0.700, walk 0.200",
        ("cls", "fall"),
        0.7,
    ),
    (
        "classification without labels",
        ClassificationResult(),
        '{"task": "classification", "labels": []}',
        "(no label above min_score)",
        ("cls", None),
        None,
    ),
    (
        "detection",
        DetectionResult((_det(1, "dog", 0.5), _det(0, "cat", 0.9))),
        '{"task": "detection", "detections": [{"index": 1, "label": "dog", "score": 0.5, '
        + _BOXES
        + '}, {"index": 0, "label": "cat", "score": 0.9, '
        + _BOXES
        + "}]}",
        "2 objects: dog 0.50, cat 0.90",
        ("det", ("cat", "dog")),
        0.9,
    ),
    (
        "detection of more than five objects",
        DetectionResult(tuple(_det(i, str(i), 0.125 * i) for i in range(7))),
        '{"task": "detection", "detections": ['
        + ", ".join(f'{{"index": {i}, "label": "{i}", "score": {0.125 * i}, {_BOXES}}}' for i in range(7))
        + "]}",
        "7 objects: 0 0.00, 1 0.12, 2 0.25, 3 0.38, 4 0.50",
        ("det", ("0", "1", "2", "3", "4", "5", "6")),
        0.75,
    ),
    (
        "detection of nothing",
        DetectionResult(),
        '{"task": "detection", "detections": []}',
        "0 objects: ",
        ("det", ()),
        None,
    ),
    (
        "anomaly",
        AnomalyResult(0.25, 0.176391, True),
        '{"task": "anomaly", "score": 0.25, "threshold": 0.176391, "anomaly": true}',
        "score 0.25 (threshold 0.1764): ANOMALY",
        ("anomaly", True),
        0.25,
    ),
    (
        "normal",
        AnomalyResult(0.0013039535842835903, 0.176391, False),
        '{"task": "anomaly", "score": 0.0013039535842835903, "threshold": 0.176391, "anomaly": false}',
        "score 0.001304 (threshold 0.1764): normal",
        ("anomaly", False),
        0.0013039535842835903,
    ),
    (
        "raw",
        RawResult(
            (
                TensorSummary("out", (1, 2), -1.0, 2.0, 0.5, (-1.0, 2.0)),
                TensorSummary("big", (1, 100), 0.0, 1.0, 0.123456, None),
            )
        ),
        '{"task": "raw", "tensors": [{"name": "out", "shape": [1, 2], "min": -1.0, "max": 2.0, "mean": 0.5, '
        '"values": [-1.0, 2.0]}, {"name": "big", "shape": [1, 100], "min": 0.0, "max": 1.0, "mean": 0.123456, '
        '"values": null}]}',
        "out[1, 2] mean 0.5; big[1, 100] mean 0.1235",
        ("raw", 42),
        None,
    ),
    ("raw without outputs", RawResult(), '{"task": "raw", "tensors": []}', "", ("raw", 42), None),
]
IDS = [case[0] for case in CASES]


def _record(result: Result, seq: int = 42) -> ResultRecord:
    item = Item(np.zeros((1, 1), np.float32), seq, 0.0, 0.0, "window")
    return ResultRecord(item, result, "m", 1, StageTimes(0.0, 0.0, 0.0, 0.0), 0.0)


@pytest.mark.parametrize(("name", "result", "wire", "summary", "key", "score"), CASES, ids=IDS)
def test_each_task_result_serialises_and_summarises_as_the_one_bag_result_did(
    name: str, result: Result, wire: str, summary: str, key: tuple[Any, ...], score: float | None
) -> None:
    assert json.dumps(result.to_dict()) == wire
    assert result.summary() == summary


@pytest.mark.parametrize(("name", "result", "wire", "summary", "key", "score"), CASES, ids=IDS)
def test_each_task_result_gives_the_change_key_and_fleet_score_the_old_branches_gave(
    name: str, result: Result, wire: str, summary: str, key: tuple[Any, ...], score: float | None
) -> None:
    assert _record(result).change_key() == key
    assert result.change_key() == (None if isinstance(result, RawResult) else key)
    assert result.top_score() == score


def test_a_raw_result_is_a_new_answer_every_time() -> None:
    assert _record(RawResult(), seq=1).change_key() != _record(RawResult(), seq=2).change_key()


def test_to_dict_keeps_tuples_as_the_old_asdict_did() -> None:
    data = DetectionResult((_det(0, "cat", 0.9),)).to_dict()
    assert data == {
        "task": "detection",
        "detections": ({"index": 0, "label": "cat", "score": 0.9, "box": BOX, "box_norm": NORM},),
    }
    assert isinstance(data["detections"], tuple) and isinstance(data["detections"][0]["box"], tuple)


@pytest.mark.parametrize(
    ("kind", "task"),
    [
        (ClassificationResult, "classification"),
        (DetectionResult, "detection"),
        (AnomalyResult, "anomaly"),
        (RawResult, "raw"),
    ],
)
def test_a_result_task_is_fixed_by_its_type_and_cannot_be_set(kind: type[Result], task: str) -> None:
    assert kind.task == task
    assert "task" not in {f.name for f in dataclasses.fields(kind)}
    result = AnomalyResult(0.5, 0.2, True) if kind is AnomalyResult else kind()
    assert result.to_dict()["task"] == task
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.task = "raw"  # type: ignore[misc]


def test_results_of_different_tasks_are_never_equal() -> None:
    assert ClassificationResult() != DetectionResult()
    assert RawResult() != ClassificationResult()


@pytest.mark.parametrize("name", BUNDLES)
def test_task_typed_results_serialise_as_before_on_every_bundled_model(name: str) -> None:
    recorded = json.loads((DATA / "wire_golden.json").read_text())["results"]
    assert name in recorded, f"{name} has no recorded results in wire_golden.json"
    model = Model.load(MODELS / name)
    golden = model.manifest.golden
    assert golden is not None and golden.cases
    got = []
    for case in golden.cases:
        data = load_inputs(model.bundle.file(case.input), model.manifest.input)[0][1]
        got.append(json.dumps(model.infer(data).to_dict()))
    model.close()
    assert got == recorded[name]


def test_every_recorded_model_is_bundled() -> None:
    recorded = json.loads((DATA / "wire_golden.json").read_text())["results"]
    assert set(recorded) == set(BUNDLES)
