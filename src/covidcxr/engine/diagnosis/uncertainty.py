"""``covidcxr evaluate uncertainty``: fit the headline's operating point and the uncertain flag, on validation.

One command, by the rules written before the fit (docs/experiments/operating-point.md and
docs/experiments/uncertainty.md, section of 2026-12-06):

1. read the validation split through the Predictor (gate computed but not applied);
2. choose the P(abnormal) threshold (:func:`covidcxr.engine.diagnosis.operating_point.choose_threshold`);
3. estimate it per source under leave-one-source-out, on the cached stage-2 features;
4. fit the thresholds of every uncertainty reason (:func:`fit`) at that operating point;
5. write both into the diagnosis spec (its weight file and sha256 unchanged) and a report.

:func:`covidcxr.infer.uncertainty.uncertain_reasons` applies the thresholds at inference.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...batch import read_batches
from ...data import load_records
from ...data.classification import classification_samples, first_per_group
from ...data.labels import CLASSES
from ...infer import Predictor
from ...infer.diagnosis import headline
from ...infer.uncertainty import MIN_SIDE, REASONS, Signals, outline_facts, uncertain_reasons
from ...specs import WeightSpec
from .operating_point import (
    COVID_GIVEN_ABNORMAL,
    choose_threshold,
    loso_summary,
    operating_point_spec,
    write_abnormal_calibration,
)

log = logging.getLogger(__name__)

#: The readings left certain must be right this often, and be at least this share of all readings.
MIN_ACCURACY, MIN_SHARE = 0.85, 0.40
#: Outline and gate limits: the low tail of validation of this size (each measure on its own).
TAIL = 0.025
#: The margins tried on |logit P(abnormal) - logit threshold|, smallest first.
MARGINS = np.round(np.arange(0.0, 4.0001, 0.05), 2)
NORMAL = CLASSES.index("No finding")
OUTLINE = ("area", "balance", "base", "height")


def read_split(predictor: Predictor, samples: list[dict], batch_size: int = 16) -> dict[str, np.ndarray]:
    """What the rule reads of every readable sample: probabilities, findings, image size, lung outline, gate.

    Returns:
        Columns (N,) each: ``probs`` (N, 3) over ``CLASSES``, ``label``, ``dataset``, ``extent``,
        ``lesion_share``, ``min_side``, ``gate``, ``facts`` (N, len(FACTS)) and one per :data:`OUTLINE` measure.
    """
    cols: dict[str, list] = {
        k: [] for k in ("probs", "label", "dataset", "extent", "lesion_share", "min_side", "gate", *OUTLINE)
    }
    batches = read_batches([s["path"] for s in samples], batch_size)
    for batch in tqdm(batches, total=-(-len(samples) // batch_size), desc="validation readings", unit="batch"):
        for _, _, err in batch:
            if err is not None:
                log.warning("skipping %s", err)
        good = [(samples[j], im) for j, im, _ in batch if im is not None]
        for (s, im), res in zip(good, predictor.run([im for _, im in good]), strict=True):
            if not res.ok:
                continue
            cols["probs"].append([res.probabilities[c] for c in CLASSES])
            cols["label"].append(s["label"])
            cols["dataset"].append(s["dataset"])
            cols["extent"].append(res.findings["geographic_extent"])
            cols["lesion_share"].append(res.findings["lesion_share"])
            cols["min_side"].append(int(min(im.shape)))
            cols["gate"].append(res.gate_probability)
            for k, v in outline_facts(res.lung_mask).items():
                cols[k].append(v)
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["probs"] = out["probs"].reshape(-1, len(CLASSES)).astype(np.float64)
    return out


def called(readings: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """The headline's class index of every reading at the operating point ``threshold``."""
    op = {"p_abnormal": threshold, "covid_given_abnormal": COVID_GIVEN_ABNORMAL}
    return headline(readings["probs"], CLASSES, op)


