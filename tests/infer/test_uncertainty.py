"""When a reading says it is unsure: the rule of docs/experiments/uncertainty.md."""

from __future__ import annotations

import numpy as np

from covidcxr.engine.diagnosis.uncertainty import fit
from covidcxr.infer.uncertainty import uncertain_reason

T = {"min_top_probability": 0.6, "no_finding_max_extent": 2.0, "pneumonia_min_extent": 0.5}


def test_each_rule_and_its_reason():
    assert uncertain_reason("COVID-19", 0.9, 3.0, 0.2, T) is None
    assert "below 60%" in uncertain_reason("COVID-19", 0.5, 3.0, 0.2, T)
    assert "reads No finding" in uncertain_reason("No finding", 0.9, 5.0, 0.3, T)
    assert "no lesion" in uncertain_reason("Other pneumonia", 0.9, 0.1, 0.0, T)
    assert uncertain_reason("Other pneumonia", 0.9, 0.1, 0.01, T) is None  # a lesion was found
    assert uncertain_reason("No finding", 0.3, 5.0, 0.3, {}) is None  # a spec without thresholds never flags
    assert "validation" in uncertain_reason("No finding", 0.99, 0.0, 0.0, {**T, "min_top_probability": 1.0})


def test_the_fitted_threshold_is_the_first_quantile_right_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    top = rng.uniform(0.34, 1.0, 2000)
    correct = rng.random(2000) < top  # confident readings are right more often
    label = rng.integers(0, 3, 2000)
    extent = np.where(label == 2, rng.uniform(0, 2, 2000), rng.uniform(1, 8, 2000))
    fitted = fit({"top": top, "correct": correct, "label": label, "extent": extent})
    t = fitted["min_top_probability"]
    above = top >= t
    assert correct[above].mean() >= 0.8 and above.mean() >= 0.1
    assert 0.56 < t < 0.64  # P(correct) = top: the tail above t is right (1 + t) / 2 of the time, 0.8 at t = 0.6
    assert 1.8 < fitted["no_finding_max_extent"] <= 2.0 and 1.0 <= fitted["pneumonia_min_extent"] < 1.5
    hopeless = fit({"top": top, "correct": np.zeros(2000, bool), "label": label, "extent": extent})
    assert hopeless["min_top_probability"] == 1.0


def test_read_split_reads_every_readable_sample(fixtures):
    from covidcxr.engine.diagnosis.uncertainty import read_split
    from covidcxr.infer import Predictor

    samples = [
        {"path": str(fixtures / "ieee8023_2cd63b76.jpg"), "label": 0, "dataset": "covid-chestxray"},
        {"path": str(fixtures / "missing.png"), "label": 2, "dataset": "nih-chestxray8"},
        {"path": str(fixtures / "nih_00000710_003.png"), "label": 2, "dataset": "nih-chestxray8"},
    ]
    out = read_split(Predictor.load(use_gate=False, saliency=False), samples, batch_size=2)
    assert list(out["dataset"]) == ["covid-chestxray", "nih-chestxray8"] and list(out["label"]) == [0, 2]
    assert ((out["top"] > 1 / 3) & (out["top"] <= 1)).all() and out["correct"].dtype == bool
