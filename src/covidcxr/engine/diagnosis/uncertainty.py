"""``covidcxr evaluate uncertainty``: fit, on the validation split, when a reading says it is unsure.

The rule is docs/experiments/uncertainty.md; :func:`covidcxr.infer.uncertainty.uncertain` applies it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...batch import read_batches
from ...data import load_records
from ...data.classification import classification_samples
from ...data.labels import CLASSES
from ...infer import Predictor
from ...infer.uncertainty import RULES, uncertain_rule
from ...specs import WeightSpec

log = logging.getLogger(__name__)

MIN_ACCURACY, MIN_SHARE = 0.80, 0.10


def read_split(predictor: Predictor, samples: list[dict], batch_size: int = 16) -> dict[str, np.ndarray]:
    """Top probability, correctness, extent and lesion share of every sample's reading."""
    cols: dict[str, list] = {
        k: [] for k in ("top", "correct", "prediction", "extent", "lesion_share", "label", "dataset")
    }
    batches = read_batches([s["path"] for s in samples], batch_size)
    for batch in tqdm(batches, total=-(-len(samples) // batch_size), desc="validation readings", unit="batch"):
        for _, _, err in batch:
            if err is not None:
                log.warning("skipping %s", err)
        good = [(samples[j], im) for j, im, _ in batch if im is not None]
        for (s, _), res in zip(good, predictor.run([im for _, im in good]), strict=True):
            if not res.ok:
                continue
            p = np.array([res.probabilities[c] for c in CLASSES])
            cols["top"].append(float(p.max()))
            cols["correct"].append(int(p.argmax()) == s["label"])
            cols["prediction"].append(res.prediction)
            cols["extent"].append(res.findings["geographic_extent"])
            cols["lesion_share"].append(res.findings["lesion_share"])
            cols["label"].append(s["label"])
            cols["dataset"].append(s["dataset"])
    return {k: np.asarray(v) for k, v in cols.items()}


def fit(readings: dict[str, np.ndarray]) -> dict:
    """The three thresholds of the rule, from validation readings."""
    top, correct = readings["top"], readings["correct"]
    threshold = 1.0
    for q in np.arange(0.0, 1.0, 0.01):
        t = float(np.quantile(top, q))
        above = top >= t
        if above.mean() >= MIN_SHARE and correct[above].mean() >= MIN_ACCURACY:
            threshold = t
            break
    normal = readings["label"] == CLASSES.index("No finding")
    return {
        "min_top_probability": round(threshold, 4),
        "no_finding_max_extent": round(float(np.quantile(readings["extent"][normal], 0.95)), 3),
        "pneumonia_min_extent": round(float(np.quantile(readings["extent"][~normal], 0.05)), 3),
        "fitted_on": f"validation split, {len(top)} readings",
        "rule": "docs/experiments/uncertainty.md",
    }


def evaluate(data_root: str | None, out: str | Path, spec_path: str | Path | None = None) -> dict:
    """Fit the rule on validation, write ``uncertainty.json`` into ``out`` and (optionally) into a diagnosis spec."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples, _ = classification_samples(load_records(data_root), split="val")
    predictor = Predictor.load(diagnosis=str(spec_path) if spec_path else None, use_gate=False, saliency=False)
    readings = read_split(predictor, samples)
    fitted = fit(readings)
    flags = uncertain_share(readings, fitted)
    report = {"thresholds": fitted, "validation": flags}
    (out / "uncertainty.json").write_text(json.dumps(report, indent=2))
    if spec_path:
        spec = WeightSpec.from_json(spec_path)
        spec.uncertainty = fitted
        spec.to_json(spec_path)
    return report


def uncertain_share(readings: dict[str, np.ndarray], fitted: dict) -> dict:
    """How many validation readings each rule marks, and the accuracy of the readings left certain."""
    rules = [
        uncertain_rule(p, t, e, ls, fitted)
        for p, t, e, ls in zip(
            readings["prediction"], readings["top"], readings["extent"], readings["lesion_share"], strict=True
        )
    ]
    flagged = np.array([r is not None for r in rules])
    correct = readings["correct"]
    by_rule = {rule: rules.count(rule) for rule in RULES}
    order = np.argsort(-readings["top"], kind="stable")
    most_confident = {
        f"{share:.0%}": round(float(correct[order[: max(1, int(share * len(order)))]].mean()), 4)
        for share in (0.1, 0.25, 0.5, 1.0)
    }
    return {
        "n": int(len(rules)),
        "accuracy_of_the_most_confident": most_confident,
        "uncertain": int(flagged.sum()),
        "by_rule": {k: int(v) for k, v in by_rule.items()},
        "accuracy_certain": round(float(correct[~flagged].mean()), 4) if (~flagged).any() else None,
        "accuracy_uncertain": round(float(correct[flagged].mean()), 4) if flagged.any() else None,
    }
