"""Fitting and evaluating the input gate: ``covidcxr train gate`` and ``covidcxr evaluate gate``.

The gate (:mod:`covidcxr.infer.gate`) is a logistic regression on stage-1 features and mask geometry,
an intensity check and a reason head, all fitted with scikit-learn in one pass over cached
examples (:mod:`covidcxr.engine.gate.data`): no epochs, so no training loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...infer.gate import INTENSITY_FACTS, INTENSITY_PERCENTILE, decide, intensity_distance, kind_inputs
from .data import AUGMENTED_PER_SOURCE, MAX_FRONTAL_PER_SOURCE, cached, concat, gate_data, split_data, subset
from .images import HOSPITAL_MARKS
from .report import rate_with_ci, refusal_rates, refused_list, source_totals, write_report

__all__ = [
    "KIND_LABELS",
    "cached",
    "evaluate_gate",
    "fit_all",
    "fit_intensity_check",
    "score",
    "train_gate",
]

KIND_LABELS = ("frontal", "lateral", "CT", "other")
#: The gate's exported name (no config: the shipped recipe; ``-quick`` appended for a smoke run).
GATE_NAME = "frontal_cxr_gate"
#: ``covidcxr train gate --quick``: images of each kind per source and split.
QUICK_LIMIT = 6


def balanced_logistic(x: np.ndarray, y: np.ndarray, C: float):
    """(mean, scale, fitted classifier): class-balanced logistic regression on ``x`` standardised by its own mean and spread.

    The one fitting recipe of the gate's two linear parts (the gate and the reason head);
    ``mean`` and ``scale`` are stored with each so inference standardises alike.
    """
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    return mean, scale, LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x - mean) / scale, y)


def fit_intensity_check(facts: np.ndarray, percentile: float = INTENSITY_PERCENTILE) -> dict:
    """Mean, precision (Ledoit-Wolf) and limit (``percentile`` of their own distances) of frontal X-rays' facts (N, 10)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(facts)
    check = {
        "facts": list(INTENSITY_FACTS),
        "mean": lw.location_.tolist(),
        "precision": lw.precision_.tolist(),
        "percentile": percentile,
    }
    check["limit"] = float(np.percentile(intensity_distance(facts, check), percentile))
    return check


def fit_gate(x: np.ndarray, y: np.ndarray, C: float = 0.05):
    """The gate model: class-balanced logistic regression on standardised features, as a FrontalGate."""
    import torch

    from ...models import create_model

    mean, scale, clf = balanced_logistic(x, y, C)
    gate = create_model("frontal_gate", in_features=x.shape[1])
    with torch.no_grad():
        gate.mean.copy_(torch.from_numpy(mean))
        gate.scale.copy_(torch.from_numpy(scale))
        gate.linear.weight.copy_(torch.from_numpy(clf.coef_).float())
        gate.linear.bias.copy_(torch.from_numpy(clf.intercept_).float())
    return gate


