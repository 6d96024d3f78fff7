"""The headline's operating point: LOSO by the rule, P(abnormal) calibration per source (synthetic features)."""

from __future__ import annotations

import numpy as np

from covidcxr.engine.diagnosis.operating_point import (
    abnormal_calibration,
    calibration_markdown,
    loso_operating_points,
    loso_summary,
    plot_abnormal_calibration,
)
from covidcxr.infer.findings import FACTS

#: source -> the classes it holds (0 COVID-19, 1 Other pneumonia, 2 No finding), as in the development data.
SOURCES = {
    "covid-chestxray": (0, 1),
    "covid19-radiography": (0, 2),
    "hannover": (0,),
    "kermany-pediatric": (1, 2),
    "nih-chestxray8": (1, 2),
    "nih-chestxray14": (1, 2),
}


def _data(per_class: int = 40, seed: int = 0) -> tuple[dict, list[dict]]:
    """Facts where the first column (the extent) tells disease from No finding, plus noise."""
    rng = np.random.default_rng(seed)
    samples, rows = [], []
    for src, classes in SOURCES.items():
        for c in classes:
            for i in range(per_class):
                f = rng.normal(0, 1, len(FACTS))
                f[0] += 2.0 if c != 2 else 0.0
                f[FACTS.index("lesion_share")] = abs(f[0]) / 10
                split = ("train", "train", "val")[i % 3]
                samples.append({"dataset": src, "filename": f"{c}_{i}.png", "label": c, "split": split})
                rows.append(f)
    features = {
        "findings": np.array(rows, np.float32),
        "names": np.array([f"{s['dataset']}/{s['filename']}" for s in samples]),
    }
    return features, samples


def test_each_fold_chooses_on_the_other_sources_and_reports_the_sources_left_out():
    features, samples = _data()
    res = loso_operating_points(features, samples, "within_archive", "findings")
    out = res["folds"]
    assert set(out) >= {"hannover", "covid19-radiography", "NIH", "kermany-pediatric"}
    for fold in out.values():
        assert 0 < fold["threshold"] < 1 and fold["validation"]["sensitivity"] >= 0.85
    han = out["hannover"]["sources"]["hannover"]
    assert han["n_covid"] == 40 and 0.5 < han["covid_read_as_disease"] <= 1.0 and "n_normal" not in han
    c19 = out["covid19-radiography"]["sources"]["covid19-radiography"]
    assert {"covid_read_as_disease", "normal_read_as_no_finding"} <= set(c19)
    assert abs(sum(c19["categories"].values()) - 1) < 1e-3
    assert set(out["NIH"]["sources"]) == {"nih-chestxray8", "nih-chestxray14"}
    summary = loso_summary(res)
    assert summary["hannover"]["covid_read_as_disease"] == han["covid_read_as_disease"]
    assert "covid19-radiography (covid19-radiography + NIH left out)" in summary
    pooled = res["pooled"]  # every film once, in the fold that left its source out
    assert pooled["n"] == len(samples) and pooled["n_covid"] == 3 * 40
    assert sum(v["n"] for v in pooled["covid_share_by_category"].values()) == len(samples)


def test_abnormal_calibration_bins_each_source_and_the_pool(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 4000)
    labels = np.where(rng.random(4000) < p, 1, 2)  # P(abnormal) = p is calibrated
    probs = np.stack([np.zeros(4000), p, 1 - p], axis=1)
    sources = np.where(np.arange(4000) % 2, "a", "b")
    cal = abnormal_calibration(labels, probs, sources)
    assert set(cal) == {"a", "b", "all sources"} and cal["all sources"]["n"] == 4000
    assert cal["all sources"]["ece"] < 0.03 and len(cal["a"]["bins"]) == 10
    skewed = abnormal_calibration(labels, np.stack([np.zeros(4000), p / 2, 1 - p / 2], axis=1), sources)
    assert skewed["a"]["ece"] > 0.2  # P(abnormal) half of the truth
    assert "| 0.4-0.5 |" in calibration_markdown(cal)
    plot_abnormal_calibration(cal, tmp_path / "c.png", 0.4)
    assert (tmp_path / "c.png").stat().st_size > 10_000
