"""Training of the diagnosis classifier (stage 2) on stage-1 lung views.

Path of the data: frontal, labelled X-rays (``classification_samples``) -> stage-1 lung
masks (cached per lung-model sha256) -> lung views at the input size (``lung_view``, then
the configured X-ray enhancement; kept in memory as uint8 and on disk as one ``.npz`` per
setting) -> augmentation -> view mode (crop or masked) -> normalization -> classifier.

Sampling is balanced over classes and, inside each class, over sources: every class is
drawn equally often, and the sources that hold a class share its draws equally. Without
the second part, "Other pneumonia" would be mostly archive images and "COVID-19" only
publication figures, and the source alone would separate them.

A run folder holds the config, a checkpoint after every epoch (``--resume``), metrics.json
and a learning curve. Early stopping watches the validation macro AUROC; a temperature is
fitted on the validation logits of the best epoch and exported in the weights spec.

Under ``torchrun --nproc_per_node N`` (see :mod:`covidcxr.engine.common.distributed`) every
process draws the same weighted indices for an epoch and trains on every N-th of them
with ``batch_size`` images per step (effective batch ``batch_size x N``, an epoch stays
one pass's worth of draws); rank 0 fills the view cache, validates, fits the temperature
and writes the run folder, and sends its validation numbers to the others so that early
stopping ends every process at the same epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import load_records
from ..data.classification import CLASSES, DiagnosisDataset, classification_samples
from ..data.splits import SPLIT_VERSION, fold_of
from ..data.transforms import diagnosis_augment
from ..engine.common import distributed
from ..engine.common.loop import Loop
from ..engine.common.runs import device as device_of
from ..engine.common.runs import epoch_seed, export_name, provenance, rank_seed, start_run
from ..engine.diagnosis.views import SAMPLINGS, prepare_views, sample_weights, views_cache_dir
from ..io import NORMALIZATION
from ..io.enhance import check_enhancement
from ..models import WeightSpec, save_weights
from .cnn_model import (
    DiagTrainConfig,
    build_model,
    fit_temperature,
    load_matching,
    macro_auroc,
    predict_logits,
    temperature_at_bound,
    train_epoch,
    validate,
)

__all__ = [  # the names this module always offered, some of them now defined next door
    "SAMPLINGS",
    "DiagTrainConfig",
    "build_model",
    "fit",
    "fit_temperature",
    "fold_of",
    "load_matching",
    "load_views",
    "macro_auroc",
    "main",
    "predict_logits",
    "prepare_views",
    "sample_weights",
    "views_cache_dir",
]

log = logging.getLogger(__name__)


def fit(
    cfg: DiagTrainConfig, train: dict, val: dict, run: Path, resume: bool = False, device: torch.device | None = None
) -> dict:
    """Train on ``train`` views, early-stop on ``val``; returns the best state and its history.

    Under torchrun every process calls it; ``state`` and ``model`` are the best ones on
    rank 0 only, the other entries are the same on every rank.

    Returns:
        dict with ``state`` (best weights), ``best_epoch``, ``val_auroc``, ``history``,
        ``temperature`` (fitted on the best model's validation logits), ``model``.
    """
    device = device or device_of(cfg.device)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg).to(device, memory_format=torch.channels_last)
    train_ds = DiagnosisDataset(
        train["images"], train["lungs"], train["labels"], cfg.lung_input, transform=diagnosis_augment()
    )
    val_ds = DiagnosisDataset(val["images"], val["lungs"], val["labels"], cfg.lung_input)
    weights = sample_weights(train["labels"], [s["dataset"] for s in train["samples"]], cfg.sampling)
    steps_per_epoch = max(1, len(train_ds) // (cfg.batch_size * distributed.world_size()))
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    loop = Loop(
        run,
        net,
        optimizer,
        scheduler,
        cfg.epochs,
        device,
        metric="val_auroc",
        best_key="auroc",
        patience=cfg.patience,
        config=asdict(cfg),
    ).load(resume)
    model = distributed.wrap(net, device)

    def step(epoch: int) -> dict:
        torch.manual_seed(
            rank_seed(cfg.seed, epoch)
        )  # a resumed run repeats the epoch; augmentation differs between ranks
        # The same weighted draw on every rank; each trains on its every-N-th share.
        indices = distributed.weighted_shard(weights, steps_per_epoch * cfg.batch_size, epoch_seed(cfg.seed, epoch))
        loader = DataLoader(
            train_ds, batch_size=cfg.batch_size, sampler=indices, num_workers=cfg.workers, drop_last=True
        )
        return train_epoch(model, loader, optimizer, scheduler, cfg, epoch, device, net)

    loop.run_epochs(step, lambda: validate(net, val_ds, val["labels"], cfg, device))
    best, temperature = loop.best, None
    if distributed.is_main():
        if best["state"] is None:
            raise RuntimeError(
                "the validation macro AUROC was undefined in every epoch (the validation set holds one class); use more data (limit) or fewer folds"
            )
        net.load_state_dict(best["state"])
        temperature = fit_temperature(predict_logits(net, val_ds, amp=cfg.amp, device=device), val["labels"])
        log.info("best epoch %d (val macro AUROC %.4f); temperature %.3f", best["epoch"], best["auroc"], temperature)
    temperature = distributed.broadcast(temperature)
    return {
        "state": best["state"],
        "best_epoch": best["epoch"],
        "val_auroc": best["auroc"],
        "history": loop.history,
        "temperature": temperature,
        "temperature_at_bound": temperature_at_bound(temperature),
        "model": net.cpu(),
    }


def _subset(views: dict, idx: np.ndarray) -> dict:
    return {
        "images": views["images"][idx],
        "lungs": views["lungs"][idx],
        "labels": views["labels"][idx],
        "samples": [views["samples"][i] for i in idx],
        "lung_fraction": views["lung_fraction"][idx],
    }


def limited_samples(cfg: DiagTrainConfig, samples: list[dict]) -> list[dict]:
    """The samples a run with ``cfg.limit`` trains and validates on, chosen before any mask or view is made.

    The same choice as the run makes on the views (:func:`_train`, :func:`_cross_validate`):
    ``limit`` training and ``max(limit // 2, 6)`` validation samples, at random (seed) for one
    model, the first ones of each fold for cross-validation; the test split is left out.
    """
    if not cfg.limit:
        return samples
    splits = np.array([s["split"] for s in samples])
    n_val = max(cfg.limit // 2, 6)
    if cfg.folds > 1:
        pool = np.flatnonzero(splits != "test")
        folds = np.array([fold_of(f"{samples[i]['dataset']}:{samples[i]['patient_id']}", cfg.folds) for i in pool])
        keep = set()
        for k in range(cfg.folds):
            keep |= set(pool[folds != k][: cfg.limit]) | set(pool[folds == k][:n_val])
    else:
        rng = np.random.default_rng(cfg.seed)
        train_idx, val_idx = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
        keep = set(rng.permutation(train_idx)[: cfg.limit]) | set(rng.permutation(val_idx)[:n_val])
    return [s for i, s in enumerate(samples) if i in keep]


def load_views(cfg: DiagTrainConfig, split: str | None = None, progress: bool = True) -> dict:
    """Views of the labelled frontal samples of a split (``None``: all), for ``cfg``.

    With ``cfg.limit`` and no ``split`` only the samples the run uses (:func:`limited_samples`)
    get lung masks and views: a smoke run on a fresh machine does not segment every image first.
    """
    from ..infer import LungSegmenter

    samples, excluded = classification_samples(load_records(cfg.data_root), split)
    for reason, n in sorted(excluded.items()):
        log.info("excluded %d: %s", n, reason)
    if split is None:
        samples = limited_samples(cfg, samples)
    segmenter = LungSegmenter.from_spec(cfg.lung_weights)
    return prepare_views(
        samples,
        segmenter,
        cfg.input_size,
        cfg.margin,
        whole=cfg.lung_input == "whole",
        enhancement=cfg.enhancement,
        progress=progress,
    )


def main(
    cfg: DiagTrainConfig, resume: bool = False, export_dir: str | Path | None = None, command: str | None = None
) -> Path:
    """Train (or cross-validate with ``folds``) and export the best weights; returns the run folder.

    ``command`` is the command line the spec records (default: this process's ``sys.argv``).
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; it joins the process
    group first and leaves it at the end.
    """
    check_enhancement(cfg.enhancement)  # before a run folder is made
    device = distributed.init(device_of(cfg.device))
    try:
        return _train(cfg, device, resume, export_dir, command)
    finally:
        distributed.cleanup()


def _train(
    cfg: DiagTrainConfig, device: torch.device, resume: bool, export_dir: str | Path | None, command: str | None = None
) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = start_run(cfg, resume)
    t0 = time.time()
    with distributed.main_first():  # the mask and view caches are filled once, then read
        views = load_views(cfg, progress=distributed.is_main())
    splits = np.array([s["split"] for s in views["samples"]])
    if cfg.folds > 1:
        run = _cross_validate(cfg, views, splits, run, resume, device)
        distributed.barrier()
        return run

    train_idx, val_idx = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    if cfg.limit:
        rng = np.random.default_rng(cfg.seed)
        train_idx, val_idx = (
            np.sort(rng.permutation(train_idx)[: cfg.limit]),
            np.sort(rng.permutation(val_idx)[: max(cfg.limit // 2, 6)]),
        )
    if len(train_idx) == 0 or len(np.unique(views["labels"][train_idx])) < 2:
        raise ValueError("too few labelled training images; check --data-root")
    train, val = _subset(views, train_idx), _subset(views, val_idx)
    log.info("diagnosis samples: %d train, %d val", len(train_idx), len(val_idx))
    result = fit(cfg, train, val, run, resume, device)
    if distributed.is_main():
        _export(cfg, result, run, export_dir, len(train_idx), len(val_idx), t0, command)
    distributed.barrier()  # the weights exist when any rank returns
    return run


def _export(
    cfg: DiagTrainConfig,
    result: dict,
    run: Path,
    export_dir: str | Path | None,
    train_samples: int,
    val_samples: int,
    t0: float,
    command: str | None = None,
) -> None:
    """The best weights of ``fit`` and their spec (rank 0)."""
    name = export_name(cfg.export_name, cfg.model, run, cfg.quick)
    config = {k: v for k, v in asdict(cfg).items() if k not in ("data_root", "out_dir", "lung_weights")}
    spec = WeightSpec(
        name=name,
        architecture=cfg.model,
        task="diagnosis",
        targets=list(CLASSES),
        input_size=(cfg.input_size, cfg.input_size),
        normalization=NORMALIZATION,
        file=f"{name}.pt",
        resize="lung-box",
        enhancement=cfg.enhancement,
        lung_input=cfg.lung_input,
        margin=cfg.margin,
        temperature=round(result["temperature"], 4),
        lung_weights=_lung_sha(cfg),
        training={
            **provenance(config, command, cfg.quick),
            "config": config,
            "data": {
                "split_version": SPLIT_VERSION,
                "train_samples": train_samples,
                "val_samples": val_samples,
                "sampling": cfg.sampling,
            },
            "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]),
            "val_macro_auroc": round(result["val_auroc"], 4),
            "temperature_at_bound": result["temperature_at_bound"],
            "train_minutes": round((time.time() - t0) / 60, 1),
        },
    )
    spec_path = save_weights(result["model"], spec, export_dir or run / "export")
    log.info("exported %s", spec_path)


def _lung_sha(cfg: DiagTrainConfig) -> str:
    from ..models.weights import shipped_spec_path

    return WeightSpec.from_json(cfg.lung_weights or shipped_spec_path("lungs")).sha256


def _cross_validate(
    cfg: DiagTrainConfig, views: dict, splits: np.ndarray, run: Path, resume: bool, device: torch.device | None = None
) -> Path:
    """K folds over train+val patients; each fold validates on its held-out patients.

    Under torchrun every process trains every fold together; rank 0 writes the files.
    """
    pool = np.flatnonzero(splits != "test")
    folds = np.array(
        [fold_of(f"{views['samples'][i]['dataset']}:{views['samples'][i]['patient_id']}", cfg.folds) for i in pool]
    )
    results = []
    for k in range(cfg.folds):
        fold_run = run / f"fold{k}"
        if distributed.is_main():
            fold_run.mkdir(exist_ok=True)
        train_idx, val_idx = pool[folds != k], pool[folds == k]
        if cfg.limit:
            train_idx, val_idx = train_idx[: cfg.limit], val_idx[: max(cfg.limit // 2, 6)]
        res = fit(cfg, _subset(views, train_idx), _subset(views, val_idx), fold_run, resume, device)
        results.append(
            {
                "fold": k,
                "train_samples": len(train_idx),
                "val_samples": len(val_idx),
                "best_epoch": res["best_epoch"],
                "val_macro_auroc": res["val_auroc"],
                "temperature": res["temperature"],
                "temperature_at_bound": res["temperature_at_bound"],
            }
        )
        log.info("fold %d: val macro AUROC %.4f", k, res["val_auroc"])
    aurocs = np.array([r["val_macro_auroc"] for r in results])
    summary = {
        **({"smoke": True} if cfg.quick else {}),
        "folds": results,
        "mean_val_macro_auroc": float(np.nanmean(aurocs)),
        "std_val_macro_auroc": float(np.nanstd(aurocs)),
    }
    if distributed.is_main():
        (run / "cross_validation.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "cross-validation: macro AUROC %.4f ± %.4f over %d folds",
        summary["mean_val_macro_auroc"],
        summary["std_val_macro_auroc"],
        cfg.folds,
    )
    return run
