"""The TUF fetcher over the repository port: ngclient's contract (404, deadlines, lengths) over a hostile transport."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ota_support import LocalRepo
from tuf.api import exceptions

from agent.ota.fetcher import METADATA_URL, TARGETS_URL, RepoFetcher, request_for
from agent.release.formats import PART_BYTES, PROP_PART, PROP_PARTS, PROP_STATUS, RepoRequest

BODY = bytes(range(256)) * 1000  # 256000 bytes: 4 parts


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepo:
    (tmp_path / "metadata").mkdir()
    (tmp_path / "targets" / "bundles" / "x").mkdir(parents=True)
    (tmp_path / "metadata" / "3.snapshot.json").write_bytes(BODY)
    (tmp_path / "targets" / "bundles" / "x" / ("a" * 64 + ".1.blocks.json")).write_bytes(b"{}")
    return LocalRepo(tmp_path)


def test_a_file_in_parts_comes_back_whole(repo):
    fetcher = RepoFetcher(repo, timeout_s=5)
    assert fetcher.download_bytes(METADATA_URL + "3.snapshot.json", len(BODY)) == BODY
    assert repo.messages_sent == 4 and fetcher.bytes_received == len(BODY)
    assert repo.requests == [RepoRequest(kind="metadata", path="3.snapshot.json")]
    assert fetcher.download_bytes(TARGETS_URL + f"bundles/x/{'a' * 64}.1.blocks.json", 100) == b"{}"
    assert repo.requests[-1].kind == "target"


def test_a_missing_file_is_a_404_so_the_root_rotation_loop_stops(repo):
    with pytest.raises(exceptions.DownloadHTTPError) as raised:
        RepoFetcher(repo, timeout_s=5).download_bytes(METADATA_URL + "2.root.json", 512000)
    assert raised.value.status_code == 404


def test_endless_data_attack_more_bytes_than_the_maximum_is_cut_short(repo):
    repo.extra_bytes = 10 * PART_BYTES
    with pytest.raises(exceptions.DownloadLengthMismatchError):
        RepoFetcher(repo, timeout_s=5).download_bytes(METADATA_URL + "3.snapshot.json", len(BODY))
    assert repo.messages_sent <= len(BODY) // PART_BYTES + 1


def test_endless_data_attack_announcing_endless_parts_is_refused_at_the_first_part(repo):
    repo.claim_parts = 10**9
    with pytest.raises(exceptions.DownloadLengthMismatchError, match="parts announced"):
        RepoFetcher(repo, timeout_s=5).download_bytes(METADATA_URL + "3.snapshot.json", 16384)
    assert repo.messages_sent == 1


def test_slow_retrieval_attack_a_repository_that_never_answers_fails_at_the_deadline(repo):
    repo.silent = True
    started = time.monotonic()
    with pytest.raises(exceptions.SlowRetrievalError):
        RepoFetcher(repo, timeout_s=0.3).download_bytes(METADATA_URL + "3.snapshot.json", len(BODY))
    assert 0.25 < time.monotonic() - started < 1.5


def test_slow_retrieval_attack_a_trickle_past_the_deadline_fails_at_the_deadline(repo):
    repo.trickle_s, repo.honour_deadline = 0.2, False  # a port that keeps delivering, late
    started = time.monotonic()
    with pytest.raises(exceptions.SlowRetrievalError):
        RepoFetcher(repo, timeout_s=0.3).download_bytes(METADATA_URL + "3.snapshot.json", len(BODY))
    assert time.monotonic() - started < 1.0
    assert repo.messages_sent <= 2


class _Scripted:
    """A port that answers every request with the same scripted messages."""

    def __init__(self, messages: list[tuple[dict[str, str], bytes]]) -> None:
        self.messages = messages

    def request(self, request: RepoRequest, timeout_s: float) -> Iterator[tuple[dict[str, str], bytes]]:
        return iter(self.messages)


def _part(i: int, n: int, data: bytes = b"x") -> tuple[dict[str, str], bytes]:
    return {PROP_STATUS: "200", PROP_PART: str(i), PROP_PARTS: str(n)}, data


BAD_RESPONSES = {
    "parts out of order": [_part(1, 2), _part(0, 2)],
    "the part count changes": [_part(0, 2), _part(1, 3)],
    "a response that ends early": [_part(0, 3), _part(1, 3)],
    "no part number": [({PROP_STATUS: "200"}, b"x")],
    "a part over 64 KiB": [_part(0, 1, b"x" * (PART_BYTES + 1))],
    "an error after the first part": [_part(0, 2), ({PROP_STATUS: "500"}, b"")],
}


@pytest.mark.parametrize("case", list(BAD_RESPONSES))
def test_a_malformed_response_is_a_download_error(case):
    with pytest.raises(exceptions.DownloadError):
        RepoFetcher(_Scripted(BAD_RESPONSES[case]), timeout_s=5).download_bytes(
            METADATA_URL + "a.json", 10**6
        )


def test_another_status_is_an_http_error_with_that_status():
    port = _Scripted([({PROP_STATUS: "429", "error": "slow down"}, b"")])
    with pytest.raises(exceptions.DownloadHTTPError, match="slow down") as raised:
        RepoFetcher(port, timeout_s=5).download_bytes(METADATA_URL + "a.json", 100)
    assert raised.value.status_code == 429


def test_an_unreachable_repository_is_a_download_error(repo):
    repo.unreachable = True
    with pytest.raises(exceptions.DownloadError, match="cannot be reached"):
        RepoFetcher(repo, timeout_s=5).download_bytes(METADATA_URL + "timestamp.json", 100)


@pytest.mark.parametrize(
    "url",
    [
        "https://repo/metadata/timestamp.json",
        "mqtt://elsewhere/metadata/timestamp.json",
        "mqtt://repo/other/timestamp.json",
        "mqtt://repo/metadata/../secrets",
        "mqtt://repo/metadata/a.json?x=1",
    ],
)
def test_a_url_that_is_not_a_repository_file_is_refused(url):
    with pytest.raises(exceptions.DownloadError):
        request_for(url)
