"""Multi-input and stateful models: Silero's voice activity detector (from the silero-vad wheel) fed its recurrent
state and sample rate by the agent, across a stream, equal to a bare onnxruntime loop that carries the state by
hand; the manifest's `inputs` checked against the model; the ordered queue that drops nothing."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import assert_clean_error, edit_manifest, run_cli

from agent.errors import ContractError
from agent.inference import Model
from agent.inference.bundle import load_bundle
from agent.pipeline.mailbox import OrderedMailbox

pytest_plugins = ["public_models"]  # the session fixture `public_models`

INPUTS = [
    {"name": "input", "role": "data"},
    {"name": "state", "role": "state", "from_output": "stateN"},
    {"name": "sr", "role": "constant", "value": 16000},
]
RATE, WINDOW = 16000, 512


def stream(seconds: float, seed: int = 1) -> np.ndarray:
    """Noise, then a tone with a vowel-like envelope from 0.7 s: float32 [samples, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(RATE * seconds) // WINDOW * WINDOW) / RATE
    voiced = 0.4 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) * (t > 0.7)
    return (voiced + 0.02 * rng.standard_normal(t.size)).astype(np.float32)[:, None]


@pytest.fixture(scope="module")
def vad(public_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vad")
    windows = stream(1.0).reshape(-1, WINDOW, 1)[:16]
    np.save(folder / "windows.npy", windows)
    out = folder / "silero-vad"
    run_cli(
        "model", "init", str(public_models["silero-vad.onnx"]), "--task", "raw", "--channels", "audio",
        "--input-shape", "input=1,512", "--input-shape", "state=2,1,128", "--inputs", json.dumps(INPUTS),
        "--samples", str(folder / "windows.npy"), "--out", str(out), "--name", "silero-vad", check=True,
    )  # fmt: skip
    return out


def test_a_stateful_model_across_a_stream_equals_a_bare_runtime_loop_carrying_the_state_by_hand(
    vad: Path, public_models: dict[str, Path]
) -> None:
    windows = stream(2.0).reshape(-1, WINDOW, 1)
    session = ort.InferenceSession(str(public_models["silero-vad.onnx"]), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(RATE, dtype=np.int64)
    bare = []
    for window in windows:
        probability, state = session.run(None, {"input": window.T.copy(), "state": state, "sr": sr})
        bare.append(float(probability.reshape(-1)[0]))
    model = Model.load(vad)
    try:
        assert model.stateful
        agent = [
            float(model.dequantize(model.invoke(model.prepare(w).tensor))[0].reshape(-1)[0]) for w in windows
        ]
        stateless = []
        for window in windows:
            model.reset_state()
            stateless.append(
                float(model.dequantize(model.invoke(model.prepare(window).tensor))[0].reshape(-1)[0])
            )
    finally:
        model.close()
    np.testing.assert_allclose(agent, bare, rtol=1e-5, atol=1e-6)
    assert stateless[0] == pytest.approx(bare[0], abs=1e-6)  # a reset is the initial state
    # the state matters: the same windows each from the initial state score otherwise
    assert max(abs(a - b) for a, b in zip(stateless[1:], bare[1:], strict=True)) > 1e-4


def test_a_stateful_bundle_verifies_each_golden_case_from_the_initial_state(vad: Path) -> None:
    report = json.loads(run_cli("model", "verify", "--json", str(vad), check=True).stdout)
    assert report["passed"] and {o["name"] for o in report["cases"][0]["outputs"]} == {"output", "stateN"}
    manifest = json.loads((vad / "manifest.json").read_text())
    assert [i["role"] for i in manifest["inputs"]] == ["data", "state", "constant"]
    assert manifest["input"] == {
        "kind": "window", "layout": "NCT", "length": 512, "channels": ["audio"], "mean": [0.0], "std": [1.0],
    }  # fmt: skip
    bench = json.loads(run_cli("bench", "--json", "--model", str(vad), "--runs", "5", "--warmup", "1").stdout)
    assert bench["stages"]["invoke"]["runs"] == 5
    windows = vad.parent / "windows.npy"
    infer = json.loads(run_cli("infer", "--json", "--model", str(vad), str(windows), check=True).stdout)
    assert len(infer["results"]) == 16 and infer["results"][0]["result"]["tensors"][0]["name"] == "output"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (INPUTS[:2], "not named: sr"),
        ([*INPUTS, {"name": "extra", "role": "constant", "value": 1}], "not in the model: extra"),
        (
            [INPUTS[0], {"name": "state", "role": "state", "from_output": "nope"}, INPUTS[2]],
            "state input 'state' is fed from 'nope', not an output",
        ),
        (
            [*INPUTS[:2], {"name": "sr", "role": "constant", "value": [1, 2]}],
            "constant input 'sr': 2 value(s) do not fit its shape []",
        ),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_refused_at_load_naming_what_differs(
    vad: Path, tmp_path: Path, inputs: list[dict[str, object]], message: str
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(vad, bundle)
    edit_manifest(bundle, inputs=inputs)
    with pytest.raises(ContractError, match=re.escape(message)):
        Model(load_bundle(bundle))


def test_a_model_with_several_inputs_and_no_description_is_refused_by_init_naming_them(
    public_models: dict[str, Path], tmp_path: Path
) -> None:
    np.save(tmp_path / "w.npy", np.zeros((2, 512, 1), np.float32))
    result = run_cli(
        "model", "init", str(public_models["silero-vad.onnx"]), "--task", "raw", "--channels", "audio",
        "--samples", str(tmp_path / "w.npy"), "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert_clean_error(result, "the model has 3 inputs ('input', 'state', 'sr')", "--inputs")


def test_the_ordered_queue_drops_nothing_and_holds_the_producer_back_when_full() -> None:
    queue: OrderedMailbox[int] = OrderedMailbox(capacity=4)
    for number in range(4):
        queue.put(number)
    finished = threading.Event()

    def producer() -> None:
        queue.put(4)  # full: waits for room
        finished.set()

    thread = threading.Thread(target=producer)
    thread.start()
    time.sleep(0.2)
    assert not finished.is_set() and queue.backlog == 4
    got = [queue.get(1.0) for _ in range(5)]
    thread.join(2)
    assert got == [0, 1, 2, 3, 4] and finished.is_set()
    assert queue.dropped == 0 and queue.full_count == 1 and queue.held_s > 0.1 and queue.deepest == 4
    queue.close()
    assert queue.get(0.1) is None


class _Collect:
    """A sink that keeps every record, in order."""

    name = "collect"

    def __init__(self) -> None:
        self.records: list[object] = []

    def emit(self, record: object) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def test_the_loop_feeds_a_stateful_model_every_item_in_order_and_resets_its_state_on_a_gap_or_a_restart(
    vad: Path,
) -> None:
    from agent.pipeline import ActiveModel, InferenceLoop
    from agent.pipeline.records import Staged
    from agent.sources.base import Item

    windows = stream(1.0).reshape(-1, WINDOW, 1)[:12]
    model = Model.load(vad)
    expected = []
    for index, window in enumerate(windows):
        if index in (0, 6, 9):  # a gap before item 6, the source restarting at item 9
            model.reset_state()
        expected.append(float(model.dequantize(model.invoke(model.prepare(window).tensor))[0].reshape(-1)[0]))
    model.reset_state()
    queue: OrderedMailbox[Staged] = OrderedMailbox(capacity=4)
    sink = _Collect()
    loop = InferenceLoop(ActiveModel(model), queue, sinks=[sink])
    loop.start()
    try:
        clock = 100.0
        for index, window in enumerate(windows):
            clock += 5.0 if index == 6 else 0.032
            seq = index - 9 if index >= 9 else index  # a restarted source numbers from 0 again
            loop.deliver(Item(window, seq, clock, clock, "window", "mic"))
        deadline = time.monotonic() + 10
        while len(sink.records) < len(windows) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
        model.close()
    got = [float(r.result.tensors[0].mean) for r in sink.records]
    assert len(got) == len(windows) and queue.dropped == 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert loop.state_resets == 2
    status = loop.queue_status()
    assert status is not None and status["capacity"] == 4 and status["state_resets"] == 2


def test_a_stateful_model_in_the_daemon_on_a_wav_file_scores_every_window_as_the_bare_loop_does(
    vad: Path, public_models: dict[str, Path], tmp_path: Path
) -> None:
    import wave

    from daemon_support import run_with_jsonl

    signal = stream(1.5)
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(signal[:, 0], -1, 1) * 32767).astype("<i2").tobytes())
    with wave.open(str(path), "rb") as back:  # the samples as the source decodes them
        decoded = np.frombuffer(back.readframes(back.getnframes()), "<i2").astype(np.float32) / 32768.0
    windows = decoded.reshape(-1, WINDOW)
    session = ort.InferenceSession(str(public_models["silero-vad.onnx"]), providers=["CPUExecutionProvider"])
    state, bare = np.zeros((2, 1, 128), np.float32), []
    for window in windows:
        probability, state = session.run(
            None, {"input": window[None], "state": state, "sr": np.array(RATE, dtype=np.int64)}
        )
        bare.append(float(probability.reshape(-1)[0]))
    toml = f"""
[model]
bundle = "{vad}"
[source]
type = "wav"
path = "{path}"
window = {WINDOW}
channels = ["audio"]
rate = "max"
"""
    lines = run_with_jsonl(toml, 2.5).records
    got = [r["result"]["tensors"][0]["mean"] for r in lines]
    assert [r["seq"] for r in lines] == list(range(len(windows)))  # every window, in order, none dropped
    np.testing.assert_allclose(got, bare, rtol=1e-4, atol=1e-5)
