"""Evaluation and shortcut audit of a diagnosis model, per source and pooled.

``evaluate_diagnosis``: one-vs-rest AUROC and AUPRC per class with stratified bootstrap 95%
CIs; sensitivity, specificity and PPV at the operating point (the most probable class);
confusion matrix; calibration (ECE, reliability diagram); the share of Grad-CAM saliency
inside the lungs. Every number per source and pooled; ROC, calibration and confusion plots.

``audit``: the same model on (a) lungs blacked out and (b) everything but the lungs
blacked out, beside the intact input; (c) a linear probe that predicts the image's source
from the model's features; and COVID-19 vs other pneumonia inside covid-chestxray alone,
where every image is a publication figure and the source cannot separate the classes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import load_records
from ..data.classification import CLASSES, DiagnosisDataset, classification_samples, first_per_group
from ..metrics import calibration, operating_point, stratified_bootstrap_ci
from ..models.weights import WeightSpec, shipped_spec_path
from ..pipeline import Diagnoser, LungSegmenter, load_diagnoser
from ..saliency import GradCam, lung_share
from ..severity import split_lungs
from .diagnosis import prepare_views

log = logging.getLogger(__name__)

COVID = CLASSES.index("COVID-19")
OTHER = CLASSES.index("Other pneumonia")
ALL_SOURCES = "all sources"


# ---------------------------------------------------------------------------
# Model outputs over stored views


def views_for(
    diagnoser: Diagnoser, data_root: str | None = None, split: str | None = None, limit: int = 0, progress: bool = True
) -> dict:
    """Lung views of the labelled frontal samples of a split (``None``: all), made as the diagnoser's weights expect.

    ``limit`` keeps at most that many samples per source (quick checks).
    """
    samples = first_per_group(classification_samples(load_records(data_root), split)[0], limit)
    segmenter = LungSegmenter.from_spec()
    if diagnoser.spec.lung_weights and diagnoser.spec.lung_weights != segmenter.spec.sha256:
        log.warning(
            "diagnosis weights were trained on masks of lung model %s…, the shipped lung model is %s…",
            diagnoser.spec.lung_weights[:12],
            segmenter.spec.sha256[:12],
        )
    spec = diagnoser.spec
    return prepare_views(
        samples,
        segmenter,
        diagnoser.size,
        spec.margin,
        whole=spec.lung_input == "whole",
        enhancement=spec.enhancement,
        progress=progress,
    )


def model_outputs(
    diagnoser: Diagnoser,
    views: dict,
    mode: str | None = None,
    features: bool = False,
    saliency: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
    """Calibrated probabilities (N, K) of stored views in ``mode``; optionally pooled features and saliency shares.

    Returns:
        dict with ``probs``; ``features`` (N, D) with ``features``; ``lung_share`` (N, 3)
        (Grad-CAM of the predicted class inside the view's lung mask, inside the patient's
        right lung, inside the left lung) with ``saliency``.
    """
    mode = mode or diagnoser.spec.lung_input
    ds = DiagnosisDataset(views["images"], views["lungs"], views["labels"], mode)
    model = diagnoser.model
    cam = GradCam(model, diagnoser.spec.architecture) if saliency else None
    probs, feats, shares = [], [], []
    start = 0
    for batch in tqdm(
        DataLoader(ds, batch_size=batch_size), desc=f"diagnosis ({mode})", disable=not progress, leave=False
    ):
        x = batch["image"]
        p = diagnoser.probabilities(x)
        probs.append(p)
        if features:
            with torch.inference_mode():
                feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().numpy())
        if cam is not None:
            maps = cam(x, p.argmax(1).tolist())
            shares.extend(_lung_shares(m, views["lungs"][start + j]) for j, m in enumerate(maps))
        start += len(x)
    out = {"probs": np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))}
    if features:
        out["features"] = np.concatenate(feats)
    if saliency:
        out["lung_share"] = np.array(shares, float).reshape(-1, 3)
    return out


def pipeline_outputs(
    spec_path: str | Path | None,
    data_root: str | None,
    split: str | None,
    limit: int = 0,
    saliency: bool = True,
    progress: bool = True,
) -> tuple[dict, dict]:
    """(views-like dict, outputs) of a model that reads more than the lung view, run end to end.

    The source-blind diagnosis reads the severity scorer's findings, so it is evaluated the
    way a user runs it: every image through :class:`covidcxr.predict.Pipeline` (gate off:
    the labelled images are frontal X-rays by their metadata), at its own pixel size.

    Returns:
        (``samples``, ``labels`` of the images read; ``probs`` (N, K) and, with
        ``saliency``, ``lung_share`` (N, 3) as :func:`model_outputs` gives them).
    """
    from ..io import ImageReadError, read_image
    from ..predict import Pipeline

    samples = first_per_group(classification_samples(load_records(data_root), split)[0], limit)
    pipe = Pipeline.load(
        diagnosis=str(spec_path) if spec_path else None, use_gate=False, saliency=saliency, severity=False
    )
    kept, probs, shares = [], [], []
    for s in tqdm(samples, desc="diagnosis (end to end)", disable=not progress, unit="image"):
        try:
            image = read_image(s["path"])
        except ImageReadError as err:
            log.warning("skipping %s", err)
            continue
        (res,) = pipe.run([image])
        if res.get("refusal"):
            log.warning("skipping %s: %s", s["path"], res["refusal"])
            continue
        kept.append(s)
        probs.append([res["probabilities"][c] for c in CLASSES])
        if saliency:
            shares.append(_lung_shares(res["heat"], res["mask"]))
    views = {"samples": kept, "labels": np.array([s["label"] for s in kept], dtype=np.int64)}
    out = {"probs": np.array(probs, float).reshape(-1, len(CLASSES))}
    if saliency:
        out["lung_share"] = np.array(shares, float).reshape(-1, 3)
    return views, out


def _lung_shares(heat: np.ndarray, lungs: np.ndarray) -> tuple[float, float, float]:
    """Share of ``heat`` inside the lungs, inside the patient's right lung and inside the left one."""
    right, left = split_lungs(lungs)
    return lung_share(heat, lungs), lung_share(heat, right), lung_share(heat, left)


