"""Hard examples on the device: the sample store (real files, a real full tmpfs), the capture triggers, the sample
commands through the real command router (forged, malformed and stale requests), the operator's chunk check, and the
retraining trigger's policy."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import CaptureConfig
from agent.daemon.capture import HardExamples
from agent.daemon.sample_commands import SampleCommands
from agent.events import AgentEvent
from agent.fleet.retrain import DriftWatch, drifting_of
from agent.fleet.samples import SampleCorrupt, check_chunk
from agent.inference.results import AnomalyResult, ClassificationResult, Label
from agent.link import CommandRouter, SampleMeta, parse
from agent.link.config import CommandLimits
from agent.pipeline import ResultRecord, StageTimes
from agent.pipeline.samples import SampleStore
from agent.sources.base import Item

pytest.register_assert_rewrite("mounts")
from mounts import Mounts, fill  # noqa: E402

pytest_plugins = ["mounts"]

TIMES = StageTimes(0.0, 0.001, 0.01, 0.001)


def names(folder: Path) -> list[str]:
    return [path.name for path in Path(folder).iterdir()]


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def item(seq: int, data: np.ndarray | None = None, kind: str = "frame") -> Item:
    return Item(data if data is not None else frame(seq), seq, 1_765_000_000.0 + seq, float(seq), kind)  # type: ignore[arg-type]


def record(seq: int, score: float, data: np.ndarray | None = None, kind: str = "frame") -> ResultRecord:
    result = ClassificationResult((Label(3, "three", score),))
    return ResultRecord(item(seq, data, kind), result, "digits", 2, TIMES, 0.0)


def capture(tmp_path: Path, **config: Any) -> HardExamples:
    return HardExamples(CaptureConfig(enabled=True, **config), SampleStore(tmp_path / "samples", 10_000_000))


def keep(hard: HardExamples, rec: ResultRecord, event: AgentEvent | None = None) -> str | None:
    """Runs both halves the way the monitors do: the decision, then the writer thread's save."""
    job = hard.observe(rec)
    if event is not None:
        job = hard.for_event(event)
    return hard.save(job) if job is not None else None


# -- the store --------------------------------------------------------------------------------------------------------


def test_a_low_confidence_frame_is_kept_as_jpeg_with_a_metadata_line_naming_its_hash(tmp_path: Path) -> None:
    hard = capture(tmp_path, low_confidence_below=0.6)
    sample_id = keep(hard, record(7, 0.41))
    assert sample_id is not None and sample_id.endswith("_low-confidence")
    folder = tmp_path / "samples"
    data = (folder / f"{sample_id}.jpg").read_bytes()
    line = (folder / f"{sample_id}.json").read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    meta = parse(SampleMeta, line)
    assert (meta.id, meta.trigger, meta.seq, meta.kind, meta.format) == (
        sample_id,
        "low-confidence",
        7,
        "frame",
        "jpeg",
    )
    assert meta.sha256 == hashlib.sha256(data).hexdigest() and meta.size == len(data)
    assert meta.model is not None and (meta.model.name, meta.model.version) == ("digits", 2)
    assert meta.result == json.loads(json.dumps(ClassificationResult((Label(3, "three", 0.41),)).to_dict()))
    assert data[:2] == b"\xff\xd8"  # a JPEG


def test_a_confident_result_and_an_anomaly_score_are_not_low_confidence(tmp_path: Path) -> None:
    hard = capture(tmp_path, low_confidence_below=0.6)
    assert keep(hard, record(1, 0.9)) is None
    anomaly = ResultRecord(item(2), AnomalyResult(0.1, 0.5, False), "m", 1, TIMES, 0.0)
    assert hard.observe(anomaly) is None  # an anomaly score is no confidence


def test_a_window_is_kept_as_npy_that_loads_back_equal(tmp_path: Path) -> None:
    window = np.random.default_rng(3).normal(size=(128, 3)).astype(np.float32)
    hard = capture(tmp_path, low_confidence_below=0.6)
    sample_id = keep(hard, record(4, 0.2, window, "window"))
    assert sample_id is not None
    loaded = np.load(io.BytesIO((tmp_path / "samples" / f"{sample_id}.npy").read_bytes()), allow_pickle=False)
    assert loaded.dtype == np.float32 and np.array_equal(loaded, window)


