"""Audio sources: WAV replay of files written here, and a live ALSA source fed by a fake `arecord` on PATH.

The fake arecord (written by `fake_arecord`) speaks the real protocol: it checks the command line the agent gives it,
then writes raw S16_LE frames of a known tone to its standard output at the requested rate, as arecord does, until it
is killed, or until it has written a given number of frames and "loses" the device (an error line on stderr, status 1).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
import tracemalloc
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from streams import Harness, wait_until

from agent.backoff import BackoffConfig
from agent.errors import SourceError
from agent.sources import AlsaConfig, EndOfStream, SourceState, WavConfig, open_source
from agent.sources.alsa import AlsaSource
from agent.sources.wav import CHUNK_FRAMES, WavSource

RATE = 16_000

# ---------------------------------------------------------------- WAV files


def sine(count: int, rate: int = RATE, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    """`count` samples of a sine, as floats in [-1, 1]."""
    return amplitude * np.sin(2 * np.pi * freq * np.arange(count) / rate)


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int) -> Path:
    """Writes integer samples ([frames, channels], already in the width's range) with the `wave` module."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    if width == 1:
        data = frames.astype(np.uint8).tobytes()
    elif width == 3:
        ints = frames.astype(np.int32).reshape(-1, 1)
        data = (
            ints.view(np.uint8).reshape(-1, 4)[:, :3]
        ).tobytes()  # little-endian host: the low three bytes
    else:
        data = frames.astype("<i2" if width == 2 else "<i4").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)
    return path


def write_riff(
    path: Path, payload: bytes, *, tag: int, channels: int, rate: int, bits: int, extensible: bool = False
) -> Path:
    """Writes a WAV file by hand: for what the `wave` module cannot write (float, extensible, mu-law)."""
    block = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + len(payload)) + body + payload)
    return path


def int16_sine(count: int, rate: int = RATE) -> np.ndarray:
    return np.round(sine(count, rate) * 32767).astype(np.int16)


def all_windows(source: WavSource, limit: int = 100_000) -> list[np.ndarray]:
    """Every window until the end of the file."""
    out: list[np.ndarray] = []
    source.open()
    try:
        for _ in range(limit):
            try:
                window = source.read(1.0)
            except EndOfStream:
                return out
            if window is not None:
                out.append(window)
    finally:
        source.close()
    raise AssertionError("no end of stream")


def take(source: WavSource, count: int) -> list[np.ndarray]:
    """The first `count` windows."""
    out: list[np.ndarray] = []
    source.open()
    try:
        while len(out) < count:
            window = source.read(1.0)
            if window is not None:
                out.append(window)
    finally:
        source.close()
    return out


def test_wav_16_bit_mono_sine_gives_its_samples_window_by_window(tmp_path: Path) -> None:
    ints = int16_sine(4000)
    path = write_wav(tmp_path / "a440.wav", ints, RATE, 2)
    source = WavSource(WavConfig(path=path, window=400, hop=160, rate="max"))
    windows = all_windows(source)
    expected = ints.astype(np.float32) / 32768
    assert (
        len(windows) == 1 + (4000 - 400) // 160
    )  # the samples after the last whole window are not delivered
    assert source.channel_names == ("ch0",)
    assert source.format is not None and source.format.describe() == "16-bit int, 1 channel(s), 16000 Hz"
    for index, window in enumerate(windows):
        assert window.dtype == np.float32 and window.shape == (400, 1)
        np.testing.assert_array_equal(window[:, 0], expected[index * 160 : index * 160 + 400])


def test_wav_8_bit_stereo_is_centred_and_scaled_per_channel(tmp_path: Path) -> None:
    left = np.round(128 + 127 * sine(1000, 8000)).astype(np.uint8)
    right = np.full(1000, 0, dtype=np.uint8)  # the most negative 8-bit sample
    path = write_wav(tmp_path / "stereo8.wav", np.stack([left, right], axis=1), 8000, 1)
    source = WavSource(WavConfig(path=path, channels=["left", "right"], window=250, rate="max"))
    windows = all_windows(source)
    assert len(windows) == 4 and source.channel_names == ("left", "right")
    joined = np.concatenate(windows)
    np.testing.assert_array_equal(joined[:, 0], (left.astype(np.float32) - 128) / 128)
    assert (joined[:, 1] == -1.0).all()


