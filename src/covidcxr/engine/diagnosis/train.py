"""Training of the shipped stage 2: source-blind heads on frozen features (configs/diagnosis.yaml).

Path of the data: every labelled frontal image of the six sources -> stage 1, severity and
finding facts, the frozen ImageNet MobileNetV2 on the masked lung view
(:mod:`covidcxr.engine.diagnosis.features`, cached) -> the design's heads fitted on the train
split (:mod:`covidcxr.engine.diagnosis.heads`) -> one :class:`covidcxr.models.source_blind.SourceBlindHeads`
with the heads folded into its linear layer -> checked against the heads on training
images -> leave-one-source-out table, internal test split, shortcut audit -> weights + spec.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ...data.labels import CLASSES
from ...data.splits import SPLIT_VERSION
from ...infer.findings import FACTS
from ...io import NORMALIZATION
from ...models import WeightSpec, create_model, save_weights
from ...models.pretrained import IMAGENET_MOBILENET_V2_SHA256, load_imagenet, parse_init
from ...models.source_blind import fold_head
from . import loso
from .features import MARGIN, VIEW_SIZE
from .heads import Pooled, WithinSource, WithinSourcePrior, make_design

log = logging.getLogger(__name__)

#: Designs whose heads fold into the shipped :class:`~covidcxr.models.source_blind.SourceBlindHeads`.
SHIPPABLE = ("pooled", "within_source", "within_archive", "within_source_prior")


@dataclass
class HeadsConfig:
    """Source-blind stage-2 settings (configs/diagnosis.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/diagnosis"
    design: str = "within_archive"  # within_archive | within_source | pooled (engine/heads.py; the others: LOSO only)
    features: str = "imagenet+findings"  # engine/loso.py FEATURE_SETS
    init: str | None = None  # imagenet-file:PATH[@SHA256]; None: ../shared/pretrained beside the data
    seed: int = 0
    loso: bool = True  # also write the leave-one-source-out table of this design
    export_name: str = ""  # "": source_blind_heads-<run folder name> (configs/diagnosis.yaml: the shipped name)
    limit: int = 0  # >0: at most this many images per source, split and class (smoke runs); features of those only
    n_resamples: int = 1000  # bootstrap resamples of every CI (internal test, LOSO)
    quick: bool = False  # a smoke run (--quick): every file it writes says so; the exported name ends in -quick

    #: ``--quick``: two images per source, split and class (about 70 images in all).
    QUICK: ClassVar[dict] = {"limit": 2, "n_resamples": 50}


#: The exported model's architecture (the prefix of its default name).
MODEL = "source_blind_heads"


def build_model(fitted, feature_set: str, init: str) -> torch.nn.Module:
    """A :class:`SourceBlindHeads` carrying ``fitted`` heads and the ImageNet backbone of ``init``."""
    image = "imagenet" in loso.FEATURE_SETS[feature_set]
    n_facts = len(FACTS) if loso.has_facts(feature_set) else 0
    if set(loso.FEATURE_SETS[feature_set]) - {"imagenet", "findings"}:
        raise ValueError(f"feature set {feature_set!r}: the shipped model reads imagenet and/or findings features")
    factorised = isinstance(fitted, WithinSource)  # within_archive too
    prior = isinstance(fitted, WithinSourcePrior)
    if factorised and fitted.covid is None:
        raise ValueError("within_archive without covid-chestxray in training has no learned COVID-19 head to fold")
    head = "factorised" if factorised else "factorised_prior" if prior else "multinomial"
    model = create_model(
        "source_blind_heads",
        in_chans=1,
        num_classes=len(CLASSES),
        n_facts=n_facts,
        image=image,
        head=head,
        prior_columns=tuple(FACTS.index(f) for f in ("peripheral", "lower_zone", "bilateral")) if prior else (),
    )
    if image:
        load_imagenet(model.backbone, *parse_init(init))
    with torch.no_grad():
        if factorised or prior:
            mean, scale = (
                torch.from_numpy(np.asarray(a, np.float64)) for a in (fitted.scaler.mean_, fitted.scaler.scale_)
            )
            heads = (fitted.abnormal,) if prior else (fitted.abnormal, fitted.covid)
            rows = [fold_head(torch.from_numpy(h.coef_), mean, scale, h.a_, h.b_) for h in heads]
        elif type(fitted) is Pooled:
            mean, scale = (
                torch.from_numpy(np.asarray(a, np.float64)) for a in (fitted.scaler.mean_, fitted.scaler.scale_)
            )
            rows = [
                fold_head(torch.from_numpy(fitted.lr.coef_[k]), mean, scale, 1.0, float(fitted.lr.intercept_[k]))
                for k in range(len(CLASSES))
            ]
        else:
            raise ValueError(
                f"{type(fitted).__name__}: only within_archive, within_source(_prior) and pooled heads fold into the shipped model"
            )
        model.linear.weight.copy_(torch.stack([w for w, _ in rows]).float())
        model.linear.bias.copy_(torch.stack([b for _, b in rows]).float())
    return model.eval()


def train_heads(cfg: HeadsConfig, export_dir: str | Path | None = None, command: str | None = None) -> dict:
    """Fit, check, evaluate and export the source-blind stage 2; returns the summary.

    ``command`` is the command line the spec records (default: this process's ``sys.argv``).
    """
    if cfg.design not in SHIPPABLE:
        raise ValueError(
            f"design {cfg.design!r} is compared under LOSO only (covidcxr evaluate diagnosis --protocol loso); "
            f"the shipped model folds {' or '.join(SHIPPABLE)} heads"
        )
    start = time.time()
    run = Path(cfg.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    init = cfg.init or loso.default_imagenet_init()
    (run / "config.json").write_text(json.dumps({**asdict(cfg), "init": init}, indent=2) + "\n")
    samples, features, blacked = loso.stage2_inputs(
        cfg.data_root,
        init,
        blackout_split="test",
        limit=cfg.limit,
        limit_keys=("dataset", "split", "label"),
        # a design without image features computes none (the audit of its weights reads the same cache)
        imagenet_features="imagenet" in loso.FEATURE_SETS[cfg.features],
    )
    rows = loso.sample_rows(features, samples)
    labels, sources, splits = (np.array([s[k] for s in rows]) for k in ("label", "dataset", "split"))
    x = loso.feature_matrix(features, cfg.features)
    train = splits == "train"
    fitted = make_design(cfg.design, loso.has_facts(cfg.features)).fit(
        x[train], labels[train], sources[train], seed=cfg.seed
    )
    model = build_model(fitted, cfg.features, init)
    parity = check_parity(model, fitted, x, features)
    log.info("model vs heads on %d images: max |dp| %.2e", parity["n"], parity["max_abs_diff"])
    summary = {
        **({"smoke": True} if cfg.quick else {}),
        "config": asdict(cfg),
        "parity": parity,
        "train": {src: int(((sources == src) & train).sum()) for src in np.unique(sources)},
    }
    test = splits == "test"
    probs = fitted.predict_proba(x)
    summary["internal_test"] = internal_test(probs[test], labels[test], sources[test], cfg.n_resamples)
    if blacked is not None:
        summary["audit"] = audit_features(fitted, cfg.features, features, blacked, rows, probs)
    if cfg.loso:
        summary["loso"] = loso.run_loso(
            features,
            samples,
            {f"{cfg.design} / {cfg.features}": (cfg.design, cfg.features)},
            n_resamples=cfg.n_resamples,
        )
        loso.write(summary["loso"], run / "loso")
    spec = _spec(cfg, model, init, summary, int(train.sum()), start, command)
    spec_path = save_weights(model, spec, export_dir or run / "export")
    summary["spec"] = str(spec_path)
    summary["seconds"] = round(time.time() - start, 1)
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _spec(
    cfg: HeadsConfig,
    model: torch.nn.Module,
    init: str,
    summary: dict,
    train_samples: int,
    start: float,
    command: str | None = None,
) -> WeightSpec:
    """The exported model's weights spec."""
    from ...models.weights import shipped_spec_path
    from ..common.runs import export_name, provenance

    name = export_name(cfg.export_name, MODEL, cfg.out_dir, cfg.quick)
    config = {**asdict(cfg), "init": init}

    # The stage-1 and severity weights stage2_inputs read (the shipped ones): their specs name them.
    lungs, lesions, severity = (WeightSpec.from_json(shipped_spec_path(k)) for k in ("lungs", "lesions", "severity"))
    spec = WeightSpec(
        name=name,
        architecture=MODEL,
        task="diagnosis",
        targets=list(CLASSES),
        input_size=(VIEW_SIZE, VIEW_SIZE),
        normalization=NORMALIZATION,
        file=f"{name}.pt",
        in_chans=1,
        model_kwargs={
            "n_facts": model.n_facts,
            "image": model.backbone is not None,
            "head": model.head_kind,
            **({"prior_columns": list(model.prior_columns)} if model.prior_columns else {}),
        },
        resize="lung-box",
        dtype="float16",
        lung_input="masked",
        margin=MARGIN,
        temperature=1.0,
        lung_weights=lungs.sha256,
        training={
            **provenance(config, command, cfg.quick),
            "config": config,
            "initial_weights": (
                {
                    "file": Path(parse_init(init)[0]).name,
                    "sha256": parse_init(init)[1] or IMAGENET_MOBILENET_V2_SHA256,
                    "licence": "Apache-2.0 (TensorFlow-slim MobileNetV2, ImageNet)",
                }
                if model.backbone is not None
                else None
            ),
            "lesion_weights": lesions.sha256,
            "severity_weights": severity.sha256,
            "facts": list(FACTS),
            "data": {"split_version": SPLIT_VERSION, "train_samples": train_samples, "per_source": summary["train"]},
            "research_use": "trained on covid19-radiography images (BIMCV-COVID19+ research use agreement): research use only",
            "seconds": round(time.time() - start, 1),
        },
        metrics={
            "internal_test": _headline(summary["internal_test"]),
            **(
                {
                    "loso": {
                        k: round(v["value"], 4)
                        for k, v in next(iter(summary["loso"].values())).items()
                        if isinstance(v, dict)
                    }
                }
                if cfg.loso
                else {}
            ),
        },
    )
    return spec


def heads_probabilities(model: torch.nn.Module, features: dict, rows: np.ndarray | None = None) -> np.ndarray:
    """The exported model's probabilities (N, 3) from cached features (:meth:`SourceBlindHeads.from_features`)."""
    idx = np.arange(len(features["names"])) if rows is None else rows
    pooled = (
        torch.from_numpy(np.asarray(features["imagenet"][idx], np.float32))
        if model.backbone is not None
        else torch.zeros(len(idx), 0)
    )
    facts = (
        torch.from_numpy(np.asarray(features["findings"][idx], np.float32))
        if model.n_facts
        else torch.zeros(len(idx), 0)
    )
    with torch.no_grad():
        return torch.softmax(model.from_features(pooled, facts), dim=1).numpy()


def check_parity(model: torch.nn.Module, fitted, x: np.ndarray, features: dict, n: int = 64) -> dict:
    """The exported model's probabilities from cached features vs the fitted heads' (float32 folding)."""
    idx = np.linspace(0, len(x) - 1, min(n, len(x))).astype(int)
    diff = float(np.abs(heads_probabilities(model, features, idx) - fitted.predict_proba(x[idx])).max())
    if diff > 1e-3:
        raise RuntimeError(f"folded model and fitted heads disagree by {diff:.2e} on cached features")
    return {"n": len(idx), "max_abs_diff": diff}


def internal_test(probs: np.ndarray, labels: np.ndarray, sources: np.ndarray, n_resamples: int = 1000) -> dict:
    """Pooled macro AUROC (with CI) and per-source comparisons of the internal test split."""
    from sklearn.metrics import roc_auc_score

    from ...metrics import class_stratified_bootstrap_ci
    from .metrics import summarize

    def macro(y, p):
        return float(np.mean([roc_auc_score(y == c, p[:, c]) for c in np.unique(y)]))

    out = {
        "pooled": summarize(labels, probs, n_resamples),
        "macro_auroc_ci": class_stratified_bootstrap_ci(labels, probs, macro, n_resamples=n_resamples),
    }
    for src in np.unique(sources):
        m = sources == src
        out[src] = (
            summarize(labels[m], probs[m], n_resamples)
            if len(np.unique(labels[m])) > 1
            else {
                "n": int(m.sum()),
                "predicted": {c: int((probs[m].argmax(1) == k).sum()) for k, c in enumerate(CLASSES)},
            }
        )
    return out


def _headline(internal: dict) -> dict:
    macro = internal["macro_auroc_ci"]
    return {
        "macro_auroc": round(macro["value"], 4),
        "ci": [round(macro["ci_low"], 4), round(macro["ci_high"], 4)],
        "n": macro["n"],
    }


def audit_features(
    fitted, feature_set: str, features: dict, blacked: dict, rows: list[dict], probs: np.ndarray
) -> dict:
    """Lungs blacked out vs intact on the test split, and the source probe over all six sources."""
    from sklearn.metrics import roc_auc_score

    from .metrics import source_probe

    index = {str(n): i for i, n in enumerate(features["names"])}
    test_rows = [index[str(n)] for n in blacked["names"]]
    labels = np.array([rows[i]["label"] for i in test_rows])
    covid = labels == CLASSES.index("COVID-19")
    p_black = fitted.predict_proba(loso.feature_matrix(blacked, feature_set))
    out = {
        "n": len(test_rows),
        "covid_auroc_intact": float(roc_auc_score(covid, probs[test_rows, 0])),
        "covid_auroc_lungs_blacked_out": float(roc_auc_score(covid, p_black[:, 0])),
    }
    sources = np.array([r["dataset"] for r in rows])
    splits = np.array([r["split"] for r in rows])
    reps = {
        "decision (head scores)": np.log(np.clip(probs, 1e-9, 1)),
        "finding facts": np.asarray(features["findings"]),
        f"image features ({feature_set})": loso.feature_matrix(features, feature_set),
    }
    out["source_probe"] = {
        name: source_probe(
            r[splits == "train"], list(sources[splits == "train"]), r[splits == "test"], list(sources[splits == "test"])
        )
        for name, r in reps.items()
    }
    return out