def test_each_trigger_is_rate_limited_on_its_own(tmp_path: Path) -> None:
    now = [100.0]
    hard = HardExamples(
        CaptureConfig(enabled=True, min_interval_s=10),
        SampleStore(tmp_path, 10_000_000),
        clock=lambda: now[0],
    )
    assert hard.observe(record(1, 0.1)) is not None
    assert hard.observe(record(2, 0.1)) is None  # too soon
    drift = AgentEvent("drift", "warning", "data drift", phase="start")
    assert hard.for_event(drift) is not None  # another trigger: its own clock
    now[0] += 10.5
    assert hard.observe(record(3, 0.1)) is not None
    assert hard.rate_limited == 1


def test_a_drift_event_keeps_the_newest_item_and_names_the_event_and_an_ending_keeps_nothing(
    tmp_path: Path,
) -> None:
    hard = capture(tmp_path, min_interval_s=0)
    hard.observe(record(11, 0.99))
    start = AgentEvent("drift", "warning", "data drift (moderate)", phase="start")
    job = hard.for_event(start)
    assert job is not None and job.item.seq == 11 and job.event_id == start.id
    sample_id = hard.save(job)
    assert (
        sample_id is not None
        and parse(SampleMeta, (tmp_path / "samples" / f"{sample_id}.json").read_bytes()).event_id == start.id
    )
    assert hard.for_event(AgentEvent("drift", "info", "data drift cleared", phase="end")) is None
    assert hard.for_event(AgentEvent("source", "info", "connected")) is None
    assert capture(tmp_path / "x", triggers=("anomaly",)).for_event(start) is None  # not a chosen trigger


def test_the_budget_evicts_the_oldest_unconfirmed_first_and_counts_it(tmp_path: Path) -> None:
    hard = capture(tmp_path, min_interval_s=0)
    first = keep(hard, record(1, 0.1))
    assert first is not None
    one = hard.store.status()["bytes"]
    store = SampleStore(tmp_path / "samples", int(one * 2.5))  # a restart with a smaller budget
    hard = HardExamples(CaptureConfig(enabled=True, min_interval_s=0), store)
    ids = [first] + [keep(hard, record(seq, 0.1)) for seq in (2, 3, 4)]
    held = [sample.id for sample in store.samples()]
    assert held == ids[-2:] and store.status()["evicted"] == 2
    assert sorted(names(tmp_path / "samples")) == sorted(
        f"{i}.{ext}" for i in held for ext in ("jpg", "json")
    )


def test_a_restart_keeps_the_samples_and_drops_an_orphan_left_by_a_power_cut(tmp_path: Path) -> None:
    hard = capture(tmp_path, min_interval_s=0)
    kept = keep(hard, record(1, 0.1))
    folder = tmp_path / "samples"
    (folder / "00000009_20261202T100000Z_drift.jpg").write_bytes(b"half")  # data written, metadata never was
    (folder / ".00000010_20261202T100000Z_drift.jpg.abc.tmp").write_bytes(b"x")
    (folder / "notes.txt").write_text("not ours")
    again = SampleStore(folder, 10_000_000)
    assert [s.id for s in again.samples()] == [kept]
    assert sorted(names(folder)) == sorted([f"{kept}.jpg", f"{kept}.json", "notes.txt"])
    new = HardExamples(CaptureConfig(enabled=True), again)
    new_id = keep(new, record(2, 0.1))
    assert new_id is not None and new_id.startswith("00000010_")  # numbering goes on past the orphan's


