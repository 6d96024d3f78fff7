"""Diagnosis metrics per source, the within-source test and the audit's verdict."""

from __future__ import annotations

import numpy as np
import pytest

from covidcxr.engine.diagnosis.metrics import (
    ALL_SOURCES,
    by_source,
    covid_vs_each_finding,
    covid_vs_other,
    source_probe,
)
from covidcxr.engine.diagnosis.report import markdown_table, verdict


def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), labels] += 1.0  # informative
    probs /= probs.sum(1, keepdims=True)
    samples = [{"dataset": ["covid-chestxray", "nih-chestxray8"][i % 2]} for i in range(n)]
    for i, s in enumerate(samples):
        if s["dataset"] == "nih-chestxray8" and labels[i] == 0:
            labels[i] = 1  # no COVID-19 outside covid-chestxray, as in the data
    return samples, labels, probs


@pytest.mark.integration
def test_summarize_and_by_source():
    samples, labels, probs = _toy()
    res = by_source(samples, labels, probs)
    assert set(res) == {ALL_SOURCES, "covid-chestxray", "nih-chestxray8"}
    pooled = res[ALL_SOURCES]
    assert pooled["n"] == len(labels) and np.array(pooled["confusion"]).sum() == len(labels)
    for r in pooled["per_class"].values():
        assert r["auroc"]["ci_low"] <= r["auroc"]["value"] <= r["auroc"]["ci_high"]
        assert 0 <= r["sensitivity"] <= 1
    # COVID-19 is absent from the NIH source: its AUROC there is undefined, not a number
    assert np.isnan(res["nih-chestxray8"]["per_class"]["COVID-19"]["auroc"]["value"])
    assert 0 <= pooled["ece"] <= 1
    md = markdown_table(
        {
            "split": "test",
            "lung_input": "crop",
            "temperature": 1.2,
            "per_source": res,
            "covid_vs_other_in_covid_chestxray": covid_vs_other(labels, probs),
        }
    )
    assert "| nih-chestxray8 | COVID-19 |" in md and "n/a" in md


def test_covid_vs_other_uses_the_two_classes_only():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]
    )
    r = covid_vs_other(labels, probs)
    assert r["n"] == 4 and r["n_pos"] == 2 and r["value"] == 1.0


def test_covid_vs_each_finding_names_the_finding_taken_for_covid():
    # COVID-19 odds 0.9 and 0.7; SARS 0.8 and 0.95 (mixed in), Streptococcus 0.1 (always below); no finding ignored
    labels = np.array([0, 0, 1, 1, 1, 2])
    probs = np.array(
        [[0.9, 0.1, 0.0], [0.7, 0.3, 0.0], [0.8, 0.2, 0.0], [0.95, 0.05, 0.0], [0.1, 0.9, 0.0], [0.5, 0.1, 0.4]]
    )
    r = covid_vs_each_finding(labels, probs, ["COVID-19", "COVID-19", "SARS", "SARS", "Streptococcus", "No Finding"])
    assert list(r) == ["SARS", "Streptococcus"]  # most images first
    assert r["SARS"]["n"] == 2 and np.isclose(r["SARS"]["auroc"], 0.25)  # 1 of 4 pairs ranked right
    assert r["Streptococcus"]["auroc"] == 1.0 and np.isclose(r["Streptococcus"]["median_covid_odds"], 0.1)
    assert np.isclose(r["SARS"]["median_covid_odds"], 0.875)


def test_source_probe_finds_an_obvious_source():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    src = np.where(x[:, 0] > 0, "a", "b").tolist()
    res = source_probe(x[:150], src[:150], x[150:], src[150:])
    assert res["balanced_accuracy"] > 0.9 and res["chance"] == 0.5


def _ci(v):
    return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 100, "n_pos": 20}