def gate_probability(gate, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.sigmoid(gate(torch.from_numpy(np.asarray(x, np.float32)))).numpy()


def fit_threshold(p_frontal_val: np.ndarray, max_false_refusal: float = 0.01) -> float:
    """The highest threshold (at most 0.5) that refuses no more than ``max_false_refusal`` of frontal validation images."""
    p = np.sort(p_frontal_val)
    return float(min(0.5, p[int(np.floor(max_false_refusal * len(p)))])) if len(p) else 0.5


def fit_kind_head(p: np.ndarray, data: dict) -> dict:
    """The reason head: class-balanced multinomial logistic regression (frontal / lateral / CT / other) on :func:`kind_inputs`."""
    kinds = np.array(data["kind"])
    label = np.where(data["y"] == 1, "frontal", np.where(np.isin(kinds, ["lateral", "CT"]), kinds, "other"))
    z = kind_inputs(p, data["x"][:, -3:], data["facts"])
    mean, scale, clf = balanced_logistic(z, label, 1.0)
    order = [list(clf.classes_).index(k) for k in KIND_LABELS]
    return {
        "labels": list(KIND_LABELS),
        "inputs": ["gate logit", "lung share", "left/right balance", "aspect", *INTENSITY_FACTS],
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": clf.coef_[order].tolist(),
        "intercept": clf.intercept_[order].tolist(),
    }


class ThresholdSpec:  # the two fields :func:`decide` reads, before the WeightSpec exists
    def __init__(self, threshold: float, intensity_check: dict) -> None:
        self.threshold, self.intensity_check = threshold, intensity_check


def fit_all(
    data: dict[str, dict],
    C: float = 0.2,
    augmented: bool = True,
    percentile: float = INTENSITY_PERCENTILE,
    max_false_refusal: float = 0.01,
):
    """(gate, threshold, intensity check with its reason head) from cached examples; validation sets the threshold only.

    The intensity check is fitted on the unaltered frontal training films; the gate and the
    reason head on the train split (and its augmented frontal copies when ``augmented``).
    """
    train = concat(data["train"], data["train_augmented"]) if augmented and "train_augmented" in data else data["train"]
    gate = fit_gate(train["x"], train["y"], C)
    threshold = fit_threshold(gate_probability(gate, data["val"]["x"][data["val"]["y"] == 1]), max_false_refusal)
    check = fit_intensity_check(data["train"]["facts"][data["train"]["y"] == 1], percentile)
    check["kinds"] = fit_kind_head(gate_probability(gate, train["x"]), train)
    return gate, threshold, check


def decisions(gate, spec, d: dict) -> list:
    """The gate's decisions (:func:`covidcxr.infer.gate.decide`) on cached examples (``d``: x = features + geometry, facts)."""
    return decide(gate_probability(gate, d["x"]), d["x"][:, -3:], d["facts"], spec)


def score(gate, spec, data: dict[str, dict]) -> tuple[dict, list[dict]]:
    """Refusal rates per split (:func:`refusal_rates`) and the list of wrong decisions (:func:`refused_list`)."""
    results, wrong = {}, []
    for s, d in data.items():
        dec = decisions(gate, spec, d)
        results[s] = refusal_rates(dec, d["y"], d["kind"])
        wrong += refused_list(d, dec, s)
    return results, wrong


def out_of_fold(data: dict[str, dict], records: list[dict], source: str = "hannover", folds: int = 5, **fit_kw) -> dict:
    """Refusals of one source's frontal training films by gates refitted without their patients (patient-grouped folds).

    Each fold drops every training example (augmented copies and other folders included) of
    its patients, refits gate, threshold and intensity check (:func:`fit_all`) and scores the
    fold's films: an estimate of how the gate treats that source's films it was not trained on.
    """
    patient = {str(r["path"]): r["patient_id"] for r in records}
    pid = lambda name: patient.get(str(name).split("#")[0])  # noqa: E731
    train = data["train"]
    mine = np.array([k == f"{source}:frontal" for k in train["kind"]])
    patients = sorted({pid(n) for n, m in zip(train["name"], mine) if m})
    fold_of = {p: i % folds for i, p in enumerate(np.random.default_rng(0).permutation(patients))}
    refused = np.zeros(int(mine.sum()), bool)
    where = np.flatnonzero(mine)
    for f in range(folds):
        held = lambda d, f=f: np.array([fold_of.get(pid(n), -1) == f for n in d["name"]], bool)  # noqa: E731
        fold = {
            s: (subset(d, ~held(d)) if s.startswith("train") else d)
            for s, d in data.items()
            if s.startswith("train") or s == "val"
        }
        gate, threshold, check = fit_all(fold, **fit_kw)
        test = held(train) & mine
        d = subset(train, test)
        dec = decisions(gate, ThresholdSpec(threshold, check), d)
        refused[np.isin(where, np.flatnonzero(test))] = [not x.accepted for x in dec]
    return {"source": source, "folds": folds, "patients": len(patients), **rate_with_ci(refused)}


def _test_metrics(results: dict, totals: dict, oof: dict) -> dict:
    """The headline refusal rates a gate spec records: test split, every split per source, out of fold."""
    return {
        "split": "test",
        "false_refusal_frontal": round(results["test"]["false_refusal_frontal"], 4),
        "refusal_lateral_ct": round(results["test"]["refusal_lateral_ct"], 4),
        "refusal_non_xray": round(results["test"]["refusal_non_xray"], 4),
        "n_frontal": results["test"]["n_frontal"],
        "n_lateral_ct": results["test"]["n_lateral_ct"],
        "frontal_refused_per_source": {
            k.split(":")[0]: round(r["rate"], 4)
            for k, r in results["test"]["per_kind"].items()
            if k.endswith(":frontal")
        },
        "frontal_refused_all_splits": {src: round(r["rate"], 4) for src, r in totals.items()},
        "hannover_train_out_of_fold": round(oof["rate"], 4),
    }


def _gate_spec(
    name: str, segmenter, data: dict, threshold: float, check: dict, settings: dict, command: str | None, metrics: dict
):
    """The exported gate's weights spec (``settings``: the arguments of :func:`train_gate`)."""
    from ...data.splits import SPLIT_VERSION
    from ...io import NORMALIZATION
    from ...models import WeightSpec
    from ..common.runs import provenance

    C, augmented = settings["C"], settings["augmented"]
    max_false_refusal, percentile = settings["max_false_refusal"], settings["percentile"]
    sizes = {s: {"n": len(d["y"]), "positives": int(d["y"].sum())} for s, d in data.items()}
    return WeightSpec(
        name=name,
        architecture="frontal_gate",
        task="gate",
        targets=["frontal chest X-ray"],
        input_size=tuple(segmenter.spec.input_size),
        normalization=NORMALIZATION,
        file=f"{name}.pt",
        resize="stage-1 encoder features",
        threshold=round(threshold, 4),
        dtype="float32",
        model_kwargs={"in_features": int(data["train"]["x"].shape[1])},
        lung_weights=segmenter.spec.sha256,
        intensity_check=check,
        training={
            **provenance(settings, command, settings["quick"]),
            "config": settings,
            "data": {
                "split_version": SPLIT_VERSION,
                "max_frontal_per_source": MAX_FRONTAL_PER_SOURCE,
                "augmented_per_source": AUGMENTED_PER_SOURCE if augmented else {},
                **sizes,
            },
            "augmentation": f"augment_frontal copies of frontal training films: {', '.join(settings['marks'])} (each p = 0.5)"
            if augmented
            else "none",
            "classifier": f"sklearn LogisticRegression(C={C}, class_weight='balanced') on standardised features",
            "threshold_rule": f"highest threshold <= 0.5 refusing at most {max_false_refusal:.0%} of frontal validation images",
            "intensity_rule": f"refuse when the intensity-facts distance exceeds its {percentile} percentile over frontal training images",
            "reason_head": "intensity_check.kinds: multinomial logistic regression (frontal / lateral / CT / other) on the gate logit, mask geometry and intensity facts; words refusals only",
        },
        metrics=metrics,
    )


def train_gate(
    data_root: str | None = None,
    out_dir: str = "runs/gate",
    export_dir: str | None = None,
    max_false_refusal: float = 0.01,
    C: float = 0.2,
    augmented: bool = True,
    percentile: float = INTENSITY_PERCENTILE,
    limit: int = 0,
    quick: bool = False,
    command: str | None = None,
) -> dict:
    """Fit the gate on the train split (all sources, with augmented frontal copies), pick its threshold on validation, measure it on test, export it.

    ``limit``: at most that many images of each kind per source and split (smoke runs, with
    ``quick``: the spec and gate_eval.json say ``smoke``); ``command``: the command line the spec records.
    """
    from ...data import load_records
    from ...data.splits import SPLIT_VERSION
    from ...infer import LungSegmenter
    from ...models import save_weights
    from ..common.runs import export_name, weights_record

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data_root)
    segmenter = LungSegmenter.from_spec()
    data = gate_data(records, segmenter, out, augmented=augmented, limit=limit)
    fit_kw = {
        "C": C,
        "augmented": augmented,
        "percentile": percentile,
        "max_false_refusal": max_false_refusal,
    }
    gate, threshold, check = fit_all(data, **fit_kw)
    results, wrong = score(gate, ThresholdSpec(threshold, check), data)
    totals = source_totals(results)
    oof = out_of_fold(data, records, "hannover", **fit_kw)
    settings = {
        "max_false_refusal": max_false_refusal,
        "C": C,
        "augmented": augmented,
        "percentile": percentile,
        "marks": list(HOSPITAL_MARKS),
        "limit": limit,
        "quick": quick,
    }
    name = export_name(GATE_NAME, GATE_NAME, out, quick)
    spec = _gate_spec(name, segmenter, data, threshold, check, settings, command, _test_metrics(results, totals, oof))
    spec_path = save_weights(gate, spec, export_dir or out / "export")
    write_report(
        out,
        results,
        wrong,
        {
            "threshold": threshold,
            "evaluated_weights": weights_record(spec, spec_path),
            **({"smoke": True} if quick else {}),
            "all_splits": totals,
            "out_of_fold": oof,
            "spec": str(spec_path),
        },
        "Input gate, split " + SPLIT_VERSION,
    )
    return {"spec": str(spec_path), "threshold": threshold, "results": results, "all_splits": totals}


