"""The block transfer: window and pacing, checks on arrival, re-requests, tries, budget, resume and reuse."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_support import LocalRepo, random_bytes

from agent.backoff import BackoffConfig
from agent.ota import Interrupted, Layout, TransferFailed
from agent.ota.partial import PartialFile
from agent.ota.reuse import ReuseIndex
from agent.ota.transfer import BlockTransfer, TransferSettings
from agent.release.chunking import block_index
from agent.release.formats import PROP_BLOCK, BlockIndex, RepoRequest

FAST = BackoffConfig(initial_s=0.01, max_s=0.05, multiplier=2, jitter=0.1)


class Served:
    """An archive in a repository folder, and a device folder to fetch it into."""

    def __init__(self, tmp_path: Path, data: bytes, name: str = "x", version: int = 1) -> None:
        self.data = data
        self.digest = hashlib.sha256(data).hexdigest()
        folder = tmp_path / "repo" / "targets" / "bundles" / name
        folder.mkdir(parents=True, exist_ok=True)
        archive = folder / f"{self.digest}.{version}.tar"
        archive.write_bytes(data)
        self.index = block_index(archive)
        index_bytes = self.index.model_dump_json().encode()
        (folder / f"{hashlib.sha256(index_bytes).hexdigest()}.{version}.blocks.json").write_bytes(index_bytes)
        self.repo = LocalRepo(tmp_path / "repo")
        self.layout = Layout(tmp_path / "device")

    def partial(self, checkpoint_blocks: int = 2) -> PartialFile:
        return PartialFile(
            self.layout.part(self.digest), self.layout.bitmap(self.digest), self.index, checkpoint_blocks
        )

    def transfer(
        self, port: object = None, reuse: ReuseIndex | None = None, **settings: object
    ) -> BlockTransfer:
        values: dict[str, object] = {
            "budget_bytes": 3 * len(self.data),
            "window_blocks": 6,
            "request_blocks": 2,
            "request_timeout_s": 0.3,
            "max_tries": 4,
            "retry": FAST,
        }
        values.update(settings)
        return BlockTransfer(
            port or self.repo,  # type: ignore[arg-type]
            self.partial(),
            reuse or ReuseIndex(),
            TransferSettings(**values),  # type: ignore[arg-type]
        )

    def run(self, **kwargs: object):
        transfer = self.transfer(**kwargs)
        try:
            return transfer.run()
        finally:
            transfer._partial.close()

    def assembled(self) -> bytes:
        return self.layout.part(self.digest).read_bytes()


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return Served(tmp_path, random_bytes(1_200_000, seed=3))


def test_the_archive_arrives_whole_each_block_asked_once(served):
    report = served.run()
    assert served.assembled() == served.data
    assert report.fetched_blocks == len(served.index.blocks) > 10
    assert set(served.repo.block_requests.values()) == {1}
    assert report.fetched_bytes == len(served.data) and report.dropped_blocks == 0


class Counting:
    """Wraps a port; records how many blocks are asked for and not yet taken by the receiver."""

    def __init__(self, port: LocalRepo) -> None:
        self.port, self.outstanding, self.peak = port, 0, 0

    def request(self, request: RepoRequest, timeout_s: float) -> Iterator[tuple[dict[str, str], bytes]]:
        messages = self.port.request(request, timeout_s)
        self.outstanding += len(request.blocks)
        self.peak = max(self.peak, self.outstanding)
        return self._taken(messages)

    def _taken(self, messages):
        for props, payload in messages:
            self.outstanding -= 1
            yield props, payload


@pytest.mark.parametrize(("window", "request_blocks"), [(6, 2), (1, 1), (5, 3), (100, 10)])
def test_the_receiver_paces_the_sender_never_more_than_the_window_unacknowledged(
    served, window, request_blocks
):
    port = Counting(served.repo)
    served.run(port=port, window_blocks=window, request_blocks=request_blocks)
    assert served.assembled() == served.data
    assert port.peak <= window
    assert all(len(r.blocks) <= request_blocks for r in served.repo.requests)


def test_tampered_block_is_dropped_re_requested_and_the_archive_completes(served):
    served.repo.corrupt[3] = 1
    report = served.run()
    assert served.assembled() == served.data
    assert served.repo.block_requests[3] == 2 and report.dropped_blocks == 1


def test_a_dropped_block_is_asked_again_after_the_request_deadline(served):
    served.repo.drop[5] = 2
    report = served.run()
    assert served.assembled() == served.data
    assert served.repo.block_requests[5] == 3 and report.fetched_blocks == len(served.index.blocks)


def test_a_block_answered_twice_is_dropped_the_second_time_and_not_asked_again(served):
    # Requests of 2 blocks: block 1's copy comes after its request is complete (never read), block 2's while
    # block 3 is still awaited (read and dropped).
    served.repo.twice = {1, 2}
    report = served.run()
    assert served.assembled() == served.data
    assert report.dropped_blocks == 1
    assert served.repo.block_requests[1] == served.repo.block_requests[2] == 1


def test_a_block_bad_on_every_try_fails_the_transfer_after_max_tries(served):
    served.repo.corrupt[2] = 100
    with pytest.raises(TransferFailed, match="block 2") as raised:
        served.run(max_tries=3)
    assert raised.value.code == "block-missing" and raised.value.retry
    assert served.repo.block_requests[2] == 3


def test_endless_data_attack_on_blocks_oversized_blocks_are_dropped_and_the_budget_stops_it(served):
    served.repo.oversize_blocks = 64 * 1024
    with pytest.raises(TransferFailed) as raised:
        served.run(max_tries=100, budget_bytes=2 * len(served.data))
    assert raised.value.code == "budget" and not raised.value.retry
    assert served.repo.bytes_sent <= 2 * len(served.data) + 2 * 200 * 1024


def test_a_release_over_its_data_budget_is_not_even_asked(served):
    with pytest.raises(TransferFailed, match="budget"):
        served.run(budget_bytes=100_000)
    assert served.repo.block_requests.total() <= 100_000 // (16 * 1024) + 2


def test_slow_retrieval_attack_a_silent_repository_fails_the_transfer_within_tries_times_deadline(served):
    served.repo.silent = True
    with pytest.raises(TransferFailed, match="after 2 requests"):
        served.run(max_tries=2, request_timeout_s=0.1, window_blocks=2, request_blocks=2)


def test_an_unknown_archive_or_an_unreachable_repository_fails_clearly(tmp_path, served):
    served.repo.unreachable = True
    with pytest.raises(TransferFailed, match="cannot be reached"):
        served.run()
    other = Served(tmp_path / "other", random_bytes(50_000, seed=9))
    other.repo.folder = tmp_path / "empty"
    with pytest.raises(TransferFailed, match="does not have the archive"):
        other.run()


def test_resume_after_the_link_drops_asks_no_verified_block_again(served):
    served.repo.fail_after_blocks = 7
    with pytest.raises(TransferFailed, match="link"):
        served.run()
    served.repo.fail_after_blocks = None
    asked_before = Counter(served.repo.block_requests)
    partial = served.partial()
    assert partial.resumed_blocks == 7
    have = {i for i in range(len(served.index.blocks)) if partial.has(i)}
    partial.close()
    report = served.run()
    assert served.assembled() == served.data and report.resumed_blocks == 7
    asked_after = served.repo.block_requests - asked_before
    assert not have & set(asked_after), "a verified block was fetched twice"


def test_resume_finds_blocks_written_after_the_last_checkpoint_by_their_hash(served):
    partial = served.partial(checkpoint_blocks=1000)
    for i in range(5):
        block = served.index.blocks[i]
        partial.write(i, served.data[block.offset : block.offset + block.size])
    os_fd_dies_here = partial._fd  # a SIGKILL: no checkpoint, no bitmap
    import os

    os.close(os_fd_dies_here)
    assert not served.layout.bitmap(served.digest).exists()
    report = served.run()
    assert report.resumed_blocks == 5 and set(served.repo.block_requests) == set(
        range(5, len(served.index.blocks))
    )


def test_a_damaged_bitmap_is_ignored_and_the_part_checked_by_hash(served):
    served.repo.fail_after_blocks = 4
    with pytest.raises(TransferFailed):
        served.run()
    served.layout.bitmap(served.digest).write_bytes(b"{not json")
    served.repo.fail_after_blocks = None
    assert served.run().resumed_blocks == 4
    assert served.assembled() == served.data


def test_a_bitmap_that_lies_is_caught_by_the_final_check_not_trusted_blindly(served):
    # The bitmap marks blocks the part does not hold (a card that lost writes): the transfer trusts it, and the
    # assembled archive fails its hash, which is what the updater's TUF check on the whole file is for.
    partial = served.partial()
    for i in range(3):
        partial._have[i >> 3] |= 0x80 >> (i & 7)
    partial.close()
    served.run()
    assert hashlib.sha256(served.assembled()).hexdigest() != served.digest


def test_reuse_copies_blocks_an_installed_archive_holds_and_fetches_only_the_rest(tmp_path):
    base = random_bytes(1_000_000, seed=5)
    old = Served(tmp_path / "old", base)
    kept = old.layout.archives("x")
    kept.mkdir(parents=True)
    (kept / "1.tar").write_bytes(base)
    (kept / "1.blocks.json").write_bytes(old.index.model_dump_json().encode())
    changed = base[:-150_000] + random_bytes(150_000, seed=6)
    new = Served(tmp_path / "old", changed, version=2)
    known = {b.sha256 for b in old.index.blocks}
    new_blocks = [i for i, b in enumerate(new.index.blocks) if b.sha256 not in known]
    report = new.run(reuse=ReuseIndex.scan(old.layout))
    assert new.assembled() == changed
    assert set(new.repo.block_requests) == set(new_blocks)
    assert report.fetched_bytes == sum(new.index.blocks[i].size for i in new_blocks) < 0.3 * len(changed)
    assert report.reused_bytes + report.fetched_bytes == len(changed)


def test_a_damaged_kept_archive_is_not_copied_from(tmp_path):
    base = random_bytes(400_000, seed=5)
    served = Served(tmp_path, base)
    kept = served.layout.archives("x")
    kept.mkdir(parents=True)
    (kept / "1.tar").write_bytes(bytes(len(base)))  # right size, wrong bytes
    (kept / "1.blocks.json").write_bytes(served.index.model_dump_json().encode())
    report = served.run(reuse=ReuseIndex.scan(served.layout))
    assert report.reused_blocks == 0 and served.assembled() == base


def test_blocks_of_equal_content_are_asked_once(tmp_path):
    chunk = random_bytes(300_000, seed=8)
    served = Served(tmp_path, chunk + chunk + chunk)
    report = served.run()
    assert served.assembled() == chunk * 3
    distinct = {b.sha256 for b in served.index.blocks}
    assert served.repo.block_requests.total() == len(distinct) < len(served.index.blocks)
    one_each = {b.sha256: b.size for b in served.index.blocks}
    assert report.fetched_bytes == sum(one_each.values()) < 0.6 * len(served.assembled())


def test_a_stop_interrupts_the_transfer_between_messages_and_it_resumes(served):
    stop = threading.Event()

    class Stopper:
        def request(self, request, timeout_s):
            for props, payload in served.repo.request(request, timeout_s):
                if props.get(PROP_BLOCK) == "4":
                    stop.set()
                yield props, payload

    transfer = BlockTransfer(
        Stopper(), served.partial(), ReuseIndex(), TransferSettings(budget_bytes=10**8, retry=FAST), stop=stop
    )
    with pytest.raises(Interrupted):
        transfer.run()
    transfer._partial.close()
    assert served.run().resumed_blocks >= 1
    assert served.assembled() == served.data


def test_an_empty_archive_needs_no_request(tmp_path):
    served = Served(tmp_path, b"")
    assert served.index == BlockIndex(
        archive_sha256=hashlib.sha256(b"").hexdigest(),
        archive_length=0,
        chunking=served.index.chunking,
        blocks=(),
    )
    assert served.run().requests == 0
