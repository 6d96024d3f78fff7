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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ...data import load_records
from ...data.classification import CLASSES, DiagnosisDataset, classification_samples, first_per_group
from ...infer import Diagnoser, LungSegmenter
from ...infer.zones import split_lungs
from ...models.weights import WeightSpec, shipped_spec_path
from ...saliency import GradCam
from ...views import lung_share
from .metrics import (
    ALL_SOURCES,
    COVID,
    OTHER,
    by_source,
    covid_odds,
    covid_vs_each_finding,
    covid_vs_other,
    source_probe,
    summarize,
)
from .operating_point import write_abnormal_calibration
from .report import (
    audit_markdown,
    markdown_table,
    plot_audit,
    plot_calibration,
    plot_confusion,
    plot_roc,
    rounded,
    verdict,
)
from .views import prepare_views

__all__ = [  # the names this module always offered, some of them now defined next door
    "ALL_SOURCES",
    "AUDIT_MODES",
    "COVID",
    "OTHER",
    "audit",
    "audit_markdown",
    "by_source",
    "covid_odds",
    "covid_vs_each_finding",
    "covid_vs_other",
    "evaluate_diagnosis",
    "markdown_table",
    "model_outputs",
    "pipeline_outputs",
    "plot_audit",
    "plot_calibration",
    "plot_confusion",
    "plot_roc",
    "source_probe",
    "summarize",
    "verdict",
    "views_for",
]

log = logging.getLogger(__name__)


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
    way a user runs it: every image through :class:`covidcxr.infer.Predictor` (gate off:
    the labelled images are frontal X-rays by their metadata), at its own pixel size.

    Returns:
        (``samples``, ``labels`` of the images read; ``probs`` (N, K) and, with
        ``saliency``, ``lung_share`` (N, 3) as :func:`model_outputs` gives them).
    """
    from ...infer import Predictor
    from ...io import ImageReadError, read_image

    samples = first_per_group(classification_samples(load_records(data_root), split)[0], limit)
    pipe = Predictor.load(
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
        if res.error:
            log.warning("skipping %s: %s", s["path"], res.error)
            continue
        kept.append(s)
        probs.append([res.probabilities[c] for c in CLASSES])
        if saliency:
            shares.append(_lung_shares(res.heatmap, res.lung_mask))
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
    diagnoser = Diagnoser.from_spec(spec_path)
    if getattr(diagnoser, "reads_facts", False):
        views, res = pipeline_outputs(spec_path, data_root, split, limit, saliency=saliency)
    else:
        views = views_for(diagnoser, data_root, split, limit)
        res = model_outputs(diagnoser, views, saliency=saliency)
    if len(views["labels"]) == 0:
        raise ValueError(f"no labelled frontal images in the {split} split; check --data-root")
    within = _covid_chestxray(views, res["probs"])  # labels and probabilities of the covid-chestxray images
    summary = {
        "weights": str(spec_path or shipped_spec_path("diagnosis")),
        "sha256": diagnoser.spec.sha256,
        "evaluated_weights": {
            "name": diagnoser.spec.name,
            "sha256": diagnoser.spec.sha256,
            "spec": str(spec_path or shipped_spec_path("diagnosis")),
        },
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
    sources = np.array([s["dataset"] for s in views["samples"]])
    threshold = diagnoser.spec.operating_point.get("p_abnormal")
    summary["abnormal_calibration"] = write_abnormal_calibration(views["labels"], res["probs"], sources, out, threshold)
    (out / "diagnosis_eval.json").write_text(json.dumps(summary, indent=2, default=float))
    plot_confusion(summary["per_source"], out / "confusion.png")
    if update_spec:
        path = Path(spec_path) if spec_path else shipped_spec_path("diagnosis")
        spec = WeightSpec.from_json(path)
        pooled = summary["per_source"][ALL_SOURCES]
        spec.metrics = {
            "split": split,
            "macro_auroc": round(pooled["macro_auroc"], 4),
            **{f"auroc_{c}": rounded(pooled["per_class"][c]["auroc"]) for c in CLASSES},
            "covid_vs_other_in_covid_chestxray": rounded(summary["covid_vs_other_in_covid_chestxray"]),
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


# ---------------------------------------------------------------------------
# Shortcut audit

AUDIT_MODES = {
    "intact": None,  # the spec's own lung input
    "lungs blacked out": "lungs_blacked_out",
    "all but the lungs blacked out": "masked",
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
        from .audit import audit_heads  # reads cached findings and features, not stored lung views

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
        "evaluated_weights": {"name": diagnoser.spec.name, "sha256": diagnoser.spec.sha256},
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
