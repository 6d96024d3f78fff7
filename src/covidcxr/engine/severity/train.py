"""Severity training and evaluation: lesion decoder folds, features, repeated-split evaluation.

The protocol (``covidcxr train severity``; ``covidcxr evaluate severity`` re-reads it):

1. The lesion model (a U-Net with its own MobileNetV2 encoder reading the lungs-only view:
   everything outside the stage-1 lung outline black) is trained on the radiologists'
   ground-glass / consolidation masks (plus lesion-free "No finding" training images), in K
   patient folds. Each image gets lesion maps from the fold model that never saw its
   patient (out of fold), which gives the lesion Dice and feeds the severity features, so
   no severity number leans on a lesion model that saw the image's own lesion mask.
2. Severity features (see :func:`covidcxr.severity.severity_features`) of every scored image.
3. The severity heads (ridge regression) are evaluated on repeated random patient-grouped
   50/50 splits, as Cohen et al. did, beside a predict-the-mean baseline; Brixia against the
   senior rater with the junior rater as the human reference.
4. The shipped lesion model is trained on all annotated images; the shipped heads are fitted
   on all scored images' out-of-fold features.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ... import plots
from ...config import save_config
from ...data.severity import LESIONS, read_lesions
from ...data.splits import SPLIT_VERSION, fold_of
from ...infer import LungSegmenter
from ...infer.zones import columns
from ...io import read_image
from ...models import WeightSpec, save_weights
from ...views import LUNGS_ONLY
from ..common.runs import check_run_folder, export_name, provenance, weights_record
from .data import SeverityConfig, severity_samples
from .lesions import final_or_fold, fold_decoders, lesion_loss, lesion_metrics, lesion_outputs, train_lesion_model
from .scores import (
    evaluate_brixia,
    evaluate_scores,
    fit_heads,
    markdown,
    repeated_splits,
    stacked_brixia,
)

__all__ = [  # the names this module always offered, most of them now defined next door
    "SeverityConfig",
    "evaluate_brixia",
    "evaluate_scores",
    "evaluate_severity",
    "fit_heads",
    "lesion_loss",
    "main",
    "repeated_splits",
    "stacked_brixia",
]

log = logging.getLogger(__name__)

#: Feature groups of the ablation rows (extent and opacity without the Brixia score).
ABLATION = (
    ("lesions",),
    ("lesions", "intensity"),
    ("deep",),
    ("lesions", "intensity", "deep"),
)


def evaluate_severity(
    cfg: SeverityConfig, run: str | Path, out_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """The evaluation protocol (module docstring, steps 1-3); fold decoders in ``run`` are reused.

    Writes ``severity_eval.json``, ``severity_eval.md``, ``severity_scatter.png`` and
    ``lesion_examples.png`` into ``out_dir`` (default ``run``) and ``features.npz`` into ``run``.
    """
    run, out = Path(run), Path(out_dir or run)
    out.mkdir(parents=True, exist_ok=True)
    sets = severity_samples(cfg)
    segmenter = LungSegmenter.from_spec(cfg.lung_weights)
    decoders = fold_decoders(cfg, segmenter, sets, run, progress)
    scored = list({s["filename"]: s for key in ("lesions", "experts", "brixia") for s in sets[key]}.values())
    outputs = lesion_outputs(
        segmenter, decoders, scored, lambda s: fold_of(s["patient_id"], cfg.folds), cfg.threshold, progress
    )
    np.savez(
        run / "features.npz",
        filenames=np.array([s["filename"] for s in scored]),
        image_features=np.stack([outputs[s["filename"]]["image_features"] for s in scored]),
        zone_features=np.stack([outputs[s["filename"]]["zone_features"] for s in scored]),
    )
    result = {
        **({"smoke": True} if cfg.quick else {}),
        "evaluated_weights": {
            "lungs": weights_record(segmenter.spec),
            "lesion_folds": {k: _state_sha256(m) for k, m in decoders.items()},
        },
        "protocol": _protocol(cfg),
        "lesions": lesion_metrics(sets["lesions"], outputs, seed=cfg.seed),
    }
    result["lesions"]["n_images"] = len(sets["lesions"])
    truth, preds = _score_tables(cfg, sets, outputs, result)
    if sets["test_normals"]:
        result["lesions"]["test_no_finding_with_lesions"] = _normals_with_lesions(
            cfg, run, sets, segmenter, decoders, progress
        )
    (out / "severity_eval.json").write_text(json.dumps(result, indent=2))
    (out / "severity_eval.md").write_text(markdown(result))
    _plots(sets, outputs, truth, preds, out)
    return result


def _state_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors (names and float32 bytes, in order): which fold decoder was evaluated."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _protocol(cfg: SeverityConfig) -> dict:
    return {
        "folds": cfg.folds,
        "repeats": cfg.repeats,
        "seed": cfg.seed,
        "split": "random patient-grouped 50/50 splits",
        "lesions": "out-of-fold lesion maps",
        "image_features": list(cfg.image_groups)
        + (
            ["predicted Brixia global (zone ridges fitted without the test half's patients)"]
            if cfg.image_brixia
            else []
        ),
    }


def _score_tables(cfg: SeverityConfig, sets: dict, outputs: dict, result: dict) -> tuple[dict, dict]:
    """``scores``, ``brixia`` and ``ablation`` of ``result``; returns (truth, predictions) for the scatter plot."""
    ex, bx = sets["experts"], sets["brixia"]
    img_cols, zone_cols = columns(cfg.image_groups, zone=False), columns(cfg.zone_groups, zone=True)
    X = np.stack([outputs[s["filename"]]["image_features"] for s in ex])
    targets = {k: np.array([s[k] for s in ex]) for k in ("geographic_extent", "opacity")}
    clip = {"geographic_extent": (0, 8), "opacity": (0, 6)}
    groups = np.array([s["patient_id"] for s in ex])
    Z = np.stack([outputs[s["filename"]]["zone_features"] for s in bx])
    ZB = Z[:, :, zone_cols]
    senior, junior = np.stack([s["senior"] for s in bx]), np.stack([s["junior"] for s in bx])
    bgroups = np.array([s["patient_id"] for s in bx])
    ZE = np.stack([outputs[s["filename"]]["zone_features"] for s in ex])[:, :, zone_cols]
    bnames, enames = [s["filename"] for s in bx], [s["filename"] for s in ex]

    def brixia_column(test: np.ndarray) -> np.ndarray:  # the test half's patients never reach a Brixia ridge
        return stacked_brixia(ZB, senior, bgroups, bnames, ZE, enames, ~np.isin(bgroups, groups[test]))[:, None]

    result["scores"] = evaluate_scores(
        X[:, img_cols], targets, groups, cfg.repeats, cfg.seed, clip, extra=brixia_column if cfg.image_brixia else None
    )
    result["brixia"] = evaluate_brixia(ZB, senior, junior, bgroups, cfg.repeats, cfg.seed)
    result["ablation"] = {}
    for groups_ in ABLATION:
        zg = tuple(g for g in groups_ if g != "deep") + (("zone",) if groups_ != ("deep",) else ())
        s = evaluate_scores(X[:, columns(groups_, zone=False)], targets, groups, cfg.repeats, cfg.seed, clip)
        b = evaluate_brixia(
            Z[:, :, columns(zg + (("deep",) if "deep" in groups_ else ()), zone=True)],
            senior,
            junior,
            bgroups,
            cfg.repeats,
            cfg.seed,
        )
        result["ablation"]["+".join(groups_)] = {k: s[k]["model"]["mae"]["mean"] for k in targets} | {
            "brixia_global": b["model"]["global_mae"]["mean"]
        }
    truth = {
        "geographic_extent": targets["geographic_extent"],
        "opacity": targets["opacity"],
        "brixia_global": senior.sum(1),
    }
    preds = {
        "geographic_extent": result["scores"]["geographic_extent"]["predictions"],
        "opacity": result["scores"]["opacity"]["predictions"],
        "brixia_global": result["brixia"]["predictions"],
    }
    return truth, preds


def _normals_with_lesions(
    cfg: SeverityConfig, run: Path, sets: dict, segmenter: LungSegmenter, decoders: dict, progress: bool
) -> dict:
    """Share of the test split's "No finding" images where the shipped (or fold 0's) decoder finds lesions."""
    normal_out = lesion_outputs(
        segmenter,
        {0: final_or_fold(cfg, run, decoders)},
        sets["test_normals"],
        lambda s: 0,
        cfg.threshold,
        progress,
    )
    found = [
        any(o["lesions"][k].sum() >= 0.01 * max(o["lungs"].sum(), 1) for k in range(len(LESIONS)))
        for o in normal_out.values()
    ]
    return {"rate": float(np.mean(found)), "n": len(found)}


def _plots(sets: dict, outputs: dict, truth: dict, preds: dict, out: Path) -> None:
    plots.severity_scatter(truth, preds, out / "severity_scatter.png")
    plots.lesion_examples(
        [
            (
                read_image(s["path"]),
                read_lesions(s, outputs[s["filename"]]["lungs"].shape),
                outputs[s["filename"]]["lesions"],
                outputs[s["filename"]]["lungs"],
            )
            for s in sets["lesions"][:6]
        ],
        LESIONS,
        out / "lesion_examples.png",
    )


def export_names(cfg: SeverityConfig) -> tuple[str, str]:
    """(lesion decoder, severity heads) names of a run's export (:func:`covidcxr.engine.common.runs.export_name`)."""
    return (
        export_name(cfg.lesion_export_name, "unet_mobilenetv2_lesions", cfg.out_dir, cfg.quick),
        export_name(cfg.export_name, "severity_linear", cfg.out_dir, cfg.quick),
    )


