"""Post-training quantization on this machine: the bundled models' float twins quantized in several formats, timed,
judged against float, and the fastest format that keeps agreement chosen; failures are reported, never raised."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FLOATS
from onnx import TensorProto, helper, numpy_helper

from agent.errors import AgentError, InputError, RuntimeUnavailable
from agent.inference.options import RuntimeOptions
from agent.inference.quantize import (
    DEFAULT_CANDIDATES,
    TABLE_HEADER,
    Candidate,
    prepare_float_model,
    quantize_search,
)
from agent.inference.runtimes import open_backend

CLASSIFIER = FLOATS / "digits-cls-onnx.onnx"
DETECTOR = FLOATS / "digits-det-onnx.onnx"
QDQ_S8 = next(c for c in DEFAULT_CANDIDATES if c.name == "QDQ s8/s8")
QDQ_U8 = next(c for c in DEFAULT_CANDIDATES if c.name == "QDQ u8/s8")
CHEAP = {"rounds": 2, "calls": 5, "threads": 1}


def digit_samples(name: str, count: int) -> list[np.ndarray]:
    """Held-out digit images pre-processed as the bundles' manifests say: RGB / 255, NCHW, a batch of 1."""
    with np.load(FLOATS / f"{name}.eval.npz") as data:
        images = data["x"][:count]
    return [
        np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0 for image in images
    ]


@pytest.fixture(scope="module")
def classifier_samples() -> list[np.ndarray]:
    return digit_samples("digits-cls-onnx", 16)


def run_model(path: Path, samples: list[np.ndarray]) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: sample}) for sample in samples]


def test_a_float_classifier_is_quantized_and_the_chosen_format_is_the_fastest_of_those_that_kept_agreement(
    tmp_path: Path, classifier_samples: list[np.ndarray]
) -> None:
    report = quantize_search(
        CLASSIFIER, classifier_samples, tmp_path, metric="top1", min_agreement=0.9, **CHEAP
    )

    assert [t.candidate.name for t in report.trials] == ["float", *(c.name for c in DEFAULT_CANDIDATES)]
    baseline = report.trials[0]
    assert (
        baseline.kept and baseline.speedup == pytest.approx(1.0) and baseline.path == tmp_path / "float.onnx"
    )
    kept = [t for t in report.trials if t.kept]
    assert report.chosen.kept and report.chosen.agreement is not None and report.chosen.agreement >= 0.9
    assert report.chosen.invoke_ms == min(t.invoke_ms for t in kept if t.invoke_ms is not None)
    for trial in report.trials[1:]:
        assert trial.error is not None or (
            trial.path == tmp_path / f"{trial.candidate.slug}.onnx" and trial.invoke_ms
        )
    assert any(t.error is None and t.kept for t in report.trials[1:]), (
        "no quantized format kept top-1 agreement"
    )

    assert report.chosen.path is not None
    backend = open_backend(report.chosen.path, RuntimeOptions(num_threads=1), "onnxruntime")
    try:
        chosen = [backend.invoke((sample,))[0] for sample in classifier_samples]
    finally:
        backend.close()
    reference = [outputs[0] for outputs in run_model(CLASSIFIER, classifier_samples)]
    same = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(reference, chosen, strict=True))
    assert same >= 0.9 * len(classifier_samples)

    rows = report.table_rows()
    assert len(rows) == len(report.trials) and all(len(row) == len(TABLE_HEADER) for row in rows)
    assert sum(row[-1] == "chosen" for row in rows) == 1


@pytest.mark.parametrize(
    ("min_agreement", "metric"),
    [(1.01, "top1"), (0.5, lambda reference, candidate: 0.0)],
    ids=["agreement-above-one", "a-metric-that-never-agrees"],
)
def test_an_unreachable_agreement_keeps_the_float_model(
    tmp_path: Path, classifier_samples: list[np.ndarray], min_agreement: float, metric: object
) -> None:
    report = quantize_search(
        CLASSIFIER,
        classifier_samples[:8],
        tmp_path,
        metric=metric,  # type: ignore[arg-type]
        min_agreement=min_agreement,
        candidates=(QDQ_S8,),
        **CHEAP,
    )

    assert report.chosen is report.trials[0] and report.chosen.candidate.format == "float"
    quantized = report.trials[1]
    assert quantized.error is None and quantized.invoke_ms is not None and not quantized.kept
    assert report.table_rows()[1][-1].startswith("dropped")


