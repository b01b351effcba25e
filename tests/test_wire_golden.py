"""What the agent puts on the wire stays byte for byte what it was (recorded before the house was refactored).

`tests/data/wire_golden.json` holds, recorded from the code before the model service, the narrow ports, the one event
vocabulary and the task-typed results: `Result.to_dict()` as JSON for every bundled model on each of its golden
inputs, and the exact outbox bytes of an event, a result and a retained status as the link publishes them. A change
that alters any of them is a change of the fleet protocol: bump the payload schema and re-record on purpose.

Re-record (only when the wire is meant to change): `python tests/test_wire_golden.py --record`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from conftest import BUNDLES, DATA, MODELS  # noqa: E402

from agent.events import AgentEvent  # noqa: E402
from agent.inference import Model  # noqa: E402
from agent.inference.inputs import load_inputs  # noqa: E402
from agent.link import DeviceIdentity, Link, LinkConfig  # noqa: E402
from agent.pipeline import ResultRecord, StageTimes  # noqa: E402
from agent.sources.base import Item  # noqa: E402

GOLDEN = DATA / "wire_golden.json"
FIXED_TIME = 1_765_000_000.25


def results_json() -> dict[str, list[str]]:
    """Result.to_dict() as compact JSON, per bundled model and golden input."""
    found: dict[str, list[str]] = {}
    for name in BUNDLES:
        model = Model.load(MODELS / name)
        try:
            golden = model.manifest.golden
            assert golden is not None
            found[name] = []
            for case in golden.cases:
                data = load_inputs(model.bundle.file(case.input), model.manifest.input)[0][1]
                found[name].append(json.dumps(model.infer(data).to_dict()))
        finally:
            model.close()
    return found


def _link(state_dir: Path) -> Link:
    config = LinkConfig(enabled=True, host="127.0.0.1", port=1)
    return Link(config, DeviceIdentity(device="cam-01", fleet="lab", group="door"), state_dir)


def _rows(link: Link) -> list[tuple[str, str]]:
    assert link.outbox is not None
    return [(row.topic, row.payload.decode()) for row in link.outbox.pending(100)]


def wire_payloads(state_dir: Path, monkeypatch: Any) -> dict[str, Any]:
    """The outbox bytes of one event and one result, and the retained status bytes."""
    from agent.daemon.uplink import event_payload, publish_result

    monkeypatch.setattr(time, "time", lambda: FIXED_TIME)
    link = _link(state_dir)
    try:
        event = AgentEvent(
            "anomaly",
            "warning",
            "classified as 7 (0.91)",
            {"seq": 12, "label": "7", "score": 0.91},
            "anomaly-12.jpg",
            time=FIXED_TIME,
            id="0123456789abcdef0123456789abcdef",
        )
        link.publish_event(event_payload(event))
        model = Model.load(MODELS / "digits-cls-onnx")
        try:
            golden = model.manifest.golden
            assert golden is not None
            data = load_inputs(model.bundle.file(golden.cases[0].input), model.manifest.input)[0][1]
            result = model.infer(data)
        finally:
            model.close()
        item = Item(data=data, seq=12, captured_at=FIXED_TIME, captured_mono=0.0, kind="frame", source="cam")
        record = ResultRecord(item, result, "digits-cls-onnx", 3, StageTimes(0.001, 0.002, 0.003, 0.0004), 0.0125)
        publish_result(link, record)
        link._boot_time = FIXED_TIME - 100
        from agent.link import ModelRef

        link.set_status(model=ModelRef(name="digits-cls-onnx", version=3), sources={"cam": "connected"})
        status = link._status_payload("online", 7, None).decode()
        return {"outbox": _rows(link), "status": status}
    finally:
        if link.outbox is not None:
            link.outbox.close()


def test_results_of_every_bundled_model_on_its_golden_inputs_are_unchanged_on_the_wire():
    recorded = json.loads(GOLDEN.read_text())["results"]
    assert results_json() == recorded


def test_an_event_a_result_and_the_retained_status_are_unchanged_on_the_wire(tmp_path, monkeypatch):
    recorded = json.loads(GOLDEN.read_text())["wire"]
    got = wire_payloads(tmp_path, monkeypatch)
    assert [list(row) for row in got["outbox"]] == recorded["outbox"]
    assert got["status"] == recorded["status"]


if __name__ == "__main__" and "--record" in sys.argv:
    import tempfile

    class _Patch:
        def setattr(self, target: Any, name: str, value: Any) -> None:
            setattr(target, name, value)

    real_time = time.time
    with tempfile.TemporaryDirectory() as folder:
        wire = wire_payloads(Path(folder), _Patch())
    time.time = real_time
    GOLDEN.write_text(
        json.dumps({"results": results_json(), "wire": wire}, indent=1, sort_keys=True) + "\n"
    )
    print(f"recorded {GOLDEN}")
elif __name__ == "__main__":
    pytest.main([__file__])