def main(
    cfg: SeverityConfig,
    out_dir: str | Path,
    resume: bool = False,
    export_dir: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Evaluate (steps 1-3), train the shipped lesion decoder and heads (step 4), export both with specs.

    ``command`` is the command line the specs record (default: this process's ``sys.argv``).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(out_dir)
    check_run_folder(run, resume)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    t0 = time.time()
    sets = severity_samples(cfg)
    segmenter = LungSegmenter.from_spec(cfg.lung_weights)
    decoder = train_lesion_model(cfg, segmenter, sets["lesions"] + sets["negatives"], run / "final", progress)
    result = evaluate_severity(cfg, run, run, progress)
    head = _shipped_head(cfg, run, sets)
    config = {
        k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k not in ("data_root", "out_dir")
    }
    common = {
        "split_version": SPLIT_VERSION,
        "config": config,
        **provenance(config, command, cfg.quick),
        "train_minutes": round((time.time() - t0) / 60, 1),
    }
    export = Path(export_dir or run / "export")
    lesion_path = save_weights(decoder, _lesion_spec(cfg, segmenter, sets, result, common), export)
    spec_path = save_weights(head, _head_spec(cfg, segmenter, sets, result, common, head, lesion_path), export)
    log.info("exported %s and %s", lesion_path, spec_path)
    return run


def _shipped_head(cfg: SeverityConfig, run: Path, sets: dict) -> torch.nn.Module:
    """The shipped severity head, fitted on every scored image's out-of-fold features (``run/features.npz``)."""
    feats = np.load(run / "features.npz")
    row = {f: i for i, f in enumerate(feats["filenames"])}
    ex, bx = sets["experts"], sets["brixia"]
    zone_cols = columns(cfg.zone_groups, zone=True)
    Z, senior = feats["zone_features"][[row[s["filename"]] for s in bx]], np.stack([s["senior"] for s in bx])
    brixia_global = stacked_brixia(
        Z[:, :, zone_cols],
        senior,
        np.array([s["patient_id"] for s in bx]),
        [s["filename"] for s in bx],
        feats["zone_features"][[row[s["filename"]] for s in ex]][:, :, zone_cols],
        [s["filename"] for s in ex],
        np.ones(len(bx), bool),
    )
    return fit_heads(
        cfg,
        feats["image_features"][[row[s["filename"]] for s in ex]],
        np.array([[s["geographic_extent"], s["opacity"]] for s in ex]),
        Z,
        senior,
        brixia_global,
    )


def _lesion_spec(cfg: SeverityConfig, segmenter: LungSegmenter, sets: dict, result: dict, common: dict) -> WeightSpec:
    size = tuple(segmenter.size)
    name = export_names(cfg)[0]
    lesion_spec = WeightSpec(
        name=name,
        architecture="unet_mobilenetv2",
        task="lesions",
        targets=list(LESIONS),
        input_size=size,
        normalization=LUNGS_ONLY,
        file=f"{name}.pt",
        resize="stretch, lungs only",
        threshold=cfg.threshold,
        model_kwargs={"decoder_channels": list(cfg.decoder_channels)},
        training={
            **common,
            "lung_weights": segmenter.spec.sha256,  # the lungs its training views were cut out with
            "data": {"annotated_images": len(sets["lesions"]), "lesion_free_images": len(sets["negatives"])},
        },
        metrics={
            "protocol": f"{cfg.folds}-fold patient cross-validation (out of fold)",
            **{k: v for k, v in result["lesions"].items()},
        },
    )
    return lesion_spec


def _head_spec(
    cfg: SeverityConfig,
    segmenter: LungSegmenter,
    sets: dict,
    result: dict,
    common: dict,
    head: torch.nn.Module,
    lesion_path: Path,
) -> WeightSpec:
    size = tuple(segmenter.size)
    ex, bx = sets["experts"], sets["brixia"]
    name = export_names(cfg)[1]
    head_spec = WeightSpec(
        name=name,
        architecture="severity_linear",
        task="severity",
        targets=["geographic_extent", "opacity", "brixia_zone"],
        input_size=size,
        normalization=LUNGS_ONLY,
        file=f"{name}.pt",
        resize="stretch, lungs only",
        dtype="float32",
        model_kwargs={
            "image_groups": list(cfg.image_groups),
            "zone_groups": list(cfg.zone_groups),
            "image_in": head.image_in,
            "zone_in": head.zone.in_features,
            "image_brixia": head.image_brixia,
        },
        training={
            **common,
            "lung_weights": segmenter.spec.sha256,
            "lesion_weights": WeightSpec.from_json(lesion_path).sha256,
            "data": {"expert_scored_images": len(ex), "brixia_scored_images": len(bx)},
            "fit": "sklearn StandardScaler + RidgeCV (leave-one-out alpha) on out-of-fold features of every scored image"
            + (
                "; extent and opacity also on each image's predicted Brixia global score from zone ridges fitted without its patient"
                if cfg.image_brixia
                else ""
            ),
        },
        metrics={
            k: {t: {m: round(v["model"][m]["mean"], 4) for m in v["model"]} for t, v in result[k].items()}
            if k == "scores"
            else None
            for k in ("scores",)
        }
        | {
            "brixia": {
                who: {m: round(v["mean"], 4) for m, v in result["brixia"][who].items()}
                for who in ("model", "junior_rater", "mean_baseline")
            }
        },
    )
    return head_spec
