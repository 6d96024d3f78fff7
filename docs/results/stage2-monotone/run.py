"""LOSO of the monotone P(abnormal) beside the shipped design, on the training command's feature cache
(amendment 6 of docs/experiments/stage2-source-blind.md).

    python docs/results/stage2-monotone/run.py [--out docs/results/stage2-monotone]

Writes loso.json/.md/.png (the document's comparisons) and abnormal.json/.md: the LOSO AUROC of
P(abnormal) = 1 - P(No finding), disease vs No finding, the numbers the amendment's rule reads.
"""

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from covidcxr.engine.diagnosis import loso
from covidcxr.engine.diagnosis.heads import NORMAL
from covidcxr.metrics import stratified_bootstrap_ci

#: comparison -> (fold, sources scored): disease (any class but No finding) vs No finding, by P(abnormal).
ABNORMAL = {
    "covid19-radiography COVID-19 vs No finding (NIH left out too)": (
        "covid19-radiography + NIH",
        ("covid19-radiography",),
    ),
    "NIH pneumonia vs No finding": ("NIH", loso.NIH),
    "kermany-pediatric pneumonia vs normal": ("kermany-pediatric", ("kermany-pediatric",)),
}
ROWS = {
    "within_source / findings": ("within_source", "findings"),  # shipped, recomputed on this cache
    "within_source_monotone / findings": ("within_source_monotone", "findings"),
}

logging.basicConfig(level=logging.INFO)
ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/results/stage2-monotone")
ap.add_argument("--n-resamples", type=int, default=1000)
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

samples, features, _ = loso.stage2_inputs(imagenet_features=False)
rows = loso.sample_rows(features, samples)
labels, sources, splits = (np.array([s[k] for s in rows]) for k in ("label", "dataset", "split"))
results, abnormal = {}, {}
for name, (design, feature_set) in ROWS.items():
    x = loso.feature_matrix(features, feature_set)
    folds = loso.fold_probabilities(design, x, labels, sources, splits, 0, loso.has_facts(feature_set))
    results[name] = {
        "design": design,
        "features": feature_set,
        **loso.score_folds(folds, labels, sources, args.n_resamples),
    }
    abnormal[name] = {}
    for comparison, (fold, scored) in ABNORMAL.items():
        keep = np.isin(sources, scored)
        y = labels[keep] != NORMAL
        abnormal[name][comparison] = stratified_bootstrap_ci(
            y, 1 - folds[fold][keep][:, NORMAL], roc_auc_score, n_resamples=args.n_resamples
        )
    abnormal[name]["mean"] = float(np.mean([abnormal[name][c]["value"] for c in ABNORMAL]))
loso.write(results, out, {"n_images": len(rows)})

lines = [
    "LOSO AUROC of P(abnormal), disease vs No finding, in the source left out (95% bootstrap CI).",
    "",
    "| design | " + " | ".join(ABNORMAL) + " | mean | primary |",
    "|---|" + "---|" * (len(ABNORMAL) + 2),
]
for name, r in abnormal.items():
    cells = [f"{r[c]['value']:.3f} ({r[c]['ci_low']:.2f}–{r[c]['ci_high']:.2f})" for c in ABNORMAL]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | **{r['mean']:.3f}** | {results[name]['primary']:.3f} |")
(out / "abnormal.md").write_text("\n".join(lines) + "\n")
(out / "abnormal.json").write_text(json.dumps(abnormal, indent=2, default=float) + "\n")
print("\n".join(lines))