def signals(readings: dict[str, np.ndarray], threshold: float) -> list[Signals]:
    """The :class:`Signals` of every reading at the operating point ``threshold``."""
    p_abn = 1.0 - readings["probs"][:, NORMAL]
    disease = called(readings, threshold) != NORMAL
    return [
        Signals(
            p_abnormal=float(p_abn[i]),
            threshold=threshold,
            disease=bool(disease[i]),
            extent=float(readings["extent"][i]),
            lesion_share=float(readings["lesion_share"][i]),
            min_side=int(readings["min_side"][i]),
            outline={k: float(readings[k][i]) for k in OUTLINE},
            gate_probability=float(readings["gate"][i]),
        )
        for i in range(len(p_abn))
    ]


def fit(readings: dict[str, np.ndarray], threshold: float, min_side: int = MIN_SIDE) -> dict:
    """The thresholds of every reason, by the rule of docs/experiments/uncertainty.md (2026-12-06).

    Args:
        readings: :func:`read_split`'s columns of the validation split.
        threshold: the operating point on P(abnormal) the headline uses.
        min_side: low resolution below this shorter side (the diagnosis model's input size).
    """
    normal = readings["label"] == NORMAL
    fixed = {
        "no_finding_max_extent": round(float(np.quantile(readings["extent"][normal], 0.95)), 3),
        "pneumonia_min_extent": round(float(np.quantile(readings["extent"][~normal], 0.05)), 3),
        "min_side": int(min_side),
        "min_gate_probability": round(float(np.quantile(readings["gate"], TAIL)), 4),
        **{f"min_lung_{k}": round(float(np.quantile(readings[k], TAIL)), 4) for k in OUTLINE},
    }
    right = called(readings, threshold) == readings["label"]
    sig = signals(readings, threshold)
    # Every reason but the margin is fixed by now: the margin is the one knob left.
    other = np.array([bool(uncertain_reasons(s, {**fixed, "operating_margin": 0.0})) for s in sig])
    gap = np.abs(_logit(1.0 - readings["probs"][:, NORMAL]) - _logit(np.array([threshold])))
    margin, reached = None, False
    for m in MARGINS:
        certain = ~other & ~(gap < m)
        if certain.mean() < MIN_SHARE:
            break
        margin = float(m)
        if right[certain].mean() >= MIN_ACCURACY:
            reached = True
            break
    return {
        **fixed,
        "operating_margin": margin if margin is not None else 0.0,
        "goal_reached": reached,
        "fitted_on": f"validation split, {len(right)} readings",
        "rule": "docs/experiments/uncertainty.md (2026-12-06)",
    }


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def uncertain_share(readings: dict[str, np.ndarray], fitted: dict, threshold: float) -> dict:
    """How many readings each reason marks, and how often the readings left certain are right.

    "Right" (the rule's measure) is the whole headline: the disease / No finding call and, for a disease
    reading, the class. Beside it, reported and never fitted: ``*_disease_call``, how often the first
    decision alone (disease or No finding) is right, since the second one is near chance.
    """
    reasons = [[r["code"] for r in uncertain_reasons(s, fitted)] for s in signals(readings, threshold)]
    flagged = np.array([bool(r) for r in reasons])
    call = called(readings, threshold)
    right = call == readings["label"]
    right_call = (call != NORMAL) == (readings["label"] != NORMAL)

    def share(hit: np.ndarray, rows: np.ndarray) -> float | None:
        return round(float(hit[rows].mean()), 4) if rows.any() else None

    per_source = {}
    for src in sorted(set(readings["dataset"].tolist())):
        here = readings["dataset"] == src
        per_source[src] = {
            "n": int(here.sum()),
            "uncertain": round(float(flagged[here].mean()), 4),
            "right_certain": share(right, here & ~flagged),
            "right_certain_disease_call": share(right_call, here & ~flagged),
        }
    return {
        "n": int(len(reasons)),
        "right_all": round(float(right.mean()), 4),
        "uncertain": int(flagged.sum()),
        "certain_share": round(float((~flagged).mean()), 4),
        "right_certain": share(right, ~flagged),
        "right_uncertain": share(right, flagged),
        "right_certain_disease_call": share(right_call, ~flagged),
        "right_uncertain_disease_call": share(right_call, flagged),
        "by_reason": {code: int(sum(code in r for r in reasons)) for code in REASONS},
        "per_source": per_source,
    }


