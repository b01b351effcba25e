"""The update check end to end: publish -> check -> an installed bundle the inference core loads; the life cycle's
rules (refusals held, supersede, clock floor, capabilities, retries), resume and reuse through the updater."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest
from ota_support import (
    FACTS,
    NAME,
    Device,
    RepoBuilder,
    make_bundle,
    make_device,
    random_bytes,
    rmtree,
)

from agent.inference import Model
from agent.ota import (
    CheckStatus,
    DeviceFacts,
    OtaConfig,
    ReleaseId,
    UpdateMachine,
    UpdateState,
    load_record,
    save_record,
)
from agent.release.chunking import AVG_BYTES
from agent.release.formats import PROP_BLOCK, Desired

PAD = random_bytes(600_000, seed=11)


@pytest.fixture
def builder(tmp_path: Path) -> RepoBuilder:
    builder = RepoBuilder(tmp_path / "repo")
    builder.add_release(make_bundle(tmp_path, 2, pad=PAD))
    builder.publish()
    return builder


@pytest.fixture
def device(tmp_path: Path, builder: RepoBuilder) -> Device:
    return make_device(tmp_path, builder)


def states(events) -> list[str]:
    return [e.evidence.get("state") for e in events if e.phase != "ongoing"]


def test_end_to_end_a_published_release_is_installed_and_loads(builder, device):
    release = builder.releases[0]
    outcome = device.check(release.desired)
    assert outcome.status is CheckStatus.INSTALLED, outcome.reason
    assert states(outcome.events) == ["offered", "downloading", "verifying", "installed"]
    assert all(e.type == "update" for e in outcome.events) and outcome.events == tuple(device.events)
    progress = [e for e in outcome.events if e.phase == "ongoing"]
    assert progress and progress[-1].evidence["percent"] == 100
    assert progress[-1].evidence["bytes_total"] == len(release.archive)
    bundle = device.state_dir / "models" / NAME / "2"
    model = Model.load(bundle)
    assert (model.name, model.version) == (NAME, 2)
    model.close()
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o222 for p in [bundle, *bundle.rglob("*")])
    archives = device.state_dir / "models" / NAME / "archives"
    assert (archives / "2.tar").read_bytes() == release.archive
    assert json.loads((archives / "2.blocks.json").read_bytes())["archive_sha256"] == release.digest
    assert sorted(p.name for p in (device.state_dir / "ota").iterdir()) == ["state.json"]
    record = load_record(device.state_dir / "ota" / "state.json")
    assert record == outcome.record and record.state is UpdateState.INSTALLED
    assert record.bytes_fetched == len(release.archive) and record.digest == release.digest
    installed = outcome.events[-1].evidence
    assert installed["bytes_fetched"] == len(release.archive) and installed["bytes_total"] == len(
        release.archive
    )


def test_no_desired_state_does_nothing(device):
    outcome = device.check(None)
    assert outcome.status is CheckStatus.IDLE and not outcome.events and not device.repo.requests


def test_a_refusal_is_not_retried_until_the_metadata_changes(tmp_path, builder, device):
    v3 = builder.add_release(make_bundle(tmp_path, 3), groups=("group-2",))
    builder.publish()
    assert device.check(v3.desired).status is CheckStatus.REFUSED
    device.events.clear()
    again = device.check(v3.desired)
    assert again.status is CheckStatus.HELD and not again.events
    assert {r.kind for r in device.repo.requests[-3:]} == {"metadata"}  # a refresh, nothing more
    builder.add_release(make_bundle(tmp_path / "fixed", 3), groups=("group-1",))  # the operator fixes it
    builder.publish()
    fixed = device.check(v3.desired)
    assert fixed.status is CheckStatus.INSTALLED
    assert states(fixed.events)[0] == "offered"


def test_a_refusal_is_retried_when_the_desired_state_changes(tmp_path, builder, device):
    v3 = builder.add_release(make_bundle(tmp_path, 3), fleet="fleet-b")
    builder.publish()
    assert device.check(v3.desired).status is CheckStatus.REFUSED
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED


def test_a_newer_desired_state_supersedes_the_download_in_progress_at_once(tmp_path, builder, device):
    v3 = builder.add_release(make_bundle(tmp_path, 3, pad=random_bytes(600_000, seed=12)))
    builder.publish()
    stop = threading.Event()
    real = device.repo.request

    def request(req, timeout_s):
        for props, payload in real(req, timeout_s):
            if props.get(PROP_BLOCK) == "3":
                stop.set()  # the daemon saw a newer desired state
            yield props, payload

    device.repo.request = request  # type: ignore[method-assign]
    interrupted = device.check(builder.releases[0].desired, stop=stop)
    assert interrupted.status is CheckStatus.INTERRUPTED
    assert interrupted.record.state is UpdateState.DOWNLOADING
    v2_part = device.state_dir / "ota" / f"{builder.releases[0].digest}.part"
    assert v2_part.exists()
    outcome = device.check(v3.desired)
    assert outcome.status is CheckStatus.INSTALLED and device.installed() == [3]
    assert outcome.events[0].evidence == {
        "state": "offered",
        "model": NAME,
        "version": 3,
        "superseded": f"{NAME} v2",
    }
    assert not v2_part.exists()


def test_no_metadata_is_trusted_before_the_clock_is_sane(tmp_path, builder):
    device = make_device(tmp_path, builder)
    device.updater._clock = lambda: 86400.0  # 1970-01-02: a device without RTC, before NTP
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.WAITING_CLOCK
    assert not device.repo.requests
    assert [(e.evidence.get("state"), e.evidence.get("code")) for e in outcome.events] == [
        ("offered", None),
        (None, "clock"),
    ]
    assert outcome.events[-1].severity == "warning" and "1970" not in outcome.events[-1].message
    assert device.check(builder.releases[0].desired).events == ()  # said once
    device.updater._clock = __import__("time").time
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED


NEEDS = {
    "runtime": (FACTS.__class__(runtimes=frozenset({"onnxruntime"}), free_disk_bytes=1 << 36), {}, "runtime"),
    "providers": (
        FACTS,
        {
            "capabilities": {
                "runtime": "litert",
                "input_kind": "image",
                "providers": ("TensorrtExecutionProvider",),
            }
        },
        "providers",
    ),
    "input kind": (DeviceFacts(runtimes=FACTS.runtimes, input_kind="window"), {}, "input-kind"),
    "memory": (FACTS, {"capabilities": {"runtime": "litert", "input_kind": "image", "ram_mb": 10**6}}, "ram"),
    "disk": (DeviceFacts(runtimes=FACTS.runtimes, free_disk_bytes=64 * 1024 * 1024 + 50_000), {}, "disk"),
    "agent version": (FACTS, {"min_agent_version": "99.0"}, "agent-too-old"),
}


@pytest.mark.parametrize("need", list(NEEDS))
def test_a_release_the_device_cannot_run_is_refused_before_a_block_is_fetched(tmp_path, need):
    facts, custom, code = NEEDS[need]
    builder = RepoBuilder(tmp_path / "repo")
    if "capabilities" in custom:
        from agent.release.formats import Capabilities

        custom = {**custom, "capabilities": Capabilities(**custom["capabilities"])}
    release = builder.add_release(make_bundle(tmp_path, 2), **custom)
    builder.publish()
    device = make_device(tmp_path, builder, facts=facts)
    outcome = device.check(release.desired)
    assert outcome.status is CheckStatus.REFUSED and outcome.record.code == code, outcome.reason
    assert not device.repo.block_requests and device.installed() == []
    assert outcome.events[-1].evidence["code"] == code


def test_an_archive_over_the_configured_limit_is_refused(tmp_path):
    builder = RepoBuilder(tmp_path / "repo")
    release = builder.add_release(make_bundle(tmp_path, 2, pad=random_bytes(1_200_000, seed=1)))
    builder.publish()
    device = make_device(tmp_path, builder, max_archive_mb=1)
    assert device.check(release.desired).record.code == "too-large"


def test_an_unreachable_repository_is_a_failure_retried_by_the_next_check(builder, device):
    device.repo.unreachable = True
    failed = device.check(builder.releases[0].desired)
    assert failed.status is CheckStatus.FAILED and failed.record.code == "unreachable"
    assert failed.record.retry and failed.events[-1].evidence["state"] == "failed"
    assert device.check(builder.releases[0].desired).events == ()  # the same failure is said once
    device.repo.unreachable = False
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED


def test_resume_a_transfer_interrupted_after_k_blocks_asks_no_verified_block_again(builder, device):
    device.repo.fail_after_blocks = 5
    failed = device.check(builder.releases[0].desired)
    assert failed.status is CheckStatus.FAILED and failed.record.code == "link"
    assert failed.record.bytes_fetched > 0
    asked = dict(device.repo.block_requests)
    delivered = device.repo.blocks_sent
    device.repo.fail_after_blocks = None
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.INSTALLED
    assert outcome.transfer.resumed_blocks == delivered == 5
    total = len(builder.releases[0].index.blocks)
    assert device.repo.blocks_sent == total  # every block sent exactly once over both checks
    assert outcome.record.attempts == 2
    assert set(asked) | set(device.repo.block_requests) == set(range(total))


def test_reuse_a_release_that_changes_part_of_the_archive_fetches_only_the_changed_blocks(
    tmp_path, builder, device
):
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED
    v2 = builder.releases[0]
    v3 = builder.add_release(make_bundle(tmp_path, 3, pad=PAD[:-100_000] + random_bytes(100_000, seed=99)))
    builder.publish()
    sent = device.repo.bytes_sent
    outcome = device.check(v3.desired)
    assert outcome.status is CheckStatus.INSTALLED and device.installed() == [2, 3]
    known = {b.sha256 for b in v2.index.blocks}
    changed = sum(b.size for b in v3.index.blocks if b.sha256 not in known)
    fetched = device.repo.bytes_sent - sent - outcome.transfer.fetched_bytes  # metadata and index
    # the changed tail, the blocks it straddles and the manifest's block: a few average blocks, not the archive
    assert outcome.transfer.fetched_bytes == changed < 100_000 + 3 * AVG_BYTES < 0.5 * len(v3.archive)
    assert outcome.transfer.reused_bytes == len(v3.archive) - changed
    assert fetched < 20_000
    assert outcome.events[-1].evidence["bytes_reused"] == len(v3.archive) - changed


def test_a_damaged_state_file_is_reported_and_the_device_goes_on(builder, device):
    (device.state_dir / "ota").mkdir(parents=True)
    (device.state_dir / "ota" / "state.json").write_bytes(b'{"schema": 1, "state": "downl')
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.INSTALLED
    assert outcome.events[0].evidence["code"] == "state-file" and outcome.events[0].severity == "warning"


def test_the_bootstrap_root_is_used_only_until_the_trusted_root_exists(tmp_path, builder, device):
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED
    (tmp_path / "device-root.json").write_bytes(b"not a root")
    assert device.check(Desired(model=NAME, version=2)).status is CheckStatus.UP_TO_DATE
    v3 = builder.add_release(make_bundle(tmp_path, 3))
    builder.publish()
    assert device.check(v3.desired).status is CheckStatus.INSTALLED


def test_a_damaged_trusted_root_falls_back_to_the_bootstrap_root_and_says_so(tmp_path, builder, device):
    builder.rotate_root()
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED
    tuf = device.state_dir / "tuf"
    (tuf / "root.json").unlink()
    (tuf / "root.json").write_bytes(b"\0" * 10)  # a card that lost the file's contents
    v3 = builder.add_release(make_bundle(tmp_path, 3))
    builder.publish()
    outcome = device.check(v3.desired)
    assert outcome.status is CheckStatus.INSTALLED
    assert any(e.evidence.get("code") == "trust-root" for e in outcome.events)
    assert json.loads((tuf / "root.json").read_bytes())["signed"]["version"] == 2


def test_a_missing_bootstrap_root_is_a_clear_failure(tmp_path, builder):
    device = make_device(tmp_path, builder)
    (tmp_path / "device-root.json").unlink()
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.FAILED and outcome.record.code == "trust-root"


def test_an_event_sink_that_fails_does_not_stop_an_install(tmp_path, builder):
    device = make_device(tmp_path, builder)

    def broken(event):
        raise RuntimeError("outbox full")

    device.updater._emit = broken
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED


def test_the_config_refuses_unknown_keys_and_a_request_over_the_window():
    with pytest.raises(ValueError, match="extra"):
        OtaConfig(windw_blocks=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="request_blocks"):
        OtaConfig(window_blocks=5, request_blocks=6)
    with pytest.raises(ValueError):
        OtaConfig(window_blocks=101)
    assert OtaConfig().clock_floor_s == 1704067200.0
    assert all(field.description for field in OtaConfig.model_fields.values())


def test_a_release_installed_once_and_removed_since_is_installed_again(builder, device):
    assert device.check(builder.releases[0].desired).status is CheckStatus.INSTALLED
    rmtree(device.state_dir / "models" / NAME / "2")
    outcome = device.check(builder.releases[0].desired)
    assert outcome.status is CheckStatus.INSTALLED, outcome.reason
    assert outcome.transfer.reused_blocks == len(builder.releases[0].index.blocks)  # from the kept archive
    assert outcome.transfer.fetched_bytes == 0


def test_a_verifying_download_whose_archive_vanished_is_downloaded_again(builder, device):
    release = builder.releases[0]
    machine = UpdateMachine(None, "0.1.0")
    machine.offer(ReleaseId(name=NAME, version=2))
    machine.start_download(release.digest, len(release.archive), None)
    save_record(device.state_dir / "ota" / "state.json", machine.downloaded().after)
    outcome = device.check(release.desired)
    assert outcome.status is CheckStatus.INSTALLED, outcome.reason
    assert [e.evidence.get("code") for e in outcome.events if e.evidence.get("state") == "failed"] == ["disk"]