@pytest.mark.parametrize("kind", ["int24", "int32", "float32", "float64", "extensible-int16"])
def test_wav_other_sample_formats_scale_to_plus_minus_one(tmp_path: Path, kind: str) -> None:
    signal = sine(960, 48_000, freq=1000, amplitude=0.9)
    path = tmp_path / f"{kind}.wav"
    if kind == "int24":
        ints = np.round(signal * (2**23 - 1)).astype(np.int32)
        write_wav(path, ints, 48_000, 3)
        expected = ints / 2**23
    elif kind == "int32":
        ints = np.round(signal * (2**31 - 1)).astype(np.int64)
        write_wav(path, ints, 48_000, 4)
        expected = ints / 2**31
    elif kind.startswith("float"):
        bits = int(kind[5:])
        write_riff(path, signal.astype(f"<f{bits // 8}").tobytes(), tag=3, channels=1, rate=48_000, bits=bits)
        expected = signal
    else:
        ints16 = np.round(signal * 32767).astype("<i2")
        write_riff(path, ints16.tobytes(), tag=1, channels=1, rate=48_000, bits=16, extensible=True)
        expected = ints16 / 32768
    windows = all_windows(WavSource(WavConfig(path=path, window=480, rate="max")))
    assert len(windows) == 2
    np.testing.assert_allclose(np.concatenate(windows)[:, 0], expected.astype(np.float32), atol=1e-7)


def test_wav_float_samples_that_are_nan_or_infinite_are_skipped_as_garbage(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32) / 16
    values[[3, 7]] = [np.nan, np.inf]
    path = write_riff(tmp_path / "nan.wav", values.tobytes(), tag=3, channels=1, rate=RATE, bits=32)
    source = WavSource(WavConfig(path=path, window=5, rate="max"))
    windows = all_windows(source)
    assert source.garbage == 2
    assert [(w[:, 0] * 16).tolist() for w in windows] == [[0, 1, 2, 4, 5], [6, 8, 9, 10, 11]]


def test_wav_loop_continues_the_signal_across_the_end(tmp_path: Path) -> None:
    ints = int16_sine(1000)
    path = write_wav(tmp_path / "short.wav", ints, RATE, 2)
    windows = take(WavSource(WavConfig(path=path, window=300, loop=True, rate="max")), 7)
    expected = np.tile(ints.astype(np.float32) / 32768, 3)
    np.testing.assert_array_equal(np.concatenate(windows)[:, 0], expected[:2100])  # windows span the seams


def test_wav_native_pace_is_real_time_at_the_file_s_rate(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "third.wav", int16_sine(2400, 8000), 8000, 2)  # 0.3 s
    source = WavSource(WavConfig(path=path, window=800))  # a window every 0.1 s
    started = time.monotonic()
    windows = all_windows(source)
    elapsed = time.monotonic() - started
    assert len(windows) == 3
    assert 0.2 < elapsed < 2.0, elapsed


def test_wav_rate_as_a_number_is_windows_per_second(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "long.wav", int16_sine(RATE), RATE, 2)  # 1 s of audio
    source = WavSource(WavConfig(path=path, window=1600, rate=25.0))  # 10 windows, 25 per second: 0.36 s
    started = time.monotonic()
    windows = all_windows(source)
    elapsed = time.monotonic() - started
    assert len(windows) == 10
    assert 0.25 < elapsed < 2.0, elapsed


def test_wav_slow_schedule_never_holds_read_past_its_timeout(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "slow.wav", int16_sine(16_000, 8000), 8000, 2)
    source = WavSource(WavConfig(path=path, window=8000))  # the first window is due after 1 s
    source.open()
    try:
        asked = time.monotonic()
        assert source.read(0.05) is None
        assert time.monotonic() - asked < 0.5
    finally:
        source.close()