def test_verdict_words():
    rows = {
        "intact": {"covid_auroc": _ci(0.95), "covid_vs_other_in_covid_chestxray": _ci(0.85)},
        "lungs blacked out": {"covid_auroc": _ci(0.52)},
        "all but the lungs blacked out": {"covid_auroc": _ci(0.93)},
    }
    probe = {"all classes": {"balanced_accuracy": 0.9, "chance": 1 / 3}}
    v = verdict({"inputs": rows, "source_probe": probe})
    assert v[0].startswith("PASS") and v[1].startswith("PASS") and v[3].startswith("PASS")
    rows["lungs blacked out"]["covid_auroc"] = _ci(0.9)
    rows["intact"]["covid_vs_other_in_covid_chestxray"] = _ci(0.6)
    v = verdict({"inputs": rows, "source_probe": probe})
    assert v[0].startswith("WARN") and "shortcut" in v[0] and v[3].startswith("WARN")
    rows["intact"]["covid_auroc"] = _ci(0.5)  # a reading that ranks nothing: nothing for the blackouts to show
    probe["decision (class log-probabilities), all classes"] = {"balanced_accuracy": 0.29, "chance": 1 / 6}
    v = verdict({"inputs": rows, "source_probe": probe, "split": "test"})
    assert v[0].startswith("NOTE") and "cannot show" in v[0] and not any(s.startswith("PASS: the lungs") for s in v)
    assert "on its decision, 0.29" in v[1] and v[2].startswith("WARN")


def test_archive_checks_flag_a_fact_that_reads_outside_the_lungs():
    """A fact that still separates the classes with the lungs blacked out is named; chance-level ones are not."""
    from covidcxr.data.labels import CLASSES
    from covidcxr.engine.diagnosis.audit import archive_checks
    from covidcxr.engine.diagnosis.report import archive_checks_verdict, archive_markdown
    from covidcxr.infer.findings import FACTS

    rng = np.random.default_rng(0)
    n = 200
    samples = [{"dataset": "kermany-pediatric"}] * n
    labels = np.array([CLASSES.index("Other pneumonia")] * (n // 2) + [CLASSES.index("No finding")] * (n // 2))
    sick = (labels == CLASSES.index("Other pneumonia")).astype(float)
    facts = rng.normal(size=(n, len(FACTS)))
    facts[:, 0] += 3 * sick  # intact: the extent separates the classes
    blacked = rng.normal(size=(n, len(FACTS)))
    blacked[:, 1] += 3 * sick  # lungs blacked out: the opacity still does (a shortcut)
    p_abn = 0.5 + 0.3 * sick
    probs = np.stack([0 * p_abn, p_abn, 1 - p_abn], axis=1)
    flat = np.full((n, 3), 1 / 3)
    out = archive_checks(
        samples,
        labels,
        {
            "intact": (facts, probs),
            "lungs blacked out": (blacked, flat),
            "all but the lungs blacked out": (facts, probs),
        },
        n_resamples=20,
    )
    assert list(out) == ["Kermany: pneumonia vs normal"]
    modes = out["Kermany: pneumonia vs normal"]["modes"]
    assert modes["intact"]["geographic_extent"]["value"] > 0.9 and modes["intact"]["P(abnormal)"]["value"] == 1.0
    assert modes["lungs blacked out"]["opacity"]["value"] > 0.9
    (line,) = archive_checks_verdict(out)
    assert (
        line.startswith("WARN")
        and "opacity" in line
        and "geographic_extent" not in line
        and "PASS: only the lungs" in line
    )
    tables = archive_markdown(out)  # the tables; the verdict is said once, in the audit's verdict list
    assert "| opacity |" in tables and line not in tables


def test_saliency_summary_leaves_out_images_without_a_map_and_writes_no_nan():
    import json

    from covidcxr.engine.diagnosis.evaluate import saliency_summary

    shares = np.array([[0.9, 0.5, 0.4], [np.nan, np.nan, np.nan], [0.3, 0.1, 0.2]])
    s = saliency_summary(shares)
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.6) and s["share_below_0.5"] == 0.5
    empty = saliency_summary(np.full((3, 3), np.nan))
    assert empty["n"] == 0 and empty["mean"] is None
    json.loads(json.dumps(empty), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
