"""The within-source CNN design under LOSO (covidcxr.research.cnn_loso)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidcxr.engine.diagnosis.heads import COVID, NORMAL, OTHER
from covidcxr.engine.diagnosis.loso import FOLDS, PRIMARY
from covidcxr.research.cnn_loso import (
    CnnRecipe,
    class_probabilities,
    objective_groups,
    run_cnn_loso,
    within_source_loss,
)

HOLDS = {  # the classes each source holds, as in the data
    "covid-chestxray": (COVID, OTHER, NORMAL),
    "covid19-radiography": (COVID, NORMAL),
    "hannover": (COVID,),
    "kermany-pediatric": (OTHER, NORMAL),
    "nih-chestxray8": (OTHER, NORMAL),
    "nih-chestxray14": (OTHER, NORMAL),
}
SOURCES = tuple(HOLDS)


def test_objective_groups_read_only_within_source_contrasts():
    sources = np.array([s for s in SOURCES for _ in HOLDS[s]])
    labels = np.array([c for s in SOURCES for c in HOLDS[s]])
    g = objective_groups(labels, sources, set(SOURCES))
    read = dict(zip(zip(sources, labels), g))
    # no objective reads the sources that hold one class per hospital, nor covid-chestxray's normals
    assert read[("covid19-radiography", COVID)] == read[("covid19-radiography", NORMAL)] == -1
    assert read[("hannover", COVID)] == -1 and read[("covid-chestxray", NORMAL)] == -1
    used = g[g >= 0]
    assert len(used) == len(set(used)) == 8  # every (source, class) pair its own group
    # a source left out of training is read by no objective
    g2 = objective_groups(labels, sources, set(SOURCES) - {"kermany-pediatric"})
    assert (g2[sources == "kermany-pediatric"] == -1).all()


def test_loss_ignores_images_no_objective_reads():
    labels = torch.tensor([OTHER, NORMAL, COVID, OTHER, COVID, NORMAL])
    sources = [
        "kermany-pediatric",
        "kermany-pediatric",
        "covid-chestxray",
        "covid-chestxray",
        "hannover",
        "covid-chestxray",
    ]
    logits = torch.zeros(6, 2, requires_grad=True)
    within_source_loss(logits, labels, sources).backward()
    g = logits.grad
    assert g[0, 0] < 0 < g[1, 0]  # abnormal pushed up for pneumonia, down for the normal of the same archive
    assert (g[:2, 1] == 0).all()  # the COVID-19 logit learns nothing from an archive without COVID-19
    assert g[2, 1] < 0 < g[3, 1] and (g[2:4, 0] == 0).all()  # COVID-19 vs other inside covid-chestxray only
    assert (g[4:] == 0).all()  # hannover (one class) and covid-chestxray's normal: no gradient


def test_class_probabilities_are_a_distribution():
    n = 5
    views = {
        "images": np.random.default_rng(0).integers(0, 255, (n, 32, 32), dtype=np.uint8),
        "lungs": np.ones((n, 32, 32), bool),
        "labels": np.zeros(n, np.int64),
    }
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    p = class_probabilities(model, views, np.arange(n), amp="none")
    assert p.shape == (n, 3) and np.allclose(p.sum(1), 1) and (p >= 0).all()


@pytest.fixture
def tiny_views():
    rng = np.random.default_rng(0)
    samples, images = [], []
    for src in SOURCES:
        for c in HOLDS[src]:
            for i in range(3):
                split = "train" if i < 2 else "test"
                samples.append({"dataset": src, "filename": f"{c}-{i}.png", "split": split, "label": c})
                img = rng.integers(0, 120, (32, 32)) + (100 if c != NORMAL else 0)  # pneumonia is brighter
                images.append(img.astype(np.uint8))
    return {
        "images": np.stack(images),
        "lungs": np.ones((len(images), 32, 32), bool),
        "labels": np.array([s["label"] for s in samples]),
        "samples": samples,
    }


@pytest.mark.integration  # four MobileNetV2 trainings, ~15 s
def test_every_fold_is_scored_and_a_rerun_resumes(tiny_views, tmp_path):
    recipe = CnnRecipe(input_size=32, epochs=1, draws_per_epoch=8, batch_size=4, amp="none")
    res = run_cnn_loso(tiny_views, tmp_path, recipe, init=None, n_resamples=20)
    row = next(iter(res.values()))
    assert all(0 <= row[k]["value"] <= 1 for k in PRIMARY) and 0 <= row["primary"] <= 1
    saved = sorted(p.parent.name for p in tmp_path.glob("model-without-*/checkpoint.pt"))
    # folds whose objectives read the same sources share one model: covid19-radiography and hannover
    # share the model of all, covid19-radiography + NIH and NIH the model without NIH: 4 trainings, 6 folds
    assert len(FOLDS) == 6 and len(saved) == 4 and "model-without-none" in saved
    assert {"loso.json", "loso.md", "loso.png", "recipe.json"} <= {p.name for p in tmp_path.iterdir()}
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("model-without-*/checkpoint.pt")}
    again = run_cnn_loso(tiny_views, tmp_path, recipe, init=None, n_resamples=20)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished folds are not retrained
    assert next(iter(again.values()))["primary"] == pytest.approx(row["primary"])
