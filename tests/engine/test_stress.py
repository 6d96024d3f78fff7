"""The lung stress rows: recall, seeds, summaries per strength and severity tertile."""

from __future__ import annotations

import numpy as np
import pytest

from covidcxr.engine.lungs.stress import markdown, recall, seed_of, summarise


def test_recall_counts_the_manual_lung_covered_and_skips_ignore_pixels():
    lung = np.zeros((10, 10), bool)
    lung[2:8, 2:8] = True
    pred = np.zeros_like(lung)
    pred[2:5, 2:8] = True  # the upper half of the lung
    valid = np.ones_like(lung)
    assert recall(pred, lung, valid) == pytest.approx(0.5)
    valid[5:8] = False  # the missed half is ignore
    assert recall(pred, lung, valid) == pytest.approx(1.0)
    assert np.isnan(recall(pred, np.zeros_like(lung), valid))


def test_seed_depends_on_film_and_pattern_only():
    assert seed_of("a.png", "effusion") == seed_of("a.png", "effusion")
    assert seed_of("a.png", "effusion") != seed_of("a.png", "lower_whiteout") != seed_of("b.png", "lower_whiteout")


def _rows():
    rows = []
    for i in range(6):
        f = f"f{i}.png"
        rows.append(
            {"filename": f, "source": "v7labs", "pattern": "none", "strength": 0.0, "recall": 0.98, "dice": 0.96}
        )
        for p in ("effusion", "lower_whiteout"):
            rows.append({"filename": f, "source": "v7labs", "pattern": p, "strength": 1.0, "recall": 0.8, "dice": 0.9})
    return rows


def test_summary_reports_the_drop_from_plain_and_the_tertiles():
    severity = {f"f{i}.png": float(i) for i in range(6)}
    s = summarise(_rows(), severity)
    assert s["plain"]["dice"]["value"] == pytest.approx(0.96)
    assert s["strength 1"]["recall"]["value"] == pytest.approx(0.8)
    assert s["strength 1"]["dice_drop"]["value"] == pytest.approx(0.06)
    assert set(s["strength 1"]["per_pattern"]) == {"effusion", "lower_whiteout"}
    tertiles = s["severity_tertiles"]
    assert list(tertiles) == ["lowest", "middle", "highest"]
    assert tertiles["lowest"]["severity_range"][1] < tertiles["highest"]["severity_range"][0]
    assert "| strength 1 | 12 |" in markdown(s) and "highest" in markdown(s)
