"""The ONNX graphs shipped in the package (``covidcxr/weights/onnx``) are those of the shipped weights.

Each graph must answer what its PyTorch weights answer on the golden inputs (the fixture X-rays, as
the pipeline feeds each model), and record the sha256 of the ``.pt`` it was exported from: after a
model is retrained, this fails until ``covidcxr export onnx --shipped --force`` renews the graphs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from covidcxr.infer import Gate, LungSegmenter, OrtRunner, Predictor, SeverityScorer, TorchRunner, diagnoser_for
from covidcxr.io import read_image
from covidcxr.specs import SHIPPED, SHIPPED_ONNX_DIR, WEIGHTS_DIR, WeightSpec, sha256_file

pytest.importorskip("torch")  # the weights side of the comparison; the light install has the graphs only

GOLDEN = ("ieee8023_2cd63b76.jpg", "kermany_IM-0117-0001.jpeg", "nih_00000710_003.png")
TOLERANCE = 5e-5  # largest difference of a probability (float32 kernels differ; a lesion pixel reaches 1.4e-5)
FIX = "run `covidcxr export onnx --shipped --force` (docs/training.md)"


class Recorder:
    """A runner that passes each call on to PyTorch and keeps its inputs, to replay them on the graph."""

    def __init__(self, runner: TorchRunner) -> None:
        self.runner, self.spec, self.inputs, self.calls = runner, runner.spec, runner.inputs, []
        self.model, self.backend = runner.model, "torch"

    def run(self, **arrays: np.ndarray) -> list[np.ndarray]:
        self.calls.append({k: np.array(v, copy=True) for k, v in arrays.items()})
        return self.runner.run(**arrays)


@pytest.fixture(scope="module")
def recorded(request):
    """Every model's inputs when the shipped pipeline reads the golden X-rays (gate off: all of them go through)."""
    fixtures = request.config.rootpath / "tests" / "fixtures"
    rec = {kind: Recorder(TorchRunner.load(None, kind)) for kind in SHIPPED}
    predictor = Predictor(
        LungSegmenter(rec["lungs"]),
        diagnoser_for(rec["diagnosis"]),
        Gate(rec["gate"]),
        use_gate=False,
        severity=SeverityScorer(rec["lesions"], rec["severity"]),
    )
    results = predictor.run([read_image(fixtures / name) for name in GOLDEN])
    assert all(r.ok for r in results)
    return rec, results


def _probabilities(kind: str, outputs: list[np.ndarray], spec: WeightSpec) -> list[np.ndarray]:
    """What each output means to a reader: probabilities for the classifiers and masks, scores for severity."""
    if kind == "diagnosis":
        z = outputs[0] / spec.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return [e / e.sum(axis=1, keepdims=True)]
    if kind == "severity":
        return outputs
    return [1 / (1 + np.exp(-outputs[0]))]


@pytest.mark.parametrize("kind", list(SHIPPED))
def test_shipped_graph_was_exported_from_the_shipped_weights(kind):
    name = SHIPPED[kind]
    onnx_spec = WeightSpec.from_json(SHIPPED_ONNX_DIR / f"{name}.json")
    pt_spec = WeightSpec.from_json(WEIGHTS_DIR / f"{name}.json")
    assert sha256_file(SHIPPED_ONNX_DIR / onnx_spec.file) == onnx_spec.sha256, f"{name}.onnx changed; {FIX}"
    source = onnx_spec.training["exported_from"]
    assert source["sha256"] == sha256_file(WEIGHTS_DIR / pt_spec.file) == pt_spec.sha256, (
        f"{name}.onnx was exported from other weights than the shipped {pt_spec.file}; {FIX}"
    )
    # Thresholds, temperature, the uncertainty rule: the graph's spec says what the weights' spec says.
    same = {"file", "dtype", "sha256", "training"}
    for f in dataclasses.fields(WeightSpec):
        if f.name not in same:
            assert getattr(onnx_spec, f.name) == getattr(pt_spec, f.name), f"{name}: spec field {f.name} differs; {FIX}"
    assert {k: v for k, v in onnx_spec.training.items() if k != "exported_from"} == pt_spec.training, FIX


@pytest.mark.parametrize("kind", list(SHIPPED))
def test_shipped_graph_answers_as_its_weights_on_the_golden_inputs(kind, recorded):
    rec, _ = recorded
    graph = OrtRunner(SHIPPED_ONNX_DIR / f"{SHIPPED[kind]}.json")
    assert rec[kind].calls, f"the pipeline never ran {kind}"
    for call in rec[kind].calls:
        want = _probabilities(kind, rec[kind].runner.run(**call), rec[kind].spec)
        got = _probabilities(kind, graph.run(**call), graph.spec)
        for w, g in zip(want, got, strict=True):
            assert w.shape == g.shape
            worst = float(np.abs(w - g).max())
            assert worst <= TOLERANCE, f"{SHIPPED[kind]}: graph and weights differ by {worst:.2e}; {FIX}"


def test_shipped_graphs_read_the_golden_xrays_as_the_weights_do(request, recorded):
    """The whole pipeline on onnxruntime's default (shipped) graphs against PyTorch's readings."""
    _, want = recorded
    fixtures = request.config.rootpath / "tests" / "fixtures"
    light = Predictor.load(backend="onnxruntime", use_gate=False)
    assert light.backend == "onnxruntime"
    got = light.run([read_image(fixtures / name) for name in GOLDEN])
    for w, g in zip(want, got, strict=True):
        assert g.backend == "onnxruntime" and g.to_dict()["backend"] == "onnxruntime"
        assert max(abs(w.probabilities[c] - g.probabilities[c]) for c in w.probabilities) <= TOLERANCE
        assert abs(w.gate_probability - g.gate_probability) <= TOLERANCE
        assert {k: m["name"] for k, m in g.model.items()} == {k: m["name"] for k, m in w.model.items()}


def test_the_onnxruntime_backend_refuses_a_stale_shipped_graph():
    from covidcxr.infer.runners import check_shipped_graph

    spec = WeightSpec.from_json(SHIPPED_ONNX_DIR / f"{SHIPPED['diagnosis']}.json")
    check_shipped_graph(spec, "diagnosis")  # the shipped one is current
    spec.training = {**spec.training, "exported_from": {"sha256": "0" * 64}}
    with pytest.raises(ValueError, match="covidcxr export onnx --shipped --force"):
        check_shipped_graph(spec, "diagnosis")
