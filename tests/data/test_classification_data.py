from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from covidcxr.data.classification import classification_samples, lung_box, lung_input
from covidcxr.data.labels import CLASSES, LABEL_TABLE, label_of


def test_every_finding_in_the_data_is_in_the_table(records):
    for rec in records:
        label_of(rec["dataset"], rec["finding"])  # raises KeyError for an unknown finding


def test_class_counts_and_exclusions(records):
    samples, excluded = classification_samples(records)
    counts = Counter((s["dataset"], s["label_name"]) for s in samples)
    assert counts[("covid-chestxray", "COVID-19")] > 400
    assert counts[("covid-chestxray", "Other pneumonia")] > 50
    assert counts[("nih-chestxray8", "No finding")] == 500 and counts[("kermany-pediatric", "Other pneumonia")] == 640
    assert sum(v for k, v in excluded.items() if "todo" in k) > 0
    assert sum(v for k, v in excluded.items() if "not a frontal" in k) > 100
    assert all(s["view"] in ("PA", "AP", "AP Supine", "AP Erect", "Frontal") for s in samples)
    assert counts[("hannover", "COVID-19")] == 161 and counts[("nih-chestxray14", "Other pneumonia")] == 390
    assert counts[("covid19-radiography", "COVID-19")] == 1731 and counts[("covid19-radiography", "No finding")] == 1000
    assert {s["label"] for s in samples} == {0, 1, 2}


def test_upstream_path_findings():
    assert label_of("covid-chestxray", "Pneumonia/Viral/COVID-19") == "COVID-19"
    assert label_of("covid-chestxray", "Pneumonia/Bacterial/Klebsiella") == "Other pneumonia"
    assert label_of("covid-chestxray", "todo") is None
    with pytest.raises(KeyError, match="LABEL_TABLE"):
        label_of("covid-chestxray", "Tuberculosis")
    assert set(v for v in LABEL_TABLE.values() if v) == set(CLASSES)


def test_lung_input_modes():
    image = np.random.default_rng(0).random((100, 80)).astype(np.float32)
    mask = np.zeros((100, 80), bool)
    mask[20:60, 10:30] = True
    mask[20:60, 50:70] = True
    assert lung_box(mask, 0.0) == (20, 60, 10, 70)
    assert lung_box(mask, 0.1) == (16, 64, 4, 76)
    crop = lung_input(image, mask, "crop", 0.0)
    assert crop.shape == (40, 60) and np.array_equal(crop, image[20:60, 10:70])
    masked = lung_input(image, mask, "masked", 0.0)
    assert (masked[:, 25:35] == 0).all() and np.array_equal(masked[:, :20], image[20:60, 10:30])
    assert lung_input(image, np.zeros_like(mask), "crop").shape == image.shape
    with pytest.raises(ValueError, match="mode"):
        lung_input(image, mask, "bbox")
