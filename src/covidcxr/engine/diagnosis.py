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

Under ``torchrun --nproc_per_node N`` (see :mod:`covidcxr.engine.distributed`) every
process draws the same weighted indices for an epoch and trains on every N-th of them
with ``batch_size`` images per step (effective batch ``batch_size x N``, an epoch stays
one pass's worth of draws); rank 0 fills the view cache, validates, fits the temperature
and writes the run folder, and sends its validation numbers to the others so that early
stopping ends every process at the same epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import plots
from ..data import load_records
from ..data.classification import CLASSES, DiagnosisDataset, classification_samples, lung_view
from ..data.lung_cache import cached_lung_masks, load_cached_mask
from ..data.splits import SPLIT_VERSION
from ..data.transforms import diagnosis_augment
from ..enhance import check_enhancement, enhance
from ..io import NORMALIZATION, ImageReadError, read_image
from ..models import WeightSpec, create_model, eval_mode, save_weights
from ..models.classifier import CAM_LAYERS
from ..models.pretrained import load_imagenet, parse_init
from . import distributed
from .losses import outside_lungs_share
from .segmentation import _autocast, _checkpoint, _device, start_run

log = logging.getLogger(__name__)

SAMPLINGS = ("class_source", "group", "class", "none")


@dataclass
class DiagTrainConfig:
    """Diagnosis training settings (configs/diagnosis.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/diagnosis"
    model: str = "mobilenet_v2"
    pretrained: str | None = None  # "imagenet" needs internet once
    init: str | None = (
        "lungs"  # start from: "lungs" (the stage-1 encoder), "imagenet-file:PATH[@SHA256]", a .pt state_dict or a weights spec; None: random
    )
    lung_input: str = "crop"  # crop | masked
    margin: float = 0.1  # lung box grown by this fraction per side
    input_size: int = 224
    enhancement: str = "none"  # none | clahe | dehaze, on each lung view (covidcxr.enhance); recorded in the spec
    sampling: str = "class_source"  # class_source | group | class | none
    epochs: int = 30
    patience: int = 6  # stop after this many epochs without a better validation macro AUROC
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    lung_attention: float = (
        0.0  # >0: weight of the penalty on class activation outside the lungs (losses.outside_lungs_share)
    )
    folds: int = 0  # >1: K-fold cross-validation over train+val patients (no export)
    seed: int = 0
    amp: str = "bf16"
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    limit: int = 0  # >0: at most this many train and val samples (smoke tests)
    lung_weights: str | None = None  # stage-1 spec; None = shipped
    export_name: str = "mobilenet_v2_diagnosis"


# ---------------------------------------------------------------------------
# Lung views


def views_cache_dir() -> Path:
    base = os.environ.get("COVIDCXR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "covidcxr") / "views"


def prepare_views(
    samples: list[dict],
    segmenter,
    size: int,
    margin: float,
    whole: bool = False,
    enhancement: str = "none",
    cache: bool = True,
    progress: bool = True,
) -> dict:
    """Lung views of ``samples`` at ``size``: stage-1 masks, then lung view and enhancement per image.

    Each view is :func:`lung_view` followed by :func:`covidcxr.enhance.enhance` with
    ``enhancement``, as :meth:`covidcxr.pipeline.Diagnoser.view` does at inference. Kept as
    one ``.npz`` per (lung weights, size, margin, enhancement, sample list), so evaluation
    and audits after training read them in seconds.

    Returns:
        dict of ``images`` (N, S, S) uint8, ``lungs`` (N, S, S) bool, ``labels`` (N,),
        ``samples`` (the N samples kept; unreadable images are dropped and logged),
        ``lung_fraction`` (N,) share of each view that is lung.
    """
    check_enhancement(enhancement)
    # "none" leaves the key as it was before enhancements existed, so those caches stay valid.
    setting = [segmenter.spec.sha256, size, margin, whole] + ([enhancement] if enhancement != "none" else [])
    key = hashlib.sha256(json.dumps([*setting, [(s["dataset"], s["filename"]) for s in samples]]).encode()).hexdigest()[
        :16
    ]
    path = views_cache_dir() / f"{key}.npz"
    by_name = {f"{s['dataset']}/{s['filename']}": s for s in samples}
    if cache and path.is_file():
        data = np.load(path)
        # Stored by dataset/filename, not by path: the same cache serves any copy of the data.
        if "names" in data.files and all(n in by_name for n in data["names"]):
            kept = [by_name[n] for n in data["names"]]
            return {
                "images": data["images"],
                "lungs": data["lungs"],
                "labels": np.array([s["label"] for s in kept], dtype=np.int64),
                "samples": kept,
                "lung_fraction": data["lungs"].mean(axis=(1, 2)),
            }
        log.info("rebuilding stale view cache %s", path)
    masks = cached_lung_masks(samples, segmenter, progress=progress)
    images, lungs, kept = [], [], []
    for s in tqdm(samples, desc="lung views", disable=not progress, unit="image"):
        if s["path"] not in masks:
            continue
        try:
            image = read_image(s["path"])
        except ImageReadError as err:
            log.warning("skipping %s", err)
            continue
        view, lung = lung_view(image, load_cached_mask(masks[s["path"]]), size, whole=whole, margin=margin)
        images.append((enhance(view[0], enhancement) * 255 + 0.5).astype(np.uint8))
        lungs.append(lung[0] > 0.5)
        kept.append(s)
    images = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    lungs = np.stack(lungs) if lungs else np.zeros((0, size, size), bool)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, lungs=lungs, names=np.array([f"{s['dataset']}/{s['filename']}" for s in kept]))
        os.replace(tmp, path)
    return {
        "images": images,
        "lungs": lungs,
        "labels": np.array([s["label"] for s in kept], dtype=np.int64),
        "samples": kept,
        "lung_fraction": lungs.mean(axis=(1, 2)),
    }


def sample_weights(labels: np.ndarray, sources: list[str], sampling: str = "class_source") -> np.ndarray:
    """Per-sample draw weights: equal per class, and inside a class equal per source.

    ``group`` draws every (source, class) pair present equally often, so inside a source
    every class it holds is equally likely; ``class`` balances classes only; ``none`` draws
    uniformly.
    """
    labels = np.asarray(labels)
    if sampling == "none":
        return np.ones(len(labels))
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    w = np.zeros(len(labels))
    if sampling == "group":
        groups = [(src, int(c)) for src, c in zip(sources, labels)]
        counts = {g: groups.count(g) for g in set(groups)}
        w = np.array([1.0 / counts[g] for g in groups])
        return w / w.sum()
    for c in np.unique(labels):
        in_class = labels == c
        if sampling == "class":
            w[in_class] = 1.0 / in_class.sum()
            continue
        srcs = sorted({sources[i] for i in np.flatnonzero(in_class)})
        for src in srcs:
            group = in_class & np.array([s == src for s in sources])
            w[group] = 1.0 / (len(srcs) * group.sum())
    return w / w.sum()


# ---------------------------------------------------------------------------
# Model outputs


@torch.inference_mode()
def predict_logits(
    model,
    dataset,
    batch_size: int = 64,
    amp: str = "bf16",
    device: torch.device | None = None,
    features: bool = False,
):
    """Logits (N, K) float32 of a dataset, and with ``features`` the pooled features (N, D)."""
    device = device or torch.device("cpu")
    logits, feats = [], []
    with eval_mode(model):
        for batch in DataLoader(dataset, batch_size=batch_size):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with _autocast(amp, device):
                f = model.forward_head(model.forward_features(x), pre_logits=True)
                lg = model.get_classifier()(f)
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
    out = torch.cat(logits).numpy() if logits else np.zeros((0, 0), np.float32)
    if features:
        return out, (torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32))
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (LBFGS on log T)."""
    lg = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lg / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUROC averaged over the classes present (NaN when fewer than two)."""
    present = [c for c in range(probs.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    if len(present) < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


# ---------------------------------------------------------------------------
# Training


def _build_model(cfg: DiagTrainConfig) -> torch.nn.Module:
    model = create_model(cfg.model, in_chans=1, num_classes=len(CLASSES), pretrained=cfg.pretrained)
    if cfg.init and (imagenet := parse_init(cfg.init)):
        load_imagenet(model, *imagenet)
    elif cfg.init:
        loaded = load_matching(model, _init_state(cfg.init))
        if not loaded:
            raise ValueError(f"{cfg.init}: no parameter matches {cfg.model}'s names and shapes")
        log.info("initialised %d of %d tensors of %s from %s", loaded, len(model.state_dict()), cfg.model, cfg.init)
    return model


def load_matching(model: torch.nn.Module, state: dict) -> int:
    """Load the tensors of ``state`` that fit ``model``; returns how many were loaded.

    Tensors are matched by name; when no name matches and ``state`` holds a U-Net encoder
    (keys with ``encoder.``), the encoder is matched to the classifier's feature extractor
    in order, every pair of shapes checked. The stage-1 MobileNetV2 encoder and the
    ``mobilenet_v2`` classifier line up this way, tensor for tensor.
    """
    own = model.state_dict()
    by_name = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not by_name:
        encoder = [v for k, v in state.items() if k.startswith("encoder.") or ".encoder." in k]
        head = {f"{_head_name(model)}.{k}" for k in model.get_classifier().state_dict()}
        body = [k for k in own if k not in head]
        if encoder and len(encoder) == len(body) and all(own[k].shape == v.shape for k, v in zip(body, encoder)):
            by_name = dict(zip(body, encoder))
    model.load_state_dict(by_name, strict=False)
    return len(by_name)


def _head_name(model: torch.nn.Module) -> str:
    """Name of the classifier module (``fc``, ``classifier``…)."""
    head = model.get_classifier()
    return next(n for n, m in model.named_modules() if m is head)


def _init_state(path: str) -> dict:
    """A state_dict from a ``.pt`` file, the file a weights spec (``.json``) names, or ``lungs`` (the shipped stage-1 model)."""
    if path == "lungs":
        from ..models.weights import shipped_spec_path

        path = str(shipped_spec_path("lungs"))
    p = Path(path)
    if p.suffix == ".json":
        p = p.parent / WeightSpec.from_json(p).file
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = state.get("model", state) if isinstance(state, dict) else state
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


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
    device = device or _device(cfg.device)
    main_rank = distributed.is_main()
    ckpt_path = run / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    net = _build_model(cfg).to(device, memory_format=torch.channels_last)
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
    history: list[dict] = []
    best = {"auroc": -1.0, "epoch": -1, "state": None}
    start, stale = 0, 0
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start, stale = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1, ckpt["stale"]
        log.info("resumed %s at epoch %d", run, start + 1)
    distributed.check_same(start, "resume epoch")
    model = distributed.wrap(net, device)

    t0 = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    bar = tqdm(range(start, cfg.epochs), desc="training", initial=start, total=cfg.epochs, disable=not main_rank)
    for epoch in bar:
        if stale >= cfg.patience:
            break
        seed = cfg.seed * 100_003 + epoch  # a resumed run repeats the epoch exactly
        torch.manual_seed(seed + 1_000_003 * distributed.rank())  # augmentation differs between ranks
        # The same weighted draw on every rank; each trains on its every-N-th share.
        indices = distributed.weighted_shard(weights, steps_per_epoch * cfg.batch_size, seed)
        loader = DataLoader(
            train_ds, batch_size=cfg.batch_size, sampler=indices, num_workers=cfg.workers, drop_last=True
        )
        train_stats = _train_epoch(model, loader, optimizer, scheduler, cfg, epoch, device, net)
        train_loss = train_stats["train_loss"]
        # Rank 0 validates; the others take its numbers, so early stopping agrees everywhere.
        val_stats = distributed.broadcast(_validate(net, val_ds, val["labels"], cfg, device) if main_rank else None)
        history.append(
            {
                "epoch": epoch + 1,
                **train_stats,
                **val_stats,
                "elapsed_s": time.time() - t0,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        if val_stats["val_auroc"] > best["auroc"]:
            state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()} if main_rank else None
            best, stale = {"auroc": val_stats["val_auroc"], "epoch": epoch + 1, "state": state}, 0
        else:
            stale += 1
        bar.set_postfix(loss=f"{train_loss:.3f}", val_auroc=f"{val_stats['val_auroc']:.4f}")
        if main_rank:
            _checkpoint(
                ckpt_path,
                model=net.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                epoch=epoch,
                history=history,
                best=best,
                stale=stale,
                config=asdict(cfg),
            )
            (run / "metrics.json").write_text(
                json.dumps({"history": history, "best_epoch": best["epoch"], "best_val_auroc": best["auroc"]}, indent=2)
            )
            plots.learning_curve(history, run / "learning_curve.png", metric="val_auroc")

    temperature = None
    if main_rank:
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
        "history": history,
        "temperature": temperature,
        "model": net.cpu(),
    }


def _train_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    cfg: DiagTrainConfig,
    epoch: int,
    device: torch.device,
    net: torch.nn.Module | None = None,
) -> dict:
    """One pass over ``loader``.

    With ``cfg.lung_attention`` the loss adds that weight times the share of class activation
    outside the lungs (the last feature map of ``net``, the plain module under a DDP wrapper;
    default ``model``, read by a hook).

    Returns:
        dict with ``train_loss`` (mean over all processes under torchrun) and, with lung
        attention, ``train_outside_lungs`` (the mean share outside the lungs).
    """
    net = model if net is None else net
    model.train()
    features: list[torch.Tensor] = []
    hook = (
        net.get_submodule(CAM_LAYERS[cfg.model]).register_forward_hook(lambda m, i, o: features.append(o))
        if cfg.lung_attention
        else None
    )
    total, outside_sum, n = 0.0, 0.0, 0
    try:
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not distributed.is_main()):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            features.clear()
            with _autocast(cfg.amp, device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), batch["label"].to(device), label_smoothing=cfg.label_smoothing)
            if hook is not None:
                outside = outside_lungs_share(features[-1], net.get_classifier().weight, batch["lungs"].to(device))
                loss = loss + cfg.lung_attention * outside
                outside_sum += outside.item() * len(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, n = total + loss.item() * len(x), n + len(x)
    finally:
        if hook is not None:
            hook.remove()
    total, outside_sum, n = distributed.all_reduce_sum([total, outside_sum, n], device)
    stats = {"train_loss": total / max(n, 1)}
    if hook is not None:
        stats["train_outside_lungs"] = outside_sum / max(n, 1)
    return stats


def _validate(model, val_ds: DiagnosisDataset, labels: np.ndarray, cfg: DiagTrainConfig, device: torch.device) -> dict:
    """Validation loss and macro AUROC of ``model`` (the plain module, not its DDP wrapper)."""
    logits = torch.from_numpy(predict_logits(model, val_ds, amp=cfg.amp, device=device))
    val_loss = float(F.cross_entropy(logits, torch.from_numpy(labels)))
    return {"val_loss": val_loss, "val_auroc": macro_auroc(labels, torch.softmax(logits, 1).numpy())}


def _subset(views: dict, idx: np.ndarray) -> dict:
    return {
        "images": views["images"][idx],
        "lungs": views["lungs"][idx],
        "labels": views["labels"][idx],
        "samples": [views["samples"][i] for i in idx],
        "lung_fraction": views["lung_fraction"][idx],
    }


def fold_of(patient_key: str, folds: int) -> int:
    """Fold of a patient: sha256 of ``dataset:patient_id`` mod ``folds`` (stable, stateless)."""
    return int.from_bytes(hashlib.sha256(patient_key.encode()).digest()[:8], "big") % folds


def load_views(cfg: DiagTrainConfig, split: str | None = None, progress: bool = True) -> dict:
    """Views of the labelled frontal samples of a split (``None``: all), for ``cfg``."""
    from ..pipeline import LungSegmenter

    samples, excluded = classification_samples(load_records(cfg.data_root), split)
    for reason, n in sorted(excluded.items()):
        log.info("excluded %d: %s", n, reason)
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


def main(cfg: DiagTrainConfig, resume: bool = False, export_dir: str | Path | None = None) -> Path:
    """Train (or cross-validate with ``folds``) and export the best weights; returns the run folder.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; it joins the process
    group first and leaves it at the end.
    """
    check_enhancement(cfg.enhancement)  # before a run folder is made
    device = distributed.init(_device(cfg.device))
    try:
        return _train(cfg, device, resume, export_dir)
    finally:
        distributed.cleanup()


def _train(cfg: DiagTrainConfig, device: torch.device, resume: bool, export_dir: str | Path | None) -> Path:
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
        raise RuntimeError("too few labelled training images; check --data-root")
    train, val = _subset(views, train_idx), _subset(views, val_idx)
    log.info("diagnosis samples: %d train, %d val", len(train_idx), len(val_idx))
    result = fit(cfg, train, val, run, resume, device)
    if distributed.is_main():
        _export(cfg, result, run, export_dir, len(train_idx), len(val_idx), t0)
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
) -> None:
    """The best weights of ``fit`` and their spec (rank 0)."""
    spec = WeightSpec(
        name=cfg.export_name,
        architecture=cfg.model,
        task="diagnosis",
        targets=list(CLASSES),
        input_size=(cfg.input_size, cfg.input_size),
        normalization=NORMALIZATION,
        file=f"{cfg.export_name}.pt",
        resize="lung-box",
        enhancement=cfg.enhancement,
        lung_input=cfg.lung_input,
        margin=cfg.margin,
        temperature=round(result["temperature"], 4),
        lung_weights=_lung_sha(cfg),
        training={
            "command": "covidcxr train diagnosis --config configs/diagnosis.yaml --out runs/diag-v1 --export src/covidcxr/weights",
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("data_root", "out_dir", "lung_weights")},
            "data": {
                "split_version": SPLIT_VERSION,
                "train_samples": train_samples,
                "val_samples": val_samples,
                "sampling": cfg.sampling,
            },
            "best_epoch": result["best_epoch"],
            "epochs_run": len(result["history"]),
            "val_macro_auroc": round(result["val_auroc"], 4),
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
            }
        )
        log.info("fold %d: val macro AUROC %.4f", k, res["val_auroc"])
    aurocs = np.array([r["val_macro_auroc"] for r in results])
    summary = {
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
