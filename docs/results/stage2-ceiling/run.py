"""In-source ceiling of each stage-2 LOSO aim (docs/experiments/stage2-ceiling.md): train on a source's own train
split, score its validation split; the test split is not read.

    python docs/results/stage2-ceiling/run.py [--cnn runs/loso-cnn/model-without-kermany-pediatric.pt] [--out DIR]

Beside each AUROC: the validation sensitivity at 0.80 specificity (threshold placed on the validation
negatives themselves, so optimistic: a ceiling), the form of the headline's aim (issue 28).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from covidcxr.engine.diagnosis.heads import COVID, NORMAL, OTHER, C
from covidcxr.engine.diagnosis.loso import NIH, feature_matrix, sample_rows, stage2_inputs
from covidcxr.metrics import stratified_bootstrap_ci

ap = argparse.ArgumentParser()
ap.add_argument("--cnn", default="runs/loso-cnn/model-without-kermany-pediatric.pt")
ap.add_argument("--out", default=str(Path(__file__).parent))
args = ap.parse_args()
here = Path(args.out)
here.mkdir(parents=True, exist_ok=True)
SPECIFICITY = 0.80

#: comparison -> (sources, positive classes, negative classes, LOSO aim or None)
COMPARISONS = {
    "NIH Other pneumonia vs No finding": (NIH, (OTHER,), (NORMAL,), 0.75),
    "covid-chestxray COVID-19 vs Other pneumonia": (("covid-chestxray",), (COVID,), (OTHER,), 0.75),
    "kermany-pediatric pneumonia vs normal": (("kermany-pediatric",), (OTHER,), (NORMAL,), None),
    "covid19-radiography COVID-19 vs No finding (confounded in-source)": (
        ("covid19-radiography",),
        (COVID,),
        (NORMAL,),
        0.85,
    ),
}
FEATURES = ("imagenet", "lungenc", "findings", "imagenet+findings")

samples, features, _ = stage2_inputs()
rows = sample_rows(features, samples)
labels = np.array([s["label"] for s in rows])
sources = np.array([s["dataset"] for s in rows])
splits = np.array([s["split"] for s in rows])


def sensitivity_at_specificity(y, s, specificity=SPECIFICITY):
    """Share of positives above the lowest threshold that keeps ``specificity`` of the negatives below it."""
    y, s = np.asarray(y, bool), np.asarray(s, float)
    t = np.quantile(s[~y], specificity, method="higher")
    return float((s[y] > t).mean())


def auroc(y, s):
    r = stratified_bootstrap_ci(y, s, roc_auc_score, n_resamples=1000)
    sens = stratified_bootstrap_ci(y, s, sensitivity_at_specificity, n_resamples=1000)
    return {
        "auroc": r["value"],
        "ci": [r["ci_low"], r["ci_high"]],
        "n": r["n"],
        "n_pos": r["n_pos"],
        "sensitivity_at_specificity": {"specificity": SPECIFICITY, **sens},
    }


results = {}
for comp, (srcs, pos, neg, aim) in COMPARISONS.items():
    keep = np.isin(sources, srcs) & np.isin(labels, pos + neg)
    train, val = keep & (splits == "train"), keep & (splits == "val")
    y = np.isin(labels, pos).astype(int)
    entry = {"aim": aim, "n_train": int(train.sum()), "n_val": int(val.sum()), "heads": {}}
    for name in FEATURES:
        x = feature_matrix(features, name)
        mean, scale = x[train].mean(0), x[train].std(0) + 1e-6
        clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x[train] - mean) / scale, y[train])
        entry["heads"][name] = auroc(y[val], clf.decision_function((x[val] - mean) / scale))
        print(
            comp,
            name,
            f"AUROC {entry['heads'][name]['auroc']:.3f}",
            f"sensitivity at {SPECIFICITY:.2f} specificity {entry['heads'][name]['sensitivity_at_specificity']['value']:.3f}",
            flush=True,
        )
    results[comp] = entry

if Path(args.cnn).is_file():  # the within-source CNN: abnormal learned inside NIH, covid inside covid-chestxray
    import torch

    from covidcxr.data import load_records
    from covidcxr.data.classification import classification_samples
    from covidcxr.engine.diagnosis.views import prepare_views
    from covidcxr.infer import LungSegmenter
    from covidcxr.research.cnn_loso import CnnRecipe, build_model, class_probabilities

    recipe = CnnRecipe()
    cnn_samples, _ = classification_samples(load_records(None))
    views = prepare_views(cnn_samples, LungSegmenter.from_spec(), recipe.input_size, recipe.margin)
    model = build_model(recipe, None)
    model.load_state_dict(torch.load(args.cnn, map_location="cpu", weights_only=False)["model"])
    vs = views["samples"]
    v_src, v_split = np.array([s["dataset"] for s in vs]), np.array([s["split"] for s in vs])
    for comp in ("NIH Other pneumonia vs No finding", "covid-chestxray COVID-19 vs Other pneumonia"):
        srcs, pos, neg, _ = COMPARISONS[comp]
        idx = np.flatnonzero(np.isin(v_src, srcs) & (v_split == "val") & np.isin(views["labels"], pos + neg))
        p = class_probabilities(model, views, idx)
        s = 1 - p[:, NORMAL] if neg == (NORMAL,) else p[:, COVID] / np.maximum(p[:, COVID] + p[:, OTHER], 1e-12)
        results[comp]["cnn_within_source"] = auroc(np.isin(views["labels"][idx], pos).astype(int), s)
        print(comp, "cnn", f"{results[comp]['cnn_within_source']['auroc']:.3f}", flush=True)

for e in results.values():
    cands = [h["auroc"] for h in e["heads"].values()] + (
        [e["cnn_within_source"]["auroc"]] if "cnn_within_source" in e else []
    )
    e["best"] = max(cands)
    e["reading"] = None if e["aim"] is None else ("out of reach" if e["best"] < e["aim"] else "not ruled out")
(here / "ceiling.json").write_text(json.dumps(results, indent=2) + "\n")
lines = [
    "| comparison (train split → validation, in-source) | "
    + " | ".join(FEATURES)
    + " | CNN | best | LOSO aim | reading |",
    "|---" * (len(FEATURES) + 5) + "|",
]
for comp, e in results.items():
    cells = [
        f"{e['heads'][f]['auroc']:.3f} ({e['heads'][f]['ci'][0]:.2f}–{e['heads'][f]['ci'][1]:.2f})" for f in FEATURES
    ]
    cnn = e.get("cnn_within_source")
    cells.append(f"{cnn['auroc']:.3f} ({cnn['ci'][0]:.2f}–{cnn['ci'][1]:.2f})" if cnn else "")
    lines.append(
        f"| {comp} (n {e['n_train']} / {e['n_val']}) | "
        + " | ".join(cells)
        + f" | {e['best']:.3f} | {e['aim'] or ''} | {e['reading'] or ''} |"
    )
lines += [
    "",
    f"Validation sensitivity at {SPECIFICITY:.2f} specificity (95% CI), same heads:",
    "",
    "| comparison | " + " | ".join(FEATURES) + " |",
    "|---" * (len(FEATURES) + 1) + "|",
]
for comp, e in results.items():
    cells = []
    for f in FEATURES:
        r = e["heads"][f]["sensitivity_at_specificity"]
        cells.append(f"{r['value']:.3f} ({r['ci_low']:.2f}–{r['ci_high']:.2f})")
    lines.append(f"| {comp} | " + " | ".join(cells) + " |")
(here / "ceiling.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
