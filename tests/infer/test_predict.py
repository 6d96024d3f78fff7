"""``covidcxr predict``: the whole pipeline as a user runs it, and the shipped diagnosis weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covidcxr.cli import SAMPLE, main
from covidcxr.data.classification import CLASSES
from covidcxr.infer import Predictor
from covidcxr.infer.categories import CATEGORIES
from covidcxr.infer.diagnosis import headline
from covidcxr.io import read_image
from covidcxr.models import load_weights
from covidcxr.models.weights import sha256_file, shipped_spec_path

GOLDEN = "golden/diagnosis.json"
KEYS = {"path", "probabilities", "prediction", "lung_mask", "heatmap", "report", "model", "warnings"}


def _rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_predict_sample_writes_every_output(tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--out", str(out), "-q"]) == 0
    (row,) = _rows(out)
    assert set(row) >= KEYS and "error" not in row
    assert set(row["probabilities"]) == set(CLASSES)
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
    spec = load_weights(kind="diagnosis")[1]
    probs = np.array([[row["probabilities"][c] for c in CLASSES]])
    assert row["prediction"] == CLASSES[int(headline(probs, CLASSES, spec.operating_point)[0])]
    assert row["category"]["code"] in CATEGORIES and isinstance(row["uncertain_reasons"], list)
    assert row["uncertain"] == bool(row["uncertain_reasons"])
    size = Image.open(SAMPLE).size
    assert Image.open(row["lung_mask"]).size == size and Image.open(row["heatmap"]).size == size
    assert Image.open(row["report"]).size[0] > 400
    assert set(row["model"]) == {"lungs", "diagnosis", "gate", "lesions", "severity"}
    sev = row["severity"]
    assert 0 <= sev["geographic_extent"] <= 8 and 0 <= sev["opacity"] <= 6
    assert set(sev["brixia"]) == {"A", "B", "C", "D", "E", "F", "global"}
    assert abs(sum(sev["brixia"][z] for z in "ABCDEF") - sev["brixia"]["global"]) < 0.05
    assert all(0 <= v <= 1 for lesion in sev["lesions"].values() for v in lesion.values())
    assert row["model"]["diagnosis"]["sha256"] == load_weights(kind="diagnosis")[1].sha256
    assert 0 <= row["saliency_in_lungs"] <= 1


def test_predict_mixed_inputs_exit_2_with_one_line_each(tmp_path, fixtures):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.full((400, 400), 128, np.uint8)).save(inp / "blank.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((300, 400)) * 255).astype(np.uint8)).save(inp / "noise.png")
    for name in ("nih_00000710_003.png", "kermany_IM-0117-0001.jpeg"):
        (inp / name).write_bytes((fixtures / name).read_bytes())
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(inp),
                str(tmp_path / "missing.png"),
                "--out",
                str(out),
                "-q",
                "--no-saliency",
                "--no-report",
            ]
        )
        == 2
    )
    rows = {r["path"].split("/")[-1]: r for r in _rows(out)}
    assert len(rows) == 6
    assert "error" in rows["broken.png"] and "broken.png" in rows["broken.png"]["error"]
    assert "blank" in rows["blank.png"]["error"]
    assert "not recognised as a frontal chest X-ray" in rows["noise.png"]["error"]
    assert "not found" in rows["missing.png"]["error"]
    for name in ("nih_00000710_003.png", "kermany_IM-0117-0001.jpeg"):
        assert "error" not in rows[name] and rows[name]["heatmap"] is None and rows[name]["report"] is None
        assert Image.open(rows[name]["lung_mask"]).size == Image.open(fixtures / name).size


def test_no_gate_reads_refused_images_with_a_warning(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((300, 400)) * 255).astype(np.uint8)).save(tmp_path / "noise.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "noise.png"), "--out", str(out), "-q", "--no-gate", "--no-report"]) == 0
    (row,) = _rows(out)
    assert any("--no-gate" in w for w in row["warnings"])


def test_gate_refuses_lateral_and_ct_and_accepts_frontal(records):
    from covidcxr.infer import Predictor
    from covidcxr.infer.gate import gate_records

    frontal, other = gate_records(records, "test")
    pipe = Predictor.load(saliency=False)
    images = [read_image(r["path"]) for r in other[:12]] + [read_image(r["path"]) for r in frontal[:12]]
    res = pipe.run(images)
    refused = [r.error is not None for r in res]
    assert sum(refused[:12]) >= 11 and sum(refused[12:]) <= 1


def test_shipped_diagnosis_weights_golden(fixtures):
    """The shipped weights, loaded from their spec, give the recorded probabilities and findings on fixture X-rays."""
    spec_path = shipped_spec_path("diagnosis")
    _, spec = load_weights(spec_path)
    assert spec.sha256 == sha256_file(spec_path.parent / spec.file)
    assert (spec_path.parent / spec.file).stat().st_size < 10e6
    assert spec.targets == list(CLASSES) and spec.lung_input == "masked" and spec.temperature > 0
    assert spec.architecture == "source_blind_heads" and "research use" in spec.training["research_use"]
    golden = json.loads((fixtures / GOLDEN).read_text())
    assert golden["sha256"] == spec.sha256, (
        "shipped weights changed: regenerate tests/fixtures/golden/diagnosis.json (see SOURCES.md)"
    )
    pipe = Predictor.load(use_gate=False, saliency=False)
    for name, expected in golden["probabilities"].items():
        (res,) = pipe.run([read_image(fixtures / name)])
        probs = [res.probabilities[c] for c in CLASSES]
        assert np.allclose(probs, [expected[c] for c in CLASSES], atol=2e-3), (name, probs, expected)
        assert res.findings["airspace_opacity"]["probability"] == pytest.approx(
            golden["findings"][name]["airspace_opacity"]["probability"], abs=2e-3
        )
        # The headline at the spec's operating point, and the category it gives.
        assert res.prediction == golden["prediction"][name]
        assert res.category["code"] == golden["category"][name]
