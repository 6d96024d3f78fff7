"""The comparison study: grid, metrics with CIs, best cells, resumable runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from covidcxr.metrics import class_stratified_bootstrap_ci
from covidcxr.research.__main__ import main
from covidcxr.research.cnn_train import macro_auroc
from covidcxr.research.study import QUICK, StudyConfig, cells, run_study
from covidcxr.research.study_report import METRICS, best_cells, cell_metrics, write_results


def test_grid_is_45_cells_and_rejects_unknown_names():
    grid = cells(StudyConfig())
    assert len(grid) == 45 and len(set(grid)) == 45
    with pytest.raises(ValueError, match="backbones"):
        cells(StudyConfig(backbones=("resnet18", "vgg16")))
    with pytest.raises(ValueError, match="enhancements"):
        cells(StudyConfig(enhancements=()))
    with pytest.raises(ValueError, match="folds >= 2"):
        cells(StudyConfig(folds=1))


def test_class_stratified_ci_keeps_every_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [40, 5, 30])
    p = rng.dirichlet([1, 1, 1], len(y))
    p[np.arange(len(y)), y] += 0.5  # informative scores
    ci = class_stratified_bootstrap_ci(y, p, macro_auroc, n_resamples=200)
    assert ci["ci_low"] <= ci["value"] <= ci["ci_high"] and ci["ci_low"] > 0.5
    assert np.isfinite([ci["ci_low"], ci["ci_high"]]).all()  # the 5-image class is in every resample
    assert np.isnan(class_stratified_bootstrap_ci(np.zeros(5), p[:5], macro_auroc)["value"])


def _fold(seed: int, rng, informative: bool) -> dict:
    y = np.repeat([0, 1, 2], 20)
    p = rng.dirichlet([1, 1, 1], 60)
    if informative:
        p[np.arange(60), y] += 1.0
    p /= p.sum(1, keepdims=True)
    return {
        "seed": seed,
        "labels": y,
        "sources": np.array(["covid-chestxray"] * 30 + ["nih-chestxray8"] * 30),
        "probs": p,
        "probs_blacked": rng.dirichlet([1, 1, 1], 60),
        "saliency_share": rng.uniform(0.2, 0.9, 10),
        "train_s": rng.uniform(50, 70),
        "train_cpu_s": rng.uniform(90, 130),
        "size_mb": 22.3,
        "latency_s": rng.uniform(0.01, 0.02, 5),
    }


def test_cell_metrics_have_a_ci_for_every_metric():
    rng = np.random.default_rng(1)
    good = cell_metrics([_fold(0, rng, True), _fold(0, rng, True)], n_resamples=40)
    bad = cell_metrics([_fold(0, rng, False), _fold(0, rng, False)], n_resamples=40)
    assert set(good) == {k for k, _, _ in METRICS}
    for m in good.values():
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert good["macro_auroc"]["value"] > 0.9 > bad["macro_auroc"]["value"]
    assert good["macro_auroc"]["n"] == 120  # folds pooled
    assert good["size_mb"]["ci_low"] == good["size_mb"]["value"] == 22.3
    assert 10 < good["latency_ms"]["value"] < 20
    two_seeds = cell_metrics([_fold(0, rng, True), _fold(1, rng, False)], n_resamples=50)
    assert two_seeds["macro_auroc"]["seed_sd"] > 0.1


def _row(backbone, lung_input, auc, blacked):
    m = {k: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10} for k, _, _ in METRICS}
    m["macro_auroc"] = {"value": auc, "ci_low": auc - 0.05, "ci_high": auc + 0.05, "n": 10}
    m["blacked_out_macro_auroc"] = {"value": blacked, "ci_low": blacked - 0.05, "ci_high": blacked + 0.05, "n": 10}
    return {"backbone": backbone, "input": lung_input, "enhancement": "none", "metrics": m}


def test_best_cells_break_blacked_out_ties_by_auroc(tmp_path):
    rows = [
        _row("resnet18", "whole", 0.95, 0.85),
        _row("resnet50", "masked", 0.80, 0.5),
        _row("mobilenet_v2", "masked", 0.84, 0.5),
        _row("densenet121", "crop", 0.90, 0.53),
    ]
    best = best_cells(rows)
    assert best == {
        "best_internal": "resnet18 / whole / none",
        "best_shortcut_free": "mobilenet_v2 / masked / none",
        "best_reading_lungs": "densenet121 / crop / none",
    }
    assert (
        best_cells([_row("resnet18", "whole", 0.95, 0.85)])["best_reading_lungs"] is None
    )  # every cell reads the surroundings
    summary = {
        "out_dir": str(tmp_path),
        "config": {"folds": 3, "seeds": [0], "input_size": 128, "epochs": 6, "draws_per_epoch": 1024},
        "cells": rows,
        "complete": True,
        **best,
    }
    write_results(summary, tmp_path)
    table = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert len(table) == 4 and float(table[0]["macro_auroc_ci_low"]) < float(table[0]["macro_auroc"]) < float(
        table[0]["macro_auroc_ci_high"]
    )
    md = (tmp_path / "results.md").read_text()
    assert (
        "mobilenet_v2 / masked / none" in md
        and "0.950 (0.900–1.000)" in md
        and "contains 0.5: **densenet121 / crop / none**" in md
    )
    assert (tmp_path / "study_grid.png").stat().st_size > 5000 and (
        tmp_path / "study_shortcut.png"
    ).stat().st_size > 5000


def test_resume_refuses_other_settings(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**StudyConfig().__dict__, "epochs": 2}, default=list))
    with pytest.raises(ValueError, match="epochs"):
        run_study(StudyConfig(out_dir=str(tmp_path)))


@pytest.mark.slow
def test_quick_study_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    args = [
        "study",  # python -m covidcxr.research study
        "--quick",
        "--out",
        str(out),
        "--set",
        "backbones=[resnet18,mobilenet_v2]",
        "--set",
        "inputs=[whole,masked]",
        "--set",
        "enhancements=[none,clahe]",
    ]
    assert main(args) == 0
    table = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(table) == 8
    for row in table:
        for key, _, _ in METRICS:
            assert float(row[f"{key}_ci_low"]) <= float(row[key]) <= float(row[f"{key}_ci_high"]), (row, key)
        assert 0.0 <= float(row["macro_auroc"]) <= 1.0 and float(row["size_mb"]) > 1
    assert len({r["macro_auroc"] for r in table}) > 1  # cells differ
    folds = sorted((out / "cells").rglob("*.npz"))
    assert len(folds) == 8 * QUICK["folds"]
    stamps = [f.stat().st_mtime_ns for f in folds]
    assert main(args) == 0  # resumed: nothing retrained
    assert [f.stat().st_mtime_ns for f in folds] == stamps
    assert "best by internal macro AUROC" in capsys.readouterr().out