def constant_weight_model(path: Path) -> None:
    """A two-layer perceptron at opset 11 whose weights are Constant nodes, not initializers."""
    rng = np.random.default_rng(7)

    def constant(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name)
        )

    nodes = [
        constant("w1", rng.normal(size=(16, 32))),
        constant("b1", rng.normal(size=(32,))),
        constant("w2", rng.normal(size=(32, 4))),
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant-weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_weights_held_in_constant_nodes_at_opset_11_are_moved_to_initializers_and_quantized(
    tmp_path: Path,
) -> None:
    source = tmp_path / "mlp.onnx"
    constant_weight_model(source)

    prepared = tmp_path / "prepared.onnx"
    notes = prepare_float_model(source, prepared)
    model = onnx.load(str(prepared))
    assert any("opset 11 converted to 13" in note for note in notes)
    assert any("Constant" in note for note in notes)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    assert {"w1", "w2"} <= {i.name for i in model.graph.initializer}

    samples = [np.random.default_rng(i).normal(size=(1, 16)).astype(np.float32) for i in range(16)]
    report = quantize_search(source, samples, tmp_path / "work", candidates=(QDQ_S8,), **CHEAP)
    trial = report.trials[1]
    assert trial.error is None and trial.path is not None
    assert trial.agreement is not None and trial.agreement > 0.95
    assert report.notes == tuple(notes)
    quantized = onnx.load(str(trial.path))
    assert not [n for n in quantized.graph.node if n.op_type == "Constant"]
    weights = {i.name: i for i in quantized.graph.initializer if i.data_type == TensorProto.INT8}
    assert {int(np.prod(w.dims)) for w in weights.values()} >= {16 * 32, 32 * 4}
    assert not [
        i for i in quantized.graph.initializer if i.data_type == TensorProto.FLOAT and np.prod(i.dims) >= 128
    ]


def test_a_format_onnxruntime_refuses_to_build_is_a_trial_with_its_error_and_the_search_goes_on(
    tmp_path: Path, classifier_samples: list[np.ndarray]
) -> None:
    refused = Candidate(
        "QDQ s8/u8", "QDQ", "int8", "uint8"
    )  # ORT has no kernels for s8 activations with u8 weights

    report = quantize_search(
        CLASSIFIER, classifier_samples[:8], tmp_path, candidates=(refused, QDQ_U8), **CHEAP
    )

    failed, working = report.trials[1], report.trials[2]
    assert failed.error is not None and failed.error.startswith("cannot build:")
    assert "\n" not in failed.error and "Traceback" not in failed.error
    assert failed.path is None and failed.invoke_ms is None and failed.agreement is None and not failed.kept
    assert not (tmp_path / "qdq-s8-u8.onnx").exists()
    assert working.error is None and working.invoke_ms is not None
    assert report.table_rows()[1][-1] == f"error: {failed.error}"


def test_a_detector_is_judged_by_the_worst_correlation_of_its_outputs(tmp_path: Path) -> None:
    samples = digit_samples("digits-det-onnx", 8)

    report = quantize_search(DETECTOR, samples, tmp_path, candidates=(QDQ_U8,), **CHEAP)

    trial = report.trials[1]
    assert trial.error is None and trial.path is not None and trial.agreement is not None
    reference, quantized = run_model(DETECTOR, samples), run_model(trial.path, samples)
    correlations = []
    for index in range(len(reference[0])):
        a = np.concatenate([o[index].ravel() for o in reference]).astype(np.float64)
        b = np.concatenate([o[index].ravel() for o in quantized]).astype(np.float64)
        same = np.array_equal(a, b)
        correlations.append(1.0 if same else 0.0 if a.std() == 0 or b.std() == 0 else np.corrcoef(a, b)[0, 1])
    assert len(correlations) == 4
    assert trial.agreement == pytest.approx(min(correlations))
    assert trial.kept == (trial.agreement >= 0.99)


def test_samples_that_do_not_fit_the_model_input_are_refused_before_anything_is_built(tmp_path: Path) -> None:
    nhwc = [np.zeros((1, 32, 32, 3), np.float32)]

    with pytest.raises(InputError, match=r"sample 0 is float32\[1, 32, 32, 3\]"):
        quantize_search(CLASSIFIER, nhwc, tmp_path, **CHEAP)
    assert not list(tmp_path.glob("qdq-*.onnx"))


@pytest.mark.parametrize("package", ["onnx", "sympy"])
def test_a_missing_optional_package_is_one_line_naming_the_quantize_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError

    for attempt in (
        lambda: prepare_float_model(CLASSIFIER, tmp_path / "prepared.onnx"),
        lambda: quantize_search(CLASSIFIER, [np.zeros((1, 3, 32, 32), np.float32)], tmp_path, **CHEAP),
    ):
        with pytest.raises(RuntimeUnavailable) as caught:
            attempt()
        message = str(caught.value)
        assert isinstance(caught.value, AgentError) and "\n" not in message
        assert package in message and "pip install 'edge-agent[quantize]'" in message
    assert not list(tmp_path.iterdir())
