"""Metrics of a diagnosis model's probabilities: per class, per source, COVID-19 against other pneumonia, source probe."""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ...data.classification import CLASSES
from ...metrics import calibration, operating_point, stratified_bootstrap_ci

COVID = CLASSES.index("COVID-19")
OTHER = CLASSES.index("Other pneumonia")
ALL_SOURCES = "all sources"


def _auroc(y, s) -> float:
    return roc_auc_score(y, s)


def _auprc(y, s) -> float:
    return average_precision_score(y, s)


def summarize(labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000) -> dict:
    """All metrics of one group of images (see the module docstring)."""
    pred = probs.argmax(1)
    per_class = {}
    for c, name in enumerate(CLASSES):
        y = labels == c
        per_class[name] = {
            "n_pos": int(y.sum()),
            "auroc": stratified_bootstrap_ci(y, probs[:, c], _auroc, n_resamples=n_resamples),
            "auprc": stratified_bootstrap_ci(y, probs[:, c], _auprc, n_resamples=n_resamples),
            **operating_point(y, pred == c),
        }
    present = [name for name, r in per_class.items() if np.isfinite(r["auroc"]["value"])]
    cal = calibration(labels, probs)
    return {
        "n": int(len(labels)),
        "per_class": per_class,
        "macro_auroc": float(np.mean([per_class[n]["auroc"]["value"] for n in present])) if present else float("nan"),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "confusion": confusion_matrix(labels, pred, labels=list(range(len(CLASSES)))).tolist(),
        "ece": cal["ece"],
        "reliability": cal["bins"],
    }


def covid_vs_other(labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000) -> dict:
    """AUROC of COVID-19 vs other pneumonia among images of those two classes.

    Score: P(COVID-19) / (P(COVID-19) + P(other pneumonia)), the model's odds between the two.
    """
    keep = (labels == COVID) | (labels == OTHER)
    return stratified_bootstrap_ci(labels[keep] == COVID, covid_odds(probs[keep]), _auroc, n_resamples=n_resamples)


def covid_odds(probs: np.ndarray) -> np.ndarray:
    """P(COVID-19) / (P(COVID-19) + P(other pneumonia)) per row of (N, K) probabilities: the model's odds between the two."""
    return probs[:, COVID] / np.clip(probs[:, COVID] + probs[:, OTHER], 1e-12, None)


def covid_vs_each_finding(labels: np.ndarray, probs: np.ndarray, findings: list[str]) -> dict:
    """COVID-19 against each other-pneumonia finding separately: which ones the model takes for COVID-19.

    Each entry holds the finding's image count ``n``, the AUROC of all COVID-19 images against
    its images (the share of pairs the model ranks right; no CI, the counts are tiny) and the
    median COVID-19 odds (:func:`covid_odds`) of its images. Sorted by ``n``.
    """
    findings = np.asarray(findings, dtype=object)
    score = covid_odds(probs)
    covid = score[labels == COVID]
    counts = Counter(findings[labels == OTHER])
    out = {}
    for name in sorted(counts, key=lambda f: (-counts[f], f)):
        own = score[(findings == name) & (labels == OTHER)]
        auroc = (
            roc_auc_score(np.r_[np.ones(len(covid)), np.zeros(len(own))], np.r_[covid, own])
            if len(covid)
            else float("nan")
        )
        out[name] = {"n": len(own), "auroc": float(auroc), "median_covid_odds": float(np.median(own))}
    return out


def by_source(samples: list[dict], labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000) -> dict:
    """:func:`summarize` pooled and per source (``n_resamples`` bootstrap resamples for each CI)."""
    sources = np.array([s["dataset"] for s in samples])
    out = {ALL_SOURCES: summarize(labels, probs, n_resamples)}
    for src in sorted(set(sources)):
        m = sources == src
        out[src] = summarize(labels[m], probs[m], n_resamples)
    return out


def source_probe(
    train_feats: np.ndarray, train_sources: list[str], test_feats: np.ndarray, test_sources: list[str]
) -> dict:
    """Balanced accuracy of a logistic-regression probe predicting the source from features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1, class_weight="balanced"))
    probe.fit(train_feats, train_sources)
    n = len(set(train_sources))
    return {
        "balanced_accuracy": float(balanced_accuracy_score(test_sources, probe.predict(test_feats))),
        "chance": 1.0 / n,
        "sources": sorted(set(train_sources)),
        "n_train": len(train_sources),
        "n_test": len(test_sources),
    }
