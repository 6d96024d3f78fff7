"""Shortcut audit of a CNN diagnosis (``python -m covidcxr.research audit-cnn``), over stored lung views.

The CNN is shown the split's lung views (a) intact, (b) with the lungs blacked out and (c) with
everything but the lungs blacked out; (d) a linear probe predicts the image's source from the
CNN's pooled features; and COVID-19 vs other pneumonia is read inside covid-chestxray alone.
The report is the product audit's (:mod:`covidcxr.engine.diagnosis.report`), so the verdicts of
the two designs read alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import load_records
from ..data.classification import CLASSES, DiagnosisDataset, classification_samples, first_per_group
from ..engine.diagnosis.evaluate import covid_chestxray_only, lung_shares
from ..engine.diagnosis.metrics import ALL_SOURCES, by_source, covid_vs_other, source_probe
from ..engine.diagnosis.report import audit_markdown, plot_audit, verdict
from ..engine.diagnosis.views import prepare_views
from ..infer import LungSegmenter
from ..infer.diagnosis import CnnDiagnoser, Diagnoser
from ..saliency import GradCam

log = logging.getLogger(__name__)

AUDIT_MODES = {
    "intact": None,  # the spec's own lung input
    "lungs blacked out": "lungs_blacked_out",
    "all but the lungs blacked out": "masked",
}


def views_for(
    diagnoser: CnnDiagnoser,
    data_root: str | None = None,
    split: str | None = None,
    limit: int = 0,
    progress: bool = True,
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
    diagnoser: CnnDiagnoser,
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
            shares.extend(lung_shares(m, views["lungs"][start + j]) for j, m in enumerate(maps))
        start += len(x)
    out = {"probs": np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))}
    if features:
        out["features"] = np.concatenate(feats)
    if saliency:
        out["lung_share"] = np.array(shares, float).reshape(-1, 3)
    return out


def audit_cnn(
    spec_path: str | Path | None = None,
    data_root: str | None = None,
    out_dir: str | Path = "eval/audit",
    split: str = "test",
    limit: int = 0,
) -> dict:
    """Shortcut audit of a CNN diagnosis (see the module docstring); writes JSON, Markdown, a plot."""
    diagnoser = Diagnoser.from_spec(spec_path)
    if not isinstance(diagnoser, CnnDiagnoser):
        raise ValueError(f"{diagnoser.spec.name} is not a CNN diagnosis; its audit is `covidcxr audit`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
            "covid_vs_other_in_covid_chestxray": covid_vs_other(*covid_chestxray_only(test, res["probs"])),
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
        "weights": str(spec_path),
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
