"""Evaluation of a diagnosis model, per source and pooled (``covidcxr evaluate diagnosis``).

Every image of the split runs end to end through :class:`covidcxr.infer.Predictor` (gate
off), the way a user runs it. One-vs-rest AUROC and AUPRC per class with stratified bootstrap
95% CIs; sensitivity, specificity and PPV at the headline's decision; confusion matrix;
calibration (ECE, reliability diagrams of every class and of P(abnormal)); the share of the
heat map inside the lungs; COVID-19 vs other pneumonia inside covid-chestxray alone, where
every image is a publication figure and the source cannot separate the classes. Every number
per source and pooled, with ROC, calibration and confusion plots. The shortcut audit is
:mod:`covidcxr.engine.diagnosis.audit`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...data import load_records
from ...data.classification import CLASSES, classification_samples, first_per_group
from ...infer import Diagnoser
from ...infer.zones import split_lungs
from ...models.weights import WeightSpec, shipped_spec_path
from ...views import lung_share
from .metrics import ALL_SOURCES, by_source, covid_vs_each_finding, covid_vs_other
from .operating_point import write_abnormal_calibration
from .report import markdown_table, plot_calibration, plot_confusion, plot_roc, rounded

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Model outputs


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
        ``saliency``, ``lung_share`` (N, 3): the heat map of the called class inside the lungs,
        inside the patient's right lung and inside the left one).
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
            shares.append(lung_shares(res.heatmap, res.lung_mask))
    views = {"samples": kept, "labels": np.array([s["label"] for s in kept], dtype=np.int64)}
    out = {"probs": np.array(probs, float).reshape(-1, len(CLASSES))}
    if saliency:
        out["lung_share"] = np.array(shares, float).reshape(-1, 3)
    return views, out


def lung_shares(heat: np.ndarray, lungs: np.ndarray) -> tuple[float, float, float]:
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
    views, res = pipeline_outputs(spec_path, data_root, split, limit, saliency=saliency)
    if len(views["labels"]) == 0:
        raise ValueError(f"no labelled frontal images in the {split} split; check --data-root")
    within = covid_chestxray_only(views, res["probs"])  # labels and probabilities of the covid-chestxray images
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
        summary["saliency_in_lungs"] = saliency_summary(res["lung_share"])
    rows = [
        {
            "dataset": s["dataset"],
            "filename": s["filename"],
            "label": CLASSES[int(y)],
            **{c: round(float(p), 5) for c, p in zip(CLASSES, pr)},
            **({"saliency_in_lungs": _finite(res["lung_share"][i, 0])} if saliency else {}),
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


def saliency_summary(lung_share: np.ndarray) -> dict:
    """Mean, median and share below one half of the heat map inside the lungs, over the images that have a map.

    ``lung_share``: (N, 3) from :func:`lung_shares`; an image whose map is empty (NaN) is left out,
    and with none left every value is None (valid JSON, where NaN is not).
    """
    shares, right, left = np.asarray(lung_share, float).reshape(-1, 3)[np.isfinite(lung_share[:, 0])].T
    if not len(shares):
        keys = ("mean", "median", "share_below_0.5", "right_lung_mean", "left_lung_mean")
        return {**dict.fromkeys(keys), "n": 0}
    return {
        "mean": float(shares.mean()),
        "median": float(np.median(shares)),
        "share_below_0.5": float((shares < 0.5).mean()),
        "n": len(shares),
        "right_lung_mean": float(np.nanmean(right)),
        "left_lung_mean": float(np.nanmean(left)),
    }


def _finite(x: float) -> float | None:
    return round(float(x), 4) if np.isfinite(x) else None


def covid_chestxray_only(views: dict, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.array([s["dataset"] == "covid-chestxray" for s in views["samples"]], bool)
    return views["labels"][m], probs[m]


def _covid_chestxray_findings(views: dict) -> list[str]:
    return [s.get("finding") or "?" for s in views["samples"] if s["dataset"] == "covid-chestxray"]