def test_long_wav_is_streamed_in_chunks_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "ten-minutes.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        block = int16_sine(RATE * 10).tobytes()
        for _ in range(60):
            out.writeframes(block)  # 600 s, 19.2 MB
    size = path.stat().st_size
    source = WavSource(WavConfig(path=path, window=160, hop=RATE * 100, rate="max"))
    tracemalloc.start()
    try:
        windows = all_windows(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(windows) == 6
    assert peak < 16 * CHUNK_FRAMES < size / 10, (peak, size)  # about a chunk at a time, never the file


def test_not_a_wav_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    cases = {
        "notes.wav": b"time,level\n0.0,1\n",
        "empty.wav": b"",
        "cut.wav": b"RIFF\x24\x00\x00\x00WAVE",
    }
    messages = {}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SourceError) as caught:
            WavSource(WavConfig(path=tmp_path / name)).open()
        messages[name] = str(caught.value)
    assert messages["notes.wav"] == f"wav {tmp_path / 'notes.wav'}: not a WAV file (no RIFF/WAVE header)"
    assert "not a WAV file" in messages["empty.wav"]
    assert "no fmt chunk" in messages["cut.wav"]
    mulaw = write_riff(tmp_path / "phone.wav", bytes(800), tag=7, channels=1, rate=8000, bits=8)
    with pytest.raises(SourceError, match=r"unsupported WAV encoding: format tag 0x0007 \(mu-law\)"):
        WavSource(WavConfig(path=mulaw)).open()
    with pytest.raises(SourceError, match=r"cannot open \(No such file or directory\)"):
        WavSource(WavConfig(path=tmp_path / "absent.wav")).open()
    silent = write_wav(tmp_path / "silent.wav", np.zeros((0, 1), dtype=np.int16), RATE, 2)
    source = WavSource(WavConfig(path=silent, rate="max", loop=True))
    source.open()
    with pytest.raises(SourceError, match="no samples in the file"):
        source.read(1.0)
    source.close()


def test_wav_with_another_sample_rate_is_refused_naming_both_rates(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "8k.wav", int16_sine(800, 8000), 8000, 2)
    with pytest.raises(SourceError, match=r"sampled at 8000 Hz, the config expects sample_rate = 16000 Hz"):
        WavSource(WavConfig(path=path, sample_rate=16_000, window=160)).open()
    WavSource(WavConfig(path=path, sample_rate=8000, window=160)).open()


def test_wav_channel_names_must_match_the_file_s_channels(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "mono.wav", int16_sine(800), RATE, 2)
    with pytest.raises(SourceError, match=r"the file has 1 channel\(s\), the config names 2: \['l', 'r'\]"):
        WavSource(WavConfig(path=path, channels=["l", "r"])).open()