def test_a_full_disk_while_saving_is_counted_and_survived(tmp_path: Path, mounts: Mounts) -> None:
    disk = mounts.tmpfs(tmp_path / "disk", 256 * 1024)
    store = SampleStore(disk / "samples", 10_000_000)  # a budget the disk cannot hold: the disk fills first
    hard = HardExamples(CaptureConfig(enabled=True, min_interval_s=0), store)
    big = np.random.default_rng(1).integers(0, 255, (160, 200, 3), dtype=np.uint8)  # ~60 KB as JPEG at q90
    assert all(keep(hard, record(seq, 0.1, big)) for seq in range(2))
    filler = fill(disk)
    assert keep(hard, record(2, 0.1, big)) is not None  # room made from the store's own oldest
    assert store.status()["evicted"] >= 1
    for sample in store.samples():
        store.remove(sample)
    more = fill(disk, "filler-2")  # the room they left is taken too
    assert keep(hard, record(3, 0.1, big)) is None  # nothing of its own left to make room with: reported
    status = store.status()
    assert status["failures"] >= 1 and "No space left" in (status["last_error"] or ""), status
    assert names(disk / "samples") == []  # no temp file, no data file without its metadata
    filler.unlink()
    more.unlink()
    kept = keep(hard, record(4, 0.1, big))
    assert kept is not None and [s.id for s in store.samples()] == [kept]  # room again: it goes on


# -- the commands, through the real router ------------------------------------------------------------------------------


@pytest.fixture
def router(tmp_path: Path) -> tuple[CommandRouter, SampleStore]:
    store = SampleStore(tmp_path / "samples", 10_000_000)
    hard = HardExamples(CaptureConfig(enabled=True, min_interval_s=0), store)
    for seq in range(3):
        keep(hard, record(seq, 0.1))
    routed = CommandRouter(CommandLimits(rate_per_min=6000, burst=1000))
    SampleCommands(store).register(routed)
    return routed, store


def ask(router: CommandRouter, name: str, args: Any) -> dict[str, Any]:
    request = router.accept(name, json.dumps({"args": args}).encode())
    assert request is not None
    return json.loads(router.run(request).payload)


def test_list_chunk_and_confirm_serve_the_samples_and_delete_only_on_a_matching_hash(router) -> None:
    routed, store = router
    listed = ask(routed, "sample-list", {"limit": 2})
    assert listed["status"] == "ok" and listed["data"]["more"] is True and listed["data"]["count"] == 3
    page = listed["data"]["samples"]
    rest = ask(routed, "sample-list", {"after": page[-1]["id"]})["data"]
    assert [m["id"] for m in page + rest["samples"]] == [s.id for s in store.samples()] and not rest["more"]
    meta = page[0]
    chunk = ask(routed, "sample-chunk", {"id": meta["id"], "offset": 0, "length": 65536})["data"]
    data = base64.b64decode(chunk["data_base64"])
    assert hashlib.sha256(data).hexdigest() == meta["sha256"] == chunk["sha256"]
    wrong = ask(routed, "sample-confirm", {"samples": [{"id": meta["id"], "sha256": "0" * 64}]})["data"]
    assert (
        wrong["mismatched"] == [meta["id"]] and store.find(meta["id"]) is not None
    )  # a stale or forged confirm
    right = ask(routed, "sample-confirm", {"samples": [{"id": meta["id"], "sha256": meta["sha256"]}]})["data"]
    assert right["confirmed"] == [meta["id"]] and store.find(meta["id"]) is None
    again = ask(routed, "sample-confirm", {"samples": [{"id": meta["id"], "sha256": meta["sha256"]}]})["data"]
    assert again["unknown"] == [meta["id"]]  # a repeated confirmation (its reply was lost) is no error
    assert store.status()["confirmed"] == 1 and store.status()["evicted"] == 0


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        (
            "sample-chunk",
            {"id": "../../etc/passwd", "offset": 0, "length": 10},
            "id: String should match pattern",
        ),
        (
            "sample-chunk",
            {"id": "00000001_20261202T100000Z_drift/../x", "offset": 0, "length": 10},
            "pattern",
        ),
        ("sample-chunk", {"id": "00000099_20261202T100000Z_drift", "offset": 0, "length": 10}, "no sample"),
        ("sample-chunk", {"id": "00000001_20261202T100000Z_drift", "offset": -1, "length": 10}, "offset"),
        ("sample-chunk", {"id": "00000001_20261202T100000Z_drift", "offset": 0, "length": 65537}, "length"),
        ("sample-chunk", {"id": "00000001_20261202T100000Z_drift", "offset": "0", "length": 1}, "offset"),
        ("sample-chunk", {"id": "00000001_20261202T100000Z_drift", "offset": 0, "length": 1, "x": 1}, "x"),
        ("sample-list", {"limit": 0}, "limit"),
        ("sample-confirm", {"samples": []}, "samples"),
        (
            "sample-confirm",
            {"samples": [{"id": "00000001_20261202T100000Z_drift", "sha256": "abc"}]},
            "sha256",
        ),
    ],
)
def test_a_malformed_or_forged_sample_request_gets_an_error_reply_and_changes_nothing(
    router, name: str, args: dict[str, Any], reason: str
) -> None:
    routed, store = router
    before = sorted(names(store.folder))
    answer = ask(routed, name, args)
    assert answer["status"] == "error" and reason in answer["reason"], answer
    assert sorted(names(store.folder)) == before


