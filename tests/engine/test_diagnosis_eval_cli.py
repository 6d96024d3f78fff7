"""``covidcxr evaluate diagnosis`` and ``covidcxr audit`` on the shipped weights, as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidcxr.cli import main
from covidcxr.config import CONFIGS_DIR
from covidcxr.engine.diagnosis.report import INFORMATIVE_AUROC
from covidcxr.models import load_weights

CONFIG = CONFIGS_DIR / "diagnosis_cnn.yaml"


@pytest.mark.integration
def test_evaluate_quick(tmp_path):
    """A few images per source, end to end: every output is written and every number is in range."""
    ev = tmp_path / "eval"
    assert main(["evaluate", "diagnosis", "--split", "test", "--limit", "4", "--out", str(ev)]) == 0
    summary = json.loads((ev / "diagnosis_eval.json").read_text())
    sources = {
        "covid-chestxray",
        "kermany-pediatric",
        "nih-chestxray8",
        "nih-chestxray14",
        "hannover",
        "covid19-radiography",
    }
    assert set(summary["per_source"]) == {"all sources", *sources}
    assert summary["per_source"]["all sources"]["n"] == 24
    sal = summary["saliency_in_lungs"]
    assert 0 <= sal["mean"] <= 1
    for name in ("roc.png", "calibration.png", "confusion.png", "diagnosis_eval.md", "predictions.jsonl"):
        assert (ev / name).stat().st_size > 0
    # P(abnormal) reliability per source: a curve each and a table.
    assert set(summary["abnormal_calibration"]) == {"all sources", *sources}
    assert (ev / "calibration_abnormal.png").stat().st_size > 0
    assert "## hannover" in (ev / "calibration_abnormal.md").read_text()


@pytest.mark.slow
def test_audit_quick(tmp_path, capsys):
    au = tmp_path / "audit"
    assert main(["audit", "--limit", "6", "--out", str(au)]) == 0
    audit = json.loads((au / "audit.json").read_text())
    assert set(audit["inputs"]) == {"intact", "lungs blacked out", "all but the lungs blacked out"}
    informative = audit["inputs"]["intact"]["covid_auroc"]["value"] >= INFORMATIVE_AUROC
    # one line per blacked-out check when the intact reading ranks COVID-19, one NOTE for both when it does not
    # then one line per archive that holds both classes of a question (the blackouts of every fact)
    overall = audit["verdict"][: len(audit["verdict"]) - len(audit["archives"])]
    assert len(overall) == (4 if informative else 3) and (au / "audit.png").is_file()
    assert all(v.split(":")[0] in ("PASS", "WARN") for v in audit["verdict"][len(overall) :])
    if not informative:
        assert audit["verdict"][0].startswith("NOTE: intact")
    probe = audit["source_probe"]["all classes"]
    assert len(probe["sources"]) == 6 and probe["chance"] == pytest.approx(1 / 6)
    assert "Verdict" in capsys.readouterr().out


@pytest.mark.slow
def test_full_test_split_evaluation_reproduces_the_spec(tmp_path):
    """The test-split numbers written into the shipped spec come back from a fresh evaluation."""
    _, spec = load_weights(kind="diagnosis")
    assert main(["evaluate", "diagnosis", "--split", "test", "--no-saliency", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "diagnosis_eval.json").read_text())
    pooled = summary["per_source"]["all sources"]
    assert np.isclose(pooled["macro_auroc"], spec.metrics["internal_test"]["macro_auroc"], atol=0.003)


@pytest.mark.slow
def test_train_diagnosis_command_smoke(tmp_path):
    """``python -m covidcxr.research train-cnn`` on real lung views: runs, exports a loadable spec, resumes."""
    from covidcxr.research.__main__ import main as research_main

    run = tmp_path / "run"
    args = [
        "train-cnn",
        "--config",
        str(CONFIG),
        "--out",
        str(run),
        "--set",
        "limit=48",
        "--set",
        "epochs=1",
        "--set",
        "input_size=96",
    ]
    assert research_main(args) == 0
    model, spec = load_weights(run / "export" / "mobilenet_v2_diagnosis.json", kind="diagnosis")
    assert spec.input_size == (96, 96) and spec.training["data"]["train_samples"] == 48 and spec.temperature > 0
    assert research_main(args + ["--resume"]) == 0

    # The trained CNN through the product's evaluation (end to end, as a user runs it) and the research audit.
    cnn = str(run / "export" / "mobilenet_v2_diagnosis.json")
    ev = tmp_path / "eval"
    assert main(["evaluate", "diagnosis", "--diagnosis-weights", cnn, "--limit", "2", "--out", str(ev)]) == 0
    summary = json.loads((ev / "diagnosis_eval.json").read_text())
    assert summary["evaluated_weights"]["sha256"] == spec.sha256 and summary["per_source"]["all sources"]["n"] == 12
    sal = summary["saliency_in_lungs"]  # a one-epoch CNN may have no Grad-CAM at all: then no number, not NaN
    assert (sal["n"] == 0 and sal["mean"] is None) or 0 <= sal["mean"] <= 1
    assert main(["audit", "--diagnosis-weights", cnn, "--out", str(tmp_path / "wrong")]) == 2  # says where it lives
    au = tmp_path / "audit-cnn"
    assert research_main(["audit-cnn", "--weights", cnn, "--limit", "3", "--out", str(au)]) == 0
    audit = json.loads((au / "audit.json").read_text())
    assert set(audit["inputs"]) == {"intact", "lungs blacked out", "all but the lungs blacked out"}
    assert audit["verdict"] and (au / "audit.png").is_file()


@pytest.mark.integration
def test_cnn_loso_smoke_from_the_command_line(tmp_path, capsys):
    """``python -m covidcxr.research loso-cnn --limit N``: a few images per source, split and class, 64 px, every fold."""
    from covidcxr.research.__main__ import main as research_main

    out = tmp_path / "loso-cnn"
    assert research_main(["loso-cnn", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads((out / "loso.json").read_text())
    assert res["smoke"] is True and res["recipe"]["input_size"] == 64
    row = res["results"]["cnn_within_source / masked lungs"]
    assert 0 <= row["primary"] <= 1 and (out / "loso.png").stat().st_size > 0
    assert "cnn_within_source" in capsys.readouterr().out
