"""Pure decisions around a release: is it for this device, the agent version order, the installed versions on disk,
and the progress throttle."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ota import DeviceFacts, Layout, UpdateRefused
from agent.ota.checks import Limits, check_release, version_tuple
from agent.ota.report import Throttle
from agent.ota.transfer import TransferProgress
from agent.release.formats import Capabilities, Desired, ReleaseCustom, TargetRef

MIB = 1024 * 1024
CUSTOM = ReleaseCustom(
    name="digits-cls",
    version=3,
    block_index=TargetRef(path="bundles/digits-cls/3.blocks.json", length=1000, sha256="a" * 64),
    fleet="fleet-a",
    groups=("group-1", "group-2"),
    min_agent_version="0.1",
    capabilities=Capabilities(
        runtime="onnxruntime", providers=("CPUExecutionProvider",), input_kind="window"
    ),
)
FACTS = DeviceFacts(
    runtimes=frozenset({"onnxruntime"}),
    providers=frozenset({"CPUExecutionProvider"}),
    input_kind="window",
    ram_mb=512,
    free_disk_bytes=500 * MIB,
)
LIMITS = Limits(max_archive_bytes=100 * MIB, reserve_disk_bytes=64 * MIB)


def check(custom: ReleaseCustom = CUSTOM, length: int = 10 * MIB, **changes: object) -> None:
    values: dict[str, object] = {
        "desired": Desired(model="digits-cls", version=3),
        "fleet": "fleet-a",
        "group": "group-1",
        "agent_version": "0.1.0",
        "facts": FACTS,
        "limits": LIMITS,
    }
    values.update(changes)
    check_release(custom, length, **values)  # type: ignore[arg-type]


def test_a_release_for_this_device_passes():
    check()
    check(
        facts=DeviceFacts(runtimes=frozenset({"onnxruntime"}), providers=frozenset({"CPUExecutionProvider"}))
    )


REFUSALS = {
    "mismatch": {"desired": Desired(model="digits-cls", version=4)},
    "other-fleet": {"fleet": "fleet-b"},
    "other-group": {"group": "group-9"},
    "agent-too-old": {"agent_version": "0.0.9"},
    "runtime": {"facts": DeviceFacts(runtimes=frozenset({"litert"}))},
    "providers": {"facts": DeviceFacts(runtimes=frozenset({"onnxruntime"}))},
    "input-kind": {
        "facts": DeviceFacts(runtimes=FACTS.runtimes, providers=FACTS.providers, input_kind="image")
    },
    "too-large": {"length": 200 * MIB},
    "disk": {
        "length": 90 * MIB,  # the part and the unpacked bundle: 180 MiB; 200 free less the 64 kept in reserve
        "facts": DeviceFacts(runtimes=FACTS.runtimes, providers=FACTS.providers, free_disk_bytes=200 * MIB),
    },
}


@pytest.mark.parametrize("code", list(REFUSALS))
def test_each_reason_a_release_is_not_for_this_device(code):
    changes = dict(REFUSALS[code])
    length = changes.pop("length", 10 * MIB)
    with pytest.raises(UpdateRefused) as raised:
        check(length=length, **changes)  # type: ignore[arg-type]
    assert raised.value.code == code and str(raised.value)


def test_memory_and_stated_disk_needs_are_checked():
    hungry = CUSTOM.model_copy(
        update={"capabilities": CUSTOM.capabilities.model_copy(update={"ram_mb": 1024})}
    )
    with pytest.raises(UpdateRefused, match="memory"):
        check(hungry)
    big = CUSTOM.model_copy(update={"capabilities": CUSTOM.capabilities.model_copy(update={"disk_mb": 450})})
    with pytest.raises(UpdateRefused, match="MiB"):
        check(big)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", (0, 0, 0, 0)), ("1.2.3", (1, 2, 3, 0)), ("0.1.0.dev1", (0, 1, 0, 0)), ("2.10", (2, 10, 0, 0))],
)
def test_agent_versions_compare_by_number(text, expected):
    assert version_tuple(text) == expected
    assert version_tuple("0.10") > version_tuple("0.9")


def test_only_whole_version_folders_count_as_installed(tmp_path: Path):
    layout = Layout(tmp_path)
    folder = layout.model_dir("m")
    for name in ["1", "12", "3", ".4.abcd1234.partial", "archives", "05", "x7"]:
        (folder / name).mkdir(parents=True)
    (folder / "9").write_text("a file, not a bundle")
    assert layout.installed_versions("m") == [1, 3, 12]
    assert layout.installed_versions("absent") == []


def test_progress_events_are_throttled_but_the_last_always_passes():
    now = [0.0]
    throttle = Throttle(5.0, lambda: now[0])

    def at(done: int) -> bool:
        return throttle.due(
            TransferProgress(done_bytes=done, total_bytes=100, fetched_bytes=done, reused_bytes=0)
        )

    assert at(1)
    now[0] = 1.0
    assert not at(10)
    now[0] = 6.0
    assert at(50)
    now[0] = 6.5
    assert at(100)


def test_recovery_removes_only_what_an_updater_step_left_behind(tmp_path: Path):
    from agent.ota.install import recover

    layout = Layout(tmp_path)
    model = layout.model_dir("m")
    (model / "2").mkdir(parents=True)
    leftovers = [model / ".3.0123abcd.partial", model / ".3.0123abcd.partial.89abcdef.trash"]
    for folder in leftovers:
        (folder / "golden").mkdir(parents=True)
        (folder / "golden" / "x").write_text("half")
        (folder / "golden").chmod(0o555)
        folder.chmod(0o555)  # unpack makes its work folder read-only before renaming it into place
    (model / "archives").mkdir()
    (model / "archives" / ".3.blocks.json.abc123.tmp").write_text("{")
    (model / ".active.tmp").symlink_to("2")  # the daemon's, not the updater's
    layout.ota_dir.mkdir()
    keep, stale = "a" * 64, "b" * 64
    for name in [f"{keep}.part", f"{keep}.bitmap", f"{stale}.part", f"{stale}.blocks.json", "state.json"]:
        (layout.ota_dir / name).write_text("x")
    # the updater's own temp files go; the daemon's activation record, being written right now, keeps its temp file
    for name in [".state.json.k2j3.tmp", f".{stale}.bitmap.x1.tmp", f".{stale}.blocks.json.tmp"]:
        (layout.ota_dir / name).write_text("x")
    daemons = [".activation.json.133lcf86.tmp", ".clean-stop.ab12.tmp"]
    for name in daemons:
        (layout.ota_dir / name).write_text("x")
    removed = recover(layout, keep)
    assert sorted(p.name for p in model.iterdir()) == [".active.tmp", "2", "archives"]
    assert list((model / "archives").iterdir()) == []
    assert sorted(p.name for p in layout.ota_dir.iterdir()) == sorted(
        [f"{keep}.part", f"{keep}.bitmap", "state.json", *daemons]
    )
    assert len(removed) == 8