# ---------------------------------------------------------------------------
# Metrics


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


# ---------------------------------------------------------------------------
# Evaluation


def evaluate_diagnosis(
    spec_path: str | Path | None = None,
    data_root: str | None = None,
    split: str = "test",
    out_dir: str | Path = "eval/diagnosis",
    limit: int = 0,
    update_spec: bool = False,
    saliency: bool = True,
) -> dict:
    """Evaluate a diagnosis model on a split; writes JSON, Markdown and plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diagnoser = load_diagnoser(spec_path)
    if getattr(diagnoser, "reads_facts", False):
        views, res = pipeline_outputs(spec_path, data_root, split, limit, saliency=saliency)
    else:
        views = views_for(diagnoser, data_root, split, limit)
        res = model_outputs(diagnoser, views, saliency=saliency)
    if len(views["labels"]) == 0:
        raise RuntimeError(f"no labelled frontal images in the {split} split; check --data-root")
    within = _covid_chestxray(views, res["probs"])  # labels and probabilities of the covid-chestxray images
    summary = {
        "weights": str(spec_path or shipped_spec_path("diagnosis")),
        "sha256": diagnoser.spec.sha256,
        "split": split,
        "lung_input": diagnoser.spec.lung_input,
        "temperature": diagnoser.spec.temperature,
        "per_source": by_source(views["samples"], views["labels"], res["probs"]),
        "covid_vs_other_in_covid_chestxray": covid_vs_other(*within),
        "covid_vs_each_finding_in_covid_chestxray": covid_vs_each_finding(*within, _covid_chestxray_findings(views)),
    }
    if saliency:
        shares, right, left = res["lung_share"].T
        summary["saliency_in_lungs"] = {
            "mean": float(np.nanmean(shares)),
            "median": float(np.nanmedian(shares)),
            "share_below_0.5": float(np.nanmean(shares < 0.5)),
            "n": int(np.isfinite(shares).sum()),
            "right_lung_mean": float(np.nanmean(right)),
            "left_lung_mean": float(np.nanmean(left)),
        }
    rows = [
        {
            "dataset": s["dataset"],
            "filename": s["filename"],
            "label": CLASSES[int(y)],
            **{c: round(float(p), 5) for c, p in zip(CLASSES, pr)},
            **({"saliency_in_lungs": round(float(res["lung_share"][i, 0]), 4)} if saliency else {}),
        }
        for i, (s, y, pr) in enumerate(zip(views["samples"], views["labels"], res["probs"]))
    ]
    (out / "diagnosis_eval.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "diagnosis_eval.md").write_text(markdown_table(summary))
    plot_roc(views, res["probs"], out / "roc.png", title=f"Diagnosis, {split} split")
    plot_calibration(summary["per_source"], out / "calibration.png")
    plot_confusion(summary["per_source"], out / "confusion.png")
    if update_spec:
        path = Path(spec_path) if spec_path else shipped_spec_path("diagnosis")
        spec = WeightSpec.from_json(path)
        pooled = summary["per_source"][ALL_SOURCES]
        spec.metrics = {
            "split": split,
            "macro_auroc": round(pooled["macro_auroc"], 4),
            **{f"auroc_{c}": _rounded(pooled["per_class"][c]["auroc"]) for c in CLASSES},
            "covid_vs_other_in_covid_chestxray": _rounded(summary["covid_vs_other_in_covid_chestxray"]),
            "ece": round(pooled["ece"], 4),
            "command": "covidcxr evaluate diagnosis --split test",
        }
        spec.to_json(path)
    return summary


def _covid_chestxray(views: dict, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.array([s["dataset"] == "covid-chestxray" for s in views["samples"]], bool)
    return views["labels"][m], probs[m]


def _covid_chestxray_findings(views: dict) -> list[str]:
    return [s.get("finding") or "?" for s in views["samples"] if s["dataset"] == "covid-chestxray"]


def _rounded(ci: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ci.items()}


def _cell(r: dict) -> str:
    if not np.isfinite(r["value"]):
        return "n/a"
    return f"{r['value']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f})"


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.1%}"


def markdown_table(summary: dict) -> str:
    """The evaluation as Markdown: per source and class, AUROC/AUPRC with CIs and the operating point."""
    lines = [
        f"Split: {summary['split']}; lung input: {summary['lung_input']}; probabilities calibrated with temperature {summary['temperature']:.3f}. "
        "95% CIs: stratified bootstrap (1000 resamples). Operating point: the most probable class. n/a: the class is absent from that source.",
        "",
        "| source | class | n (pos) | AUROC | AUPRC | sensitivity | specificity | PPV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for src, res in summary["per_source"].items():
        for c, r in res["per_class"].items():
            lines.append(
                f"| {src} | {c} | {res['n']} ({r['n_pos']}) | {_cell(r['auroc'])} | {_cell(r['auprc'])} | {_pct(r['sensitivity'])} | {_pct(r['specificity'])} | {_pct(r['ppv'])} |"
            )
    lines += ["", "| source | n | macro AUROC | accuracy | ECE |", "|---|---|---|---|---|"]
    for src, res in summary["per_source"].items():
        lines.append(f"| {src} | {res['n']} | {res['macro_auroc']:.3f} | {res['accuracy']:.3f} | {res['ece']:.3f} |")
    cvo = summary["covid_vs_other_in_covid_chestxray"]
    lines += [
        "",
        f"COVID-19 vs other pneumonia inside covid-chestxray (one source): AUROC {_cell(cvo)}, n = {cvo['n']} ({cvo['n_pos']} COVID-19).",
    ]
    if summary.get("covid_vs_each_finding_in_covid_chestxray"):
        lines += [
            "",
            "COVID-19 against each other-pneumonia finding inside covid-chestxray (tiny counts: read as a description, not an estimate):",
            "",
            "| finding | n | AUROC, COVID-19 vs this finding | median COVID-19 odds of its images |",
            "|---|---|---|---|",
        ]
        for name, r in summary["covid_vs_each_finding_in_covid_chestxray"].items():
            lines.append(f"| {name} | {r['n']} | {r['auroc']:.3f} | {r['median_covid_odds']:.3f} |")
        lines.append("")
    if "saliency_in_lungs" in summary:
        s = summary["saliency_in_lungs"]
        lines.append(
            f"Grad-CAM saliency inside the lungs: mean {s['mean']:.1%}, median {s['median']:.1%} (n = {s['n']}); images with less than half inside: {s['share_below_0.5']:.1%}."
            + (
                f" Mean share in the patient's right lung {s['right_lung_mean']:.1%}, left lung {s['left_lung_mean']:.1%}."
                if "left_lung_mean" in s
                else ""
            )
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Plots


def plot_roc(views: dict, probs: np.ndarray, path: Path, title: str = "") -> None:
    """One-vs-rest ROC curves per class, pooled and per source."""
    from sklearn.metrics import roc_curve

    from ..plots import _plt

    plt = _plt()
    sources = [ALL_SOURCES, *sorted({s["dataset"] for s in views["samples"]})]
    src = np.array([s["dataset"] for s in views["samples"]])
    fig, axes = plt.subplots(1, len(sources), figsize=(3.6 * len(sources), 3.6), squeeze=False)
    for ax, name in zip(axes[0], sources):
        m = np.ones(len(src), bool) if name == ALL_SOURCES else src == name
        for c, cls in enumerate(CLASSES):
            y = views["labels"][m] == c
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = roc_curve(y, probs[m, c])
                ax.plot(fpr, tpr, label=f"{cls} {roc_auc_score(y, probs[m, c]):.3f}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{name} (n={int(m.sum())})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_calibration(per_source: dict, path: Path) -> None:
    """Reliability diagrams (top-class confidence vs accuracy) per source and pooled."""
    from ..plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(per_source), figsize=(3.4 * len(per_source), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], per_source.items()):
        bins = res["reliability"]
        ax.bar(
            [(b["low"] + b["high"]) / 2 for b in bins],
            [b["accuracy"] for b in bins],
            width=0.09,
            color="C0",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{name}\nECE {res['ece']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(per_source: dict, path: Path) -> None:
    """Confusion matrices (rows: truth, columns: prediction) per source and pooled."""
    from ..plots import _plt

    plt = _plt()
    short = ["COVID", "Other pn.", "No find."]
    fig, axes = plt.subplots(1, len(per_source), figsize=(3.4 * len(per_source), 3.4), squeeze=False)
    for ax, (name, res) in zip(axes[0], per_source.items()):
        cm = np.array(res["confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(3), short, fontsize=7)
        ax.set_yticks(range(3), short, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Shortcut audit

AUDIT_MODES = {
    "intact": None,  # the spec's own lung input
    "lungs blacked out": "lungs_blacked_out",
    "all but the lungs blacked out": "masked",
}


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


def audit(
    spec_path: str | Path | None = None,
    data_root: str | None = None,
    out_dir: str | Path = "eval/audit",
    split: str = "test",
    limit: int = 0,
) -> dict:
    """Shortcut audit of a diagnosis model (see the module docstring); writes JSON, Markdown, a plot."""
    if (
        WeightSpec.from_json(Path(spec_path) if spec_path else shipped_spec_path("diagnosis")).architecture
        == "source_blind_mobilenet_v2"
    ):
        from .audit_heads import audit_heads  # reads cached findings and features, not stored lung views

        return audit_heads(spec_path, data_root, out_dir, split, limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diagnoser = Diagnoser.from_spec(spec_path)
    test = views_for(diagnoser, data_root, split, limit)
    rows = {}
    for name, mode in AUDIT_MODES.items():
        res = model_outputs(diagnoser, test, mode=mode, features=name == "intact")
        per_source = by_source(test["samples"], test["labels"], res["probs"])
        pooled = per_source[ALL_SOURCES]
        rows[name] = {
            "mode": mode or diagnoser.spec.lung_input,
            "macro_auroc": pooled["macro_auroc"],
            "covid_auroc": pooled["per_class"]["COVID-19"]["auroc"],
            "covid_vs_other_in_covid_chestxray": covid_vs_other(*_covid_chestxray(test, res["probs"])),
            "per_source_macro_auroc": {s: r["macro_auroc"] for s, r in per_source.items() if s != ALL_SOURCES},
        }
        if name == "intact":
            test_feats = res["features"]
    train = views_for(diagnoser, data_root, "train", limit)
    train_feats = model_outputs(diagnoser, train, features=True)["features"]
    src_train = [s["dataset"] for s in train["samples"]]
    src_test = [s["dataset"] for s in test["samples"]]
    probes = {"all classes": source_probe(train_feats, src_train, test_feats, src_test)}
    for c in ("Other pneumonia", "No finding"):
        k = CLASSES.index(c)
        tr, te = train["labels"] == k, test["labels"] == k
        if len({s for s, m in zip(src_train, tr) if m}) > 1 and te.sum() > 0:
            probes[f"{c} only"] = source_probe(
                train_feats[tr],
                [s for s, m in zip(src_train, tr) if m],
                test_feats[te],
                [s for s, m in zip(src_test, te) if m],
            )
    summary = {
        "weights": str(spec_path or shipped_spec_path("diagnosis")),
        "sha256": diagnoser.spec.sha256,
        "split": split,
        "n": len(test["labels"]),
        "inputs": rows,
        "source_probe": probes,
    }
    summary["verdict"] = verdict(summary)
    (out / "audit.json").write_text(json.dumps(summary, indent=2, default=float))
    (out / "audit.md").write_text(audit_markdown(summary))
    plot_audit(summary, out / "audit.png")
    return summary


def verdict(summary: dict) -> list[str]:
    """Plain-language reading of the audit, one sentence per check."""
    rows = summary["inputs"]
    intact = rows["intact"]["covid_auroc"]["value"]
    blacked = rows["lungs blacked out"]["covid_auroc"]["value"]
    lungs_only = rows["all but the lungs blacked out"]["covid_auroc"]["value"]
    out = []
    if 0.35 <= blacked <= 0.65:
        out.append(
            f"PASS: with the lungs blacked out the model no longer tells COVID-19 apart (AUROC {blacked:.2f}, intact {intact:.2f}): what it reads is in the lungs."
        )
    else:
        out.append(
            f"WARN: with the lungs blacked out the model still ranks COVID-19 at AUROC {blacked:.2f} (intact {intact:.2f}): it reads something outside the lungs, a likely shortcut."
        )
    drop = intact - lungs_only
    if drop <= 0.05:
        out.append(f"PASS: the lungs alone keep the COVID-19 AUROC ({lungs_only:.2f} vs {intact:.2f} intact).")
    else:
        out.append(
            f"WARN: showing only the lungs lowers the COVID-19 AUROC from {intact:.2f} to {lungs_only:.2f}: part of the decision comes from outside the lungs."
        )
    probe = summary["source_probe"]["all classes"]
    out.append(
        f"NOTE: a linear probe on the model's features names the image's source with balanced accuracy {probe['balanced_accuracy']:.2f} "
        f"(chance {probe['chance']:.2f}). Source information is in the features, as it is in the pixels (age group, processing); "
        "per-source results and the within-source test below are the numbers to trust, not the pooled AUROC."
    )
    within = rows["intact"]["covid_vs_other_in_covid_chestxray"]
    word = "PASS" if within["value"] >= 0.8 else "WARN"
    out.append(
        f"{word}: inside covid-chestxray alone (one source, no source shortcut) COVID-19 vs other pneumonia AUROC {_cell(within)}, n = {within['n']} ({within['n_pos']} COVID-19)."
    )
    return out


def audit_markdown(summary: dict) -> str:
    lines = [
        f"Shortcut audit, {summary['split']} split (n = {summary['n']}). AUROC with stratified bootstrap 95% CIs.",
        "",
        "| input | COVID-19 AUROC (one vs rest) | macro AUROC | COVID-19 vs other pneumonia, covid-chestxray only | macro AUROC per source |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["inputs"].items():
        per = ", ".join(f"{s} {v:.3f}" for s, v in r["per_source_macro_auroc"].items())
        lines.append(
            f"| {name} | {_cell(r['covid_auroc'])} | {r['macro_auroc']:.3f} | {_cell(r['covid_vs_other_in_covid_chestxray'])} | {per} |"
        )
    lines += [
        "",
        "| source probe (logistic regression on pooled features) | balanced accuracy | chance | n train / test |",
        "|---|---|---|---|",
    ]
    for name, p in summary["source_probe"].items():
        lines.append(
            f"| {name} ({', '.join(p['sources'])}) | {p['balanced_accuracy']:.3f} | {p['chance']:.3f} | {p['n_train']} / {p['n_test']} |"
        )
    lines += ["", "Verdict:", ""] + [f"- {v}" for v in summary["verdict"]]
    return "\n".join(lines) + "\n"


def plot_audit(summary: dict, path: Path) -> None:
    """COVID-19 AUROC with CIs for each input, beside chance."""
    from ..plots import _plt

    plt = _plt()
    names = list(summary["inputs"])
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, n in enumerate(names):
        for j, (key, color) in enumerate((("covid_auroc", "C0"), ("covid_vs_other_in_covid_chestxray", "C1"))):
            r = summary["inputs"][n][key]
            if np.isfinite(r["value"]):
                ax.errorbar(
                    r["value"],
                    i + (j - 0.5) * 0.25,
                    xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                    fmt="o",
                    color=color,
                    capsize=3,
                    label=(
                        "COVID-19 vs rest, all sources" if j == 0 else "COVID-19 vs other pneumonia, covid-chestxray"
                    )
                    if i == 0
                    else None,
                )
    ax.axvspan(0.35, 0.65, color="0.9", zorder=0, label="no better than chance")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlim=(0, 1.02), xlabel="AUROC", title="Shortcut audit")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