def test_a_chunk_request_past_the_end_and_a_real_id_with_another_time_are_refused(router) -> None:
    routed, store = router
    sample = store.samples()[0]
    past = ask(routed, "sample-chunk", {"id": sample.id, "offset": sample.size, "length": 10})
    assert past["status"] == "error" and "past the end" in past["reason"]
    forged = sample.id[:9] + "20000101T000000Z" + sample.id[25:]
    assert ask(routed, "sample-chunk", {"id": forged, "offset": 0, "length": 10})["status"] == "error"
    last = ask(routed, "sample-chunk", {"id": sample.id, "offset": sample.size - 5, "length": 100})["data"]
    assert len(base64.b64decode(last["data_base64"])) == 5


# -- the operator's chunk check ---------------------------------------------------------------------------------------


def chunk_reply(data: bytes, **changes: Any) -> dict[str, Any]:
    reply = {
        "id": "00000001_20261202T100000Z_drift",
        "offset": 0,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data_base64": base64.b64encode(data).decode(),
    }
    return reply | changes


def test_a_chunk_corrupted_in_transit_is_detected_by_its_hash() -> None:
    data = b"hard example bytes"
    assert check_chunk(chunk_reply(data), "00000001_20261202T100000Z_drift", 0, 100, len(data)) == data
    flipped = base64.b64encode(b"hard exbmple bytes").decode()
    cases = [
        chunk_reply(data, data_base64=flipped),
        chunk_reply(data, data_base64="%%%"),
        chunk_reply(data, offset=4),
        chunk_reply(data, sha256="zz"),
        {"id": "x"},
    ]
    for bad in cases:
        with pytest.raises(SampleCorrupt):
            check_chunk(bad, "00000001_20261202T100000Z_drift", 0, 100, len(data))
    with pytest.raises(SampleCorrupt, match="asked for 4"):
        check_chunk(chunk_reply(data), "00000001_20261202T100000Z_drift", 0, 4, len(data))


# -- the retraining trigger's policy ------------------------------------------------------------------------------------


def test_drift_across_the_share_fires_once_per_episode_and_rearms_below_it() -> None:
    watch = DriftWatch("door", ["a", "b", "c", "d"], share=0.5, stale_s=60)
    watch.report("a", True, 0)
    assert watch.check(1) is None  # 1 of 4; c and d never reported: they count as not drifting
    watch.report("b", True, 2)
    episode = watch.check(3)
    assert episode is not None and episode.drifting == ("a", "b") and episode.share == 0.5
    watch.report("c", True, 4)
    assert watch.check(5) is None  # still the same episode
    watch.report("a", False, 6)
    watch.report("c", False, 6)
    assert watch.check(7) is None and watch.armed  # 1 of 4: re-armed
    watch.report("d", True, 8)
    watch.report("a", True, 8)
    assert watch.check(9) is not None and watch.fired == 2


def test_stale_offline_and_foreign_reports_do_not_count() -> None:
    watch = DriftWatch("door", ["a", "b"], share=1.0, stale_s=30)
    watch.report("a", True, 0)
    watch.report("b", True, 0)
    watch.report("z", True, 0)  # not a member
    watch.offline("b")
    assert watch.check(1) is None
    watch.report("b", True, 1)
    assert watch.check(40) is None  # a's report is stale by then
    watch.report("b", None, 41)  # no flag: nothing changes
    assert watch.drifting(41) == ()
    assert drifting_of({"drift": {"drifting": True}}) is True
    assert drifting_of({"drift": None}) is None and drifting_of({"drift": {"drifting": "yes"}}) is None
    with pytest.raises(ValueError):
        DriftWatch("empty", [], 0.5, 10)