def evaluate(
    data_root: str | None,
    out: str | Path,
    spec_path: str | Path | None = None,
    loso: bool = True,
    limit: int = 0,
) -> dict:
    """Fit the operating point and the uncertainty thresholds on validation; LOSO; write them out.

    Writes ``headline.json`` and the validation P(abnormal) reliability per source
    (``calibration_abnormal.png``, ``.md``) into ``out`` and, with ``spec_path``, the spec's ``operating_point`` and
    ``uncertainty`` fields (nothing else of the spec changes). The validation readings are kept in
    ``out`` under a name made of every model's sha256, so a second run on the same chain reads them back.

    Args:
        limit: at most this many validation images per source (a smoke run; 0: all).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples, _ = classification_samples(load_records(data_root), split="val")
    samples = first_per_group(samples, limit, ("dataset",))
    predictor = Predictor.load(diagnosis=str(spec_path) if spec_path else None, use_gate=False, saliency=False)
    spec = predictor.diagnoser.spec
    readings = _cached_readings(predictor, samples, out)
    p_abn = 1.0 - readings["probs"][:, NORMAL]
    chosen = choose_threshold(p_abn, readings["label"], readings["dataset"])
    threshold = chosen["p_abnormal"]
    fitted = fit(readings, threshold, int(min(spec.input_size)))
    report = {
        "operating_point": operating_point_spec(chosen, f"validation split, {chosen['n']} readings"),
        "validation_per_source": chosen["per_source"],
        "uncertainty": fitted,
        "validation": uncertain_share(readings, fitted, threshold),
    }
    report["abnormal_calibration"] = write_abnormal_calibration(
        readings["label"], readings["probs"], readings["dataset"], out, threshold
    )
    if loso:
        report["loso"] = _loso(data_root, spec)
        report["operating_point"]["loso"] = loso_summary(report["loso"])
    (out / "headline.json").write_text(json.dumps(report, indent=2) + "\n")
    if spec_path:
        for path in _specs_of(spec_path):
            written = WeightSpec.from_json(path)
            written.operating_point, written.uncertainty = report["operating_point"], fitted
            written.to_json(path)
            log.info("operating point and uncertainty thresholds written into %s", path)
    return report


def _specs_of(spec_path: str | Path) -> list[Path]:
    """The spec, and the ONNX export's spec beside it (``onnx/<name>.json``) when it was exported from the same weights.

    Both backends then read the same operating point and thresholds.
    """
    spec_path = Path(spec_path)
    spec = WeightSpec.from_json(spec_path)
    onnx = spec_path.parent / "onnx" / spec_path.name
    if onnx.is_file() and WeightSpec.from_json(onnx).training.get("exported_from", {}).get("sha256") == spec.sha256:
        return [spec_path, onnx]
    return [spec_path]


def _cached_readings(predictor: Predictor, samples: list[dict], out: Path) -> dict[str, np.ndarray]:
    """:func:`read_split`, kept in ``out`` as one ``.npz`` per chain of models and sample list."""
    key = hashlib.sha256(
        json.dumps([predictor.models, [s["path"] for s in samples]], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    path = out / f"validation_readings_{key}.npz"
    if path.is_file():
        log.info("validation readings read back from %s", path)
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    readings = read_split(predictor, samples)
    np.savez(path, **readings)
    return readings


def _loso(data_root: str | None, spec: WeightSpec) -> dict:
    """:func:`covidcxr.engine.diagnosis.operating_point.loso_operating_points` for the spec's design and features."""
    from .loso import FEATURE_SETS, stage2_inputs
    from .operating_point import loso_operating_points

    config = spec.training.get("config", {})
    design, feature_set = config.get("design", "within_archive"), config.get("features", "findings")
    samples, features, _ = stage2_inputs(data_root, imagenet_features="imagenet" in FEATURE_SETS[feature_set])
    return loso_operating_points(features, samples, design, feature_set, seed=int(config.get("seed", 0)))