def test_wav_through_the_runner_ends_after_the_last_window(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", int16_sine(1600), RATE, 2)
    config = WavConfig(path=path, window=400, rate="max")
    with Harness(config) as harness:
        harness.wait_state(SourceState.ENDED, 5)
    assert harness.count() == 4 and all(i.kind == "window" for i in harness.items)
    assert [i.seq for i in harness.items] == [0, 1, 2, 3]


def test_audio_configs_default_hop_to_window_and_refuse_mistakes(tmp_path: Path) -> None:
    assert WavConfig(path=tmp_path / "x.wav").hop == 16_000
    assert WavConfig(path=tmp_path / "x.wav", window=400).hop == 400
    assert WavConfig(path=tmp_path / "x.wav", window=400, hop=160).hop == 160
    alsa = AlsaConfig()
    assert (alsa.device, alsa.sample_rate, alsa.channels, alsa.window, alsa.hop) == (
        "default",
        16_000,
        ["ch0"],
        16_000,
        16_000,
    )
    assert isinstance(open_source(alsa), AlsaSource)  # no I/O: arecord starts when the runner opens it
    mistakes: list[tuple[dict[str, Any], str]] = [
        ({"channels": []}, "at least 1 item"),
        ({"channels": ["a", "a"]}, "channel names repeat"),
        ({"device": "-Dhw:0"}, "should match pattern"),
        ({"device": "hw:0 extra"}, "should match pattern"),
        ({"window": 16_000, "hop": 160_000}, r"stall_timeout_s .* \(hop / sample_rate = 10 s\)"),
        ({"size": 1}, "Extra inputs are not permitted"),
    ]
    for options, message in mistakes:
        with pytest.raises(ValidationError, match=message):
            AlsaConfig(**options)
    with pytest.raises(ValidationError, match=r"stall_timeout_s .* \(1 / rate = 10 s\)"):
        WavConfig(path=tmp_path / "x.wav", rate=0.1)
    with pytest.raises(ValidationError, match=r"stall_timeout_s .* \(hop / sample_rate = 8 s\)"):
        WavConfig(path=tmp_path / "x.wav", sample_rate=8000, window=64_000)


# ---------------------------------------------------------------- ALSA through a fake arecord

FAKE_ARECORD = '''#!{python}
"""A stand-in for arecord: checks its command line, writes a raw S16_LE tone to stdout at the requested rate."""
import json, math, os, signal, struct, sys, time

args = sys.argv[1:]
with open(os.environ["FAKE_ARECORD_LOG"], "a") as log:
    log.write(json.dumps({{"pid": os.getpid(), "args": args}}) + "\\n")
try:
    assert len(args) == 11 and args[:5] == ["-q", "-t", "raw", "-f", "S16_LE"]
    assert (args[5], args[7], args[9]) == ("-r", "-c", "-D")
    rate, channels = int(args[6]), int(args[8])
except (AssertionError, ValueError):
    print("arecord: unexpected arguments: " + " ".join(args), file=sys.stderr)
    sys.exit(64)
mode = os.environ.get("FAKE_ARECORD_MODE", "tone")
if mode == "no-device":
    print("arecord: main:850: audio open error: No such file or directory", file=sys.stderr)
    sys.exit(1)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
limit = int(os.environ.get("FAKE_ARECORD_FRAMES", "0"))  # frames, then a read error; 0: until killed
out, k, started = sys.stdout.buffer, 0, time.monotonic()
try:
    while not limit or k < limit:
        count = rate // 100 if not limit else min(rate // 100, limit - k)
        out.write(b"".join(
            struct.pack("<h", round(8000 * (c + 1) * math.sin(2 * math.pi * 440 * i / rate)))
            for i in range(k, k + count) for c in range(channels)
        ))
        out.flush()
        k += count
        time.sleep(max(0.0, started + k / rate - time.monotonic()))
except BrokenPipeError:
    sys.exit(1)
print("arecord: pcm_read:2221: read error: Input/output error", file=sys.stderr)
sys.exit(1)
'''


def tone(count: int, channels: int, rate: int = RATE) -> np.ndarray:
    """The fake's samples, computed as it computes them, as floats."""
    rows = [
        [round(8000 * (c + 1) * math.sin(2 * math.pi * 440 * i / rate)) for c in range(channels)]
        for i in range(count)
    ]
    return np.asarray(rows, dtype=np.float32) / 32768


class FakeArecord:
    """The fake installed first on PATH, and what it logged about each run."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        folder.mkdir()
        program = folder / "arecord"
        program.write_text(FAKE_ARECORD.format(python=sys.executable))
        program.chmod(0o755)
        self.log = folder / "runs.jsonl"
        self.log.touch()
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_ARECORD_LOG", str(self.log))
        self.monkeypatch = monkeypatch

    def mode(self, mode: str, frames: int = 0) -> None:
        self.monkeypatch.setenv("FAKE_ARECORD_MODE", mode)
        self.monkeypatch.setenv("FAKE_ARECORD_FRAMES", str(frames))

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def arecord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeArecord:
    return FakeArecord(tmp_path / "bin", monkeypatch)


def gone(pid: int) -> bool:
    """True when the process has ended and been reaped (a zombie still has its /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


def test_alsa_source_delivers_the_tone_arecord_records(arecord: FakeArecord) -> None:
    config = AlsaConfig(device="plughw:CARD=Mic,DEV=0", channels=["left", "right"], window=320, hop=160)
    source = AlsaSource(config)
    source.open()
    try:
        windows: list[np.ndarray] = []
        deadline = time.monotonic() + 5
        while len(windows) < 6 and time.monotonic() < deadline:
            window = source.read(0.25)
            if window is not None:
                windows.append(window)
    finally:
        source.close()
    (run,) = arecord.runs()
    assert run["args"] == [
        "-q",
        "-t",
        "raw",
        "-f",
        "S16_LE",
        "-r",
        "16000",
        "-c",
        "2",
        "-D",
        "plughw:CARD=Mic,DEV=0",
    ]
    expected = tone(160 * 7, 2)
    assert len(windows) == 6
    for index, window in enumerate(windows):
        assert window.dtype == np.float32 and window.shape == (320, 2)
        np.testing.assert_array_equal(window, expected[index * 160 : index * 160 + 320])
    assert gone(run["pid"])


def test_alsa_without_arecord_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SourceError, match=r"arecord is not installed .*sudo apt install alsa-utils"):
        AlsaSource(AlsaConfig()).open()


def test_alsa_device_that_cannot_open_fails_with_arecord_s_own_message(arecord: FakeArecord) -> None:
    arecord.mode("no-device")
    source = AlsaSource(AlsaConfig(device="hw:9,0"))
    with pytest.raises(SourceError) as caught:
        source.open()
    assert str(caught.value) == (
        "alsa hw:9,0: arecord exited with status 1: arecord: main:850: audio open error: No such file or directory"
    )
    assert gone(arecord.runs()[0]["pid"])


def test_alsa_arecord_dying_mid_stream_is_a_source_error_with_its_stderr(arecord: FakeArecord) -> None:
    arecord.mode("tone", frames=800)
    source = AlsaSource(AlsaConfig(window=160))
    source.open()
    windows = 0
    try:
        with pytest.raises(SourceError, match=r"exited with status 1: arecord: pcm_read:2221: read error"):
            for _ in range(100):
                windows += source.read(0.5) is not None
    finally:
        source.close()
    assert windows == 5  # every sample it wrote before it died
    assert gone(arecord.runs()[0]["pid"])


def test_alsa_runner_restarts_arecord_after_it_dies(arecord: FakeArecord) -> None:
    arecord.mode("tone", frames=320)
    config = AlsaConfig(window=160, reconnect=BackoffConfig(initial_s=0.05, max_s=0.1))
    with Harness(config) as harness:
        wait_until(lambda: len(arecord.runs()) >= 3, 5, "three runs of arecord")
        harness.wait_items(4, 5)
    status = harness.runner.status()
    assert "read error: Input/output error" in (status.last_error or "")
    assert status.reconnects >= 2 and "reconnecting" in harness.state_names
    wait_until(lambda: all(gone(run["pid"]) for run in arecord.runs()), 3, "every arecord reaped")


def test_alsa_stop_leaves_no_child_process(arecord: FakeArecord) -> None:
    config = AlsaConfig(window=160)
    with Harness(config) as harness:
        harness.wait_items(2, 5)
        (run,) = arecord.runs()
        assert not gone(run["pid"])
    assert harness.runner.state is SourceState.STOPPED
    assert gone(run["pid"])


def test_alsa_arecord_ignoring_sigterm_is_killed_at_close(arecord: FakeArecord) -> None:
    arecord.mode("ignore-term")
    source = AlsaSource(AlsaConfig(window=160))
    source.open()
    assert source.read(1.0) is not None
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 3
    assert gone(arecord.runs()[0]["pid"])
    source.close()  # twice is harmless
