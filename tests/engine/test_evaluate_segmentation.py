"""Evaluation: a quick run on a few images, and (slow) the full test split of the shipped model."""

from __future__ import annotations

import json

import pytest

from covidcxr.engine.lungs.evaluate import evaluate_segmentation, inter_annotator
from covidcxr.models.weights import WeightSpec, shipped_spec_path


def test_quick_evaluation_writes_json_and_plot(tmp_path, data_root):
    summary = evaluate_segmentation(data_root=data_root, split="val", out_dir=tmp_path, limit=2)
    data = json.loads((tmp_path / "segmentation_eval.json").read_text())
    assert (tmp_path / "segmentation_eval.png").is_file()
    assert {"v7labs", "kermany-v7labs", "all_manual"} <= set(summary["per_source"])
    for row in data["per_image"]:
        assert 0 <= row["dice"] <= 1 and row["height"] > 0
    assert summary["per_source"]["all_manual"]["dice"]["value"] > 0.85


def test_human_ceiling_is_below_one(records):
    res = inter_annotator(records)
    assert res["n_images"] == 86
    assert 0.9 < res["dice"]["value"] < 0.99


@pytest.mark.slow
def test_shipped_model_reproduces_its_test_metrics(tmp_path, data_root):
    """The spec's test-split numbers are what evaluation gives now (same data, same weights)."""
    spec = WeightSpec.from_json(shipped_spec_path("lungs"))
    summary = evaluate_segmentation(data_root=data_root, split="test", out_dir=tmp_path)
    for source, recorded in spec.metrics["dice"].items():
        assert summary["per_source"][source]["dice"]["value"] == pytest.approx(recorded["value"], abs=2e-3), source
    assert summary["per_source"]["all_manual"]["dice"]["value"] >= 0.95
