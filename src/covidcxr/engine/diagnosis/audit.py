"""Shortcut audit of stage 2 (``covidcxr audit``): does the decision read the lungs, or the source?

On the cached stage-2 inputs (:mod:`covidcxr.engine.diagnosis.features`) of the split: intact,
lungs blacked out, all but the lungs blacked out (both recomputed from the pixels: stage 1, lesions, findings and the
ImageNet features all see the blacked-out image; the lung masks are the intact image's);
per-source results; linear source probes over all six sources on what the model reads (the
pooled image features and the finding facts) and on its decision (the class log-probabilities),
over all classes and within each class; and the leave-one-source-out table of its design.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ...data.labels import CLASSES
from ...infer.findings import FACTS
from ...metrics import stratified_bootstrap_ci
from ...models import load_weights
from ...models.source_blind import SourceBlindHeads
from ...models.weights import shipped_spec_path
from . import loso
from .metrics import ALL_SOURCES, by_source, covid_vs_other, source_probe
from .report import archive_checks_verdict, archive_markdown, audit_markdown, plot_audit, verdict
from .train import heads_probabilities


def _row(samples: list[dict], labels: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    per_source = by_source(samples, labels, probs)
    pooled = per_source[ALL_SOURCES]
    ieee = np.array([s["dataset"] == "covid-chestxray" for s in samples])
    return {
        "mode": mode,
        "macro_auroc": pooled["macro_auroc"],
        "covid_auroc": pooled["per_class"]["COVID-19"]["auroc"],
        "covid_vs_other_in_covid_chestxray": covid_vs_other(labels[ieee], probs[ieee]),
        "per_source_macro_auroc": {s: r["macro_auroc"] for s, r in per_source.items() if s != ALL_SOURCES},
    }


#: Archives that hold both classes of one question: (name, sources, positive label, negative label).
ARCHIVES = (
    ("NIH: pneumonia vs no finding", ("nih-chestxray8", "nih-chestxray14"), "Other pneumonia", "No finding"),
    ("Kermany: pneumonia vs normal", ("kermany-pediatric",), "Other pneumonia", "No finding"),
    ("covid-chestxray: COVID-19 vs other pneumonia", ("covid-chestxray",), "COVID-19", "Other pneumonia"),
)


def archive_checks(
    samples: list[dict],
    labels: np.ndarray,
    modes: dict[str, tuple[np.ndarray, np.ndarray]],
    n_resamples: int = 500,
) -> dict:
    """AUROC of every finding fact and of P(abnormal) inside each archive of :data:`ARCHIVES`, per input mode.

    ``modes``: name -> (finding facts (N, len(FACTS)), class probabilities (N, 3)) of the same images.
    A fact or P(abnormal) that still separates the classes with the lungs blacked out reads
    something outside the lungs. Returns archive -> mode -> {score name: AUROC with a bootstrap CI
    of ``n_resamples``}.
    """
    sources = np.array([s["dataset"] for s in samples])
    out = {}
    for name, members, pos, neg in ARCHIVES:
        keep = np.isin(sources, members) & np.isin(labels, [CLASSES.index(pos), CLASSES.index(neg)])
        y = labels[keep] == CLASSES.index(pos)
        if y.all() or not y.any():
            continue
        out[name] = {"n": int(keep.sum()), "n_positive": int(y.sum()), "modes": {}}
        for mode, (facts, probs) in modes.items():
            scores = {"P(abnormal)": 1 - probs[keep, CLASSES.index("No finding")]}
            scores |= {f: np.asarray(facts, float)[keep, k] for k, f in enumerate(FACTS)}
            out[name]["modes"][mode] = {
                k: stratified_bootstrap_ci(y, v, roc_auc_score, n_resamples=n_resamples) for k, v in scores.items()
            }
    return out


def _probes(
    reps: dict[str, np.ndarray], labels: np.ndarray, sources: np.ndarray, splits: np.ndarray, split: str
) -> dict:
    """Source probes trained on the train split, scored on ``split``: all classes, then within each class."""
    out = {}
    tr, te = splits == "train", splits == split
    for name, r in reps.items():
        out[f"{name}, all classes"] = source_probe(r[tr], list(sources[tr]), r[te], list(sources[te]))
        for k, c in enumerate(CLASSES):
            a, b = tr & (labels == k), te & (labels == k)
            if len(set(sources[a])) > 1 and b.sum() > 0:
                out[f"{name}, {c} only"] = source_probe(r[a], list(sources[a]), r[b], list(sources[b]))
    return out


def _source_blind_weights(spec_path: str | Path | None):
    """(model, spec) of a source-blind diagnosis; a CNN spec is refused with the command that audits it."""
    model, spec = load_weights(spec_path, kind="diagnosis")
    if not isinstance(model, SourceBlindHeads):
        raise ValueError(
            "a CNN diagnosis is audited over stored lung views by the research command line: "
            f"python -m covidcxr.research audit-cnn --weights {spec_path} --out DIR"
        )
    return model, spec


def audit(
    spec_path: str | Path | None = None,
    data_root: str | None = None,
    out_dir: str | Path = "eval/audit",
    split: str = "test",
    limit: int = 0,
) -> dict:
    """Audit a source-blind diagnosis model; writes audit.json/.md/.png (and loso/) into ``out_dir``.

    ``limit`` (quick checks) keeps at most that many images per source and split, and skips the
    leave-one-source-out table.
    """
    model, spec = _source_blind_weights(spec_path)
    with_loso = not limit
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    init = spec.training.get("config", {}).get("init")
    feature_set = spec.training.get("config", {}).get("features", "imagenet+findings")
    samples, features, (blacked, outside) = loso.stage2_inputs(
        data_root,
        init,
        blackout_split=split,
        outside_too=True,
        limit=limit,
        imagenet_features="imagenet" in loso.FEATURE_SETS[feature_set],
    )
    rows_all = loso.sample_rows(features, samples)
    labels_all = np.array([s["label"] for s in rows_all])
    sources, splits = (np.array([s[k] for s in rows_all]) for k in ("dataset", "split"))
    probs_all = heads_probabilities(model, features)
    index = {str(n): i for i, n in enumerate(features["names"])}
    test_idx = np.array([index[str(n)] for n in blacked["names"]])
    test_samples = [rows_all[i] for i in test_idx]
    labels = labels_all[test_idx]
    inputs = {
        "intact": _row(test_samples, labels, probs_all[test_idx], spec.lung_input),
        "lungs blacked out": _row(
            test_samples, labels, heads_probabilities(model, blacked), "lungs_blacked_out (pixels)"
        ),
        "all but the lungs blacked out": _row(
            test_samples, labels, heads_probabilities(model, outside), "outside_blacked_out (pixels)"
        ),
    }
    reps = {
        f"model inputs ({feature_set})": loso.feature_matrix(features, feature_set),
        "finding facts": np.asarray(features["findings"], np.float64),
        "decision (class log-probabilities)": np.log(np.clip(probs_all, 1e-9, 1)),
    }
    modes = {
        "intact": (np.asarray(features["findings"])[test_idx], probs_all[test_idx]),
        "lungs blacked out": (np.asarray(blacked["findings"]), heads_probabilities(model, blacked)),
        "all but the lungs blacked out": (np.asarray(outside["findings"]), heads_probabilities(model, outside)),
    }
    summary = {
        "weights": str(spec_path or shipped_spec_path("diagnosis")),
        "sha256": spec.sha256,
        "evaluated_weights": {"name": spec.name, "sha256": spec.sha256},
        "split": split,
        "n": len(labels),
        "inputs": inputs,
        "archives": archive_checks(test_samples, labels, modes),
        "source_probe": {"all classes": None, **_probes(reps, labels_all, sources, splits, split)},
    }
    summary["source_probe"]["all classes"] = summary["source_probe"][f"model inputs ({feature_set}), all classes"]
    if with_loso:
        design = spec.training.get("config", {}).get("design", "within_source")
        summary["loso"] = loso.run_loso(features, samples, {f"{design} / {feature_set}": (design, feature_set)})
        loso.write(summary["loso"], out / "loso")
    summary["verdict"] = verdict(summary) + archive_checks_verdict(summary["archives"])
    (out / "audit.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    (out / "audit.md").write_text(
        audit_markdown(summary)
        + archive_markdown(summary["archives"])
        + ("\n## Leave-one-source-out\n\n" + loso.markdown(summary["loso"]) if with_loso else "")
    )
    plot_audit(summary, out / "audit.png")
    return summary
