"""``covidcxr evaluate diagnosis`` and ``covidcxr audit`` on the shipped weights, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from covidcxr.cli import main
from covidcxr.models import load_weights

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "diagnosis_cnn.yaml"


def test_evaluate_and_audit_quick(tmp_path, capsys):
    """A few images per source: every output is written and every number is in range."""
    ev = tmp_path / "eval"
    assert main(["evaluate", "diagnosis", "--split", "test", "--limit", "12", "--out", str(ev)]) == 0
    summary = json.loads((ev / "diagnosis_eval.json").read_text())
    assert set(summary["per_source"]) == {"all sources", "covid-chestxray", "kermany-pediatric", "nih-chestxray8"}
    assert summary["per_source"]["all sources"]["n"] == 36
    sal = summary["saliency_in_lungs"]
    assert 0 <= sal["mean"] <= 1
    # the two lungs split the heat inside the lungs between them
    assert 0 < sal["right_lung_mean"] < 1 and 0 < sal["left_lung_mean"] < 1
    assert sal["right_lung_mean"] + sal["left_lung_mean"] == pytest.approx(sal["mean"], abs=1e-6)
    for name in ("roc.png", "calibration.png", "confusion.png", "diagnosis_eval.md", "predictions.jsonl"):
        assert (ev / name).stat().st_size > 0
    au = tmp_path / "audit"
    assert main(["audit", "--limit", "12", "--out", str(au)]) == 0
    audit = json.loads((au / "audit.json").read_text())
    assert set(audit["inputs"]) == {"intact", "lungs blacked out", "all but the lungs blacked out"}
    assert len(audit["verdict"]) == 4 and (au / "audit.png").is_file()
    assert "Verdict" in capsys.readouterr().out


@pytest.mark.slow
def test_full_test_split_evaluation_reproduces_the_spec(tmp_path):
    """The test-split numbers written into the shipped spec come back from a fresh evaluation."""
    _, spec = load_weights(kind="diagnosis")
    assert main(["evaluate", "diagnosis", "--split", "test", "--no-saliency", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "diagnosis_eval.json").read_text())
    pooled = summary["per_source"]["all sources"]
    assert np.isclose(pooled["macro_auroc"], spec.metrics["macro_auroc"], atol=0.003)
    assert np.isclose(summary["covid_vs_other_in_covid_chestxray"]["value"], spec.metrics["covid_vs_other_in_covid_chestxray"]["value"], atol=0.005)


@pytest.mark.slow
def test_train_diagnosis_command_smoke(tmp_path):
    """``covidcxr train diagnosis`` on real lung views: runs, exports a loadable spec, resumes."""
    run = tmp_path / "run"
    args = ["train", "diagnosis", "--config", str(CONFIG), "--out", str(run), "--set", "limit=48", "--set", "epochs=1", "--set", "input_size=96"]
    assert main(args) == 0
    model, spec = load_weights(run / "export" / "mobilenet_v2_diagnosis.json", kind="diagnosis")
    assert spec.input_size == (96, 96) and spec.training["data"]["train_samples"] == 48 and spec.temperature > 0
    assert main(args + ["--resume"]) == 0