def evaluate_gate(
    spec_path: str | None = None,
    data_root: str | None = None,
    splits=("test",),
    sources: list[str] | None = None,
    out_dir: str = "eval/gate",
) -> dict:
    """Refusals of a gate spec (default: shipped) per source and split, with CIs, table and contact sheet in ``out_dir``.

    Features are recomputed from the images (nothing cached); ``sources`` keeps only those
    folders' films (and leaves out photographs and synthetic images).
    """
    from ...data import load_records
    from ...infer import LungSegmenter
    from ...models import load_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gate, spec = load_weights(spec_path, kind="gate")
    records = load_records(data_root)
    if sources:
        unknown = set(sources) - {r["dataset"] for r in records}
        if unknown:
            raise ValueError(f"unknown source(s) {sorted(unknown)}; known: {sorted({r['dataset'] for r in records})}")
        records = [r for r in records if r["dataset"] in sources]
    segmenter = LungSegmenter.from_spec()
    data = {s: split_data(records, s, segmenter, negatives=not sources) for s in splits}
    results, wrong = score(gate, spec, data)
    totals = source_totals(results, splits)
    write_report(
        out,
        results,
        wrong,
        {
            "threshold": spec.threshold,
            "gate_sha256": spec.sha256,
            "evaluated_weights": {"name": spec.name, "sha256": spec.sha256},
            "all_splits": totals,
        },
        f"Input gate {spec.sha256[:12]}",
    )
    return {"results": results, "all_splits": totals, "out": str(out)}
