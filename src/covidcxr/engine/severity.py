"""Severity training and evaluation: lesion decoder folds, features, repeated-split evaluation.

The protocol (``covidcxr train severity``; ``covidcxr evaluate severity`` re-reads it):

1. The lesion decoder is trained on the radiologists' ground-glass / consolidation masks
   (plus lesion-free "No finding" training images) over the frozen stage-1 encoder, in K
   patient folds. Each image gets lesion maps from the fold model that never saw its
   patient (out of fold), which gives the lesion Dice and feeds the severity features, so
   no severity number leans on a lesion model that saw the image's own lesion mask.
2. Severity features (see :func:`covidcxr.severity.severity_features`) of every scored image.
3. The severity heads (ridge regression) are evaluated on repeated random patient-grouped
   50/50 splits, as Cohen et al. did, beside a predict-the-mean baseline; Brixia against the
   senior rater with the junior rater as the human reference.
4. The shipped lesion decoder is trained on all annotated images; the shipped heads are fitted
   on all scored images' out-of-fold features.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from tqdm.auto import tqdm

from ..config import save_config
from ..data import load_records
from ..data.classification import classification_samples
from ..data.severity import LESIONS, brixia_scores, expert_scores, lesion_samples, read_lesions
from ..data.splits import SPLIT_VERSION
from ..data.transforms import resize_image, resize_mask, segmentation_augment, upsample_logits
from ..enhance import enhance
from ..io import NORMALIZATION, normalize, read_image
from ..models import WeightSpec, create_model, eval_mode, save_weights
from ..pipeline import LungSegmenter
from ..severity import RANGES, columns, severity_features
from .diagnosis import fold_of
from .segmentation import _autocast, _checkpoint, _device

log = logging.getLogger(__name__)


@dataclass
class SeverityConfig:
    """Severity training settings (configs/severity.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/severity"
    lung_weights: str | None = None  # lung model spec (default: shipped); its encoder is shared
    folds: int = 4  # lesion decoder folds (out-of-fold lesion maps for evaluation)
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    negatives: int = 40  # lesion-free "No finding" training images added to each fold
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)  # lesion decoder widths, coarse to fine
    threshold: float = 0.5
    image_groups: tuple[str, ...] = ("lesions", "geometry", "intensity", "deep")
    image_brixia: bool = False  # extent/opacity also read the predicted Brixia global score (SeverityHead)
    zone_groups: tuple[str, ...] = ("lesions", "geometry", "intensity", "zone", "deep")
    repeats: int = 50  # random patient-grouped 50/50 splits
    seed: int = 0
    amp: str = "bf16"
    device: str = "auto"
    threads: int = 0
    limit: int = 0  # >0: at most this many images per table (smoke tests)


# ---------------------------------------------------------------- lesion decoder


class LesionDataset(Dataset):
    """Images and lesion masks at the lung model's input size, in memory; paired augmentation.

    Items: ``image`` (1, S, S) normalised, ``target`` (len(LESIONS), S, S) float 0/1.
    """

    def __init__(
        self,
        samples: list[dict],
        size: tuple[int, int],
        transform=None,
        progress: bool = True,
        enhancement: str = "none",
    ) -> None:
        self.samples, self.size, self.transform = samples, tuple(size), transform
        images, targets = [], []
        for s in tqdm(samples, desc="loading lesion masks", disable=not progress, leave=False):
            image = read_image(s["path"])
            lesions = (
                read_lesions(s, image.shape) if "lesion_masks" in s else np.zeros((len(LESIONS), *image.shape), bool)
            )
            # The decoder reads the lung model's encoder, which sees its own spec's enhancement.
            images.append(resize_image(torch.from_numpy(enhance(image, enhancement)), self.size))
            targets.append(torch.stack([resize_mask(torch.from_numpy(m.astype(np.uint8)), self.size) for m in lesions]))
        self.images = torch.stack(images) if images else torch.empty(0, 1, *self.size)
        self.targets = torch.stack(targets) if targets else torch.empty(0, len(LESIONS), *self.size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image, target = tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.targets[i])
        if self.transform is not None:
            image, target = self.transform(image, target)
        return {"image": normalize(image.as_subclass(torch.Tensor)), "target": target.as_subclass(torch.Tensor).float()}


def lesion_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice per lesion class over the whole batch (many images lack a class)."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(0, 2, 3))
    dice = (2 * inter + 1) / (p.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + 1)
    return bce + (1 - dice).mean()


def new_decoder(cfg: SeverityConfig) -> torch.nn.Module:
    """An untrained lesion decoder of the configured widths."""
    return create_model("lesion_decoder", num_classes=len(LESIONS), decoder_channels=tuple(cfg.decoder_channels))


def train_lesion_decoder(
    cfg: SeverityConfig, segmenter: LungSegmenter, samples: list[dict], run: Path, progress: bool = True
) -> torch.nn.Module:
    """Train a lesion decoder on the frozen encoder of ``segmenter``; resumes from ``run/checkpoint.pt``."""
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "checkpoint.pt"
    device = _device(cfg.device)
    encoder = segmenter.model.net.encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    decoder = new_decoder(cfg).to(device, memory_format=torch.channels_last)
    ds = LesionDataset(
        samples,
        segmenter.size,
        transform=segmentation_augment(),
        progress=progress,
        enhancement=segmenter.spec.enhancement,
    )
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(ds) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    history, start = [], 0
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        decoder.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start = ckpt["history"], ckpt["epoch"] + 1
    t0 = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    bar = tqdm(
        range(start, cfg.epochs),
        desc=f"lesions {run.name}",
        initial=start,
        total=cfg.epochs,
        disable=not progress,
        leave=False,
    )
    for epoch in bar:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        decoder.train()
        total, n = 0.0, 0
        for batch in DataLoader(
            ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(ds) > cfg.batch_size, generator=g
        ):
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with _autocast(cfg.amp, device):
                with torch.no_grad():
                    feats = encoder(x)
                logits = decoder(feats)
            loss = lesion_loss(logits, batch["target"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, n = total + loss.item() * len(x), n + len(x)
        history.append({"epoch": epoch + 1, "train_loss": total / max(n, 1), "elapsed_s": time.time() - t0})
        bar.set_postfix(loss=f"{total / max(n, 1):.4f}")
        _checkpoint(
            ckpt_path,
            model=decoder.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            epoch=epoch,
            history=history,
        )
    (run / "history.json").write_text(json.dumps(history, indent=2))
    return decoder.cpu().eval()


# ---------------------------------------------------------------- features and lesion maps


@torch.inference_mode()
def lesion_outputs(
    segmenter: LungSegmenter,
    decoders: dict[int, torch.nn.Module],
    samples: list[dict],
    fold_of_sample,
    threshold: float = 0.5,
    progress: bool = True,
) -> dict:
    """Lung masks, lesion maps and severity features of ``samples``, each with its fold's decoder.

    Returns:
        dict ``filename`` -> ``image_features`` (D,), ``zone_features`` (6, Dz),
        ``lesions`` (len(LESIONS), H, W) bool inside the lungs, ``lungs`` (H, W) bool.
    """
    out = {}
    for s in tqdm(samples, desc="severity features", disable=not progress, leave=False):
        image = read_image(s["path"])
        maps, x, encoder = segmenter.forward([image])
        mask = segmenter.masks(maps)[0]
        decoder = decoders[fold_of_sample(s)]
        with eval_mode(decoder):
            p = torch.sigmoid(decoder(encoder).float())
        lungs = resize_mask(torch.from_numpy(mask.astype(np.uint8)), tuple(x.shape[-2:])).bool()[None]
        image_f, zone_f = severity_features(
            x.numpy(), [f.numpy() for f in encoder], lungs.numpy(), p.numpy(), threshold
        )
        lesions = (upsample_logits(p, mask.shape)[0].numpy() > threshold) & mask
        out[s["filename"]] = {
            "image_features": image_f[0],
            "zone_features": zone_f[0],
            "lesions": lesions,
            "lungs": mask,
        }
    return out


def lesion_metrics(samples: list[dict], outputs: dict, min_share: float = 0.01, seed: int = 0) -> dict:
    """Per lesion class: Dice (images the radiologists marked) with a bootstrap CI, and disagreement rates.

    ``min_share``: a model "finds" a lesion class when it covers at least this share of the lungs.
    Returns per class ``dice`` {value, ci_low, ci_high, n}, ``model_only`` (share of images
    without a radiologist's mark where the model finds that lesion) and ``radiologist_only``
    (share of marked images where the model finds none).
    """
    from ..metrics import bootstrap_ci, dice

    out = {}
    for k, name in enumerate(LESIONS):
        dices, model_only, rad_only = [], [], []
        for s in samples:
            o = outputs[s["filename"]]
            truth = read_lesions(s, o["lungs"].shape)[k]
            pred = o["lesions"][k]
            found = pred.sum() >= min_share * max(o["lungs"].sum(), 1)
            if truth.any():
                dices.append(dice(pred, truth))
                rad_only.append(not found)
            else:
                model_only.append(bool(found))
        out[name] = {
            "dice": {**bootstrap_ci(np.array(dices), seed=seed), "n": len(dices)} if dices else None,
            "model_only": {"rate": float(np.mean(model_only)) if model_only else float("nan"), "n": len(model_only)},
            "radiologist_only": {"rate": float(np.mean(rad_only)) if rad_only else float("nan"), "n": len(rad_only)},
        }
    return out


def _ridge():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, r2_score

    r = (
        pearsonr(y, pred).statistic if np.ptp(pred) > 1e-6 and np.ptp(y) > 1e-6 else float("nan")
    )  # undefined for a constant
    return {"mae": float(mean_absolute_error(y, pred)), "r2": float(r2_score(y, pred)), "pearson_r": float(r)}


def _summary(per_split: list[dict]) -> dict:
    """Mean over splits and the 2.5-97.5 percentile interval of each metric."""
    out = {}
    for key in per_split[0]:
        v = np.array([d[key] for d in per_split], float)
        if np.isnan(v).all():  # e.g. Pearson r of a constant baseline
            out[key] = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
            continue
        out[key] = {
            "mean": float(np.nanmean(v)),
            "ci_low": float(np.nanpercentile(v, 2.5)),
            "ci_high": float(np.nanpercentile(v, 97.5)),
        }
    return out


def repeated_splits(groups: np.ndarray, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` random 50/50 splits of the rows, no patient on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    return list(
        GroupShuffleSplit(n_splits=repeats, test_size=0.5, random_state=seed).split(
            np.zeros(len(groups)), groups=groups
        )
    )


def evaluate_scores(
    features: np.ndarray,
    targets: dict[str, np.ndarray],
    groups: np.ndarray,
    repeats: int,
    seed: int,
    clip: dict[str, tuple[float, float]],
    extra: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Ridge regression vs the training-half mean on repeated patient-grouped 50/50 splits.

    ``extra(test)``, when given, returns (N, k) more feature columns for one split, computed
    without the test half's patients (see :func:`stacked_brixia`).

    Returns:
        per target: ``model`` and ``mean_baseline`` metric summaries (MAE, R², Pearson r),
        and ``predictions``: each image's mean test-half prediction (for the scatter plot).
    """
    out = {}
    splits = repeated_splits(groups, repeats, seed)
    split_features = [np.concatenate([features, extra(test)], axis=1) if extra else features for _, test in splits]
    for name, y in targets.items():
        model_s, base_s = [], []
        pred_sum, pred_n = np.zeros(len(y)), np.zeros(len(y))
        for (train, test), x in zip(splits, split_features):
            pred = np.clip(_ridge().fit(x[train], y[train]).predict(x[test]), *clip[name])
            model_s.append(_scores(y[test], pred))
            base_s.append(_scores(y[test], np.full(len(test), y[train].mean())))
            pred_sum[test] += pred
            pred_n[test] += 1
        out[name] = {
            "model": _summary(model_s),
            "mean_baseline": _summary(base_s),
            "predictions": (pred_sum / np.maximum(pred_n, 1)).tolist(),
            "n": len(y),
        }
    return out


def evaluate_brixia(
    zone_features: np.ndarray, senior: np.ndarray, junior: np.ndarray, groups: np.ndarray, repeats: int, seed: int
) -> dict:
    """Zone-level ridge (all six zones, one model) on repeated 50/50 splits; global = sum of zones.

    Args:
        zone_features: (N, 6, D); senior, junior: (N, 6) zone scores.
    """
    n = len(senior)
    model_s, base_s, junior_s = [], [], []
    pred_sum, pred_n = np.zeros(n), np.zeros(n)
    for train, test in repeated_splits(groups, repeats, seed):
        zones = _zone_scores(_zone_ridge(zone_features[train], senior[train]), zone_features[test])
        mean_zone = senior[train].mean(axis=0)
        for scores, pred in (
            (model_s, zones),
            (base_s, np.broadcast_to(mean_zone, zones.shape)),
            (junior_s, junior[test].astype(float)),
        ):
            g = _scores(senior[test].sum(1).astype(float), pred.sum(1))
            scores.append(
                {"global_" + k: v for k, v in g.items()} | {"zone_mae": float(np.abs(pred - senior[test]).mean())}
            )
        pred_sum[test] += zones.sum(1)
        pred_n[test] += 1
    return {
        "model": _summary(model_s),
        "mean_baseline": _summary(base_s),
        "junior_rater": _summary(junior_s),
        "predictions": (pred_sum / np.maximum(pred_n, 1)).tolist(),
        "n": n,
    }


def _zone_ridge(zone_features: np.ndarray, zone_targets: np.ndarray):
    """One ridge for all six zones: (N, 6, D) features, (N, 6) scores."""
    return _ridge().fit(zone_features.reshape(-1, zone_features.shape[2]), zone_targets.reshape(-1))


def _zone_scores(reg, zone_features: np.ndarray) -> np.ndarray:
    """(N, 6) zone scores of a :func:`_zone_ridge`, clipped to the zone scale (as the pipeline does)."""
    return np.clip(
        reg.predict(zone_features.reshape(-1, zone_features.shape[2])).reshape(zone_features.shape[:2]), *RANGES["zone"]
    )


def stacked_brixia(
    brixia_zones: np.ndarray,
    senior: np.ndarray,
    brixia_groups: np.ndarray,
    brixia_names: list[str],
    zone_features: np.ndarray,
    names: list[str],
    pool: np.ndarray,
    folds: int = 5,
) -> np.ndarray:
    """Predicted Brixia global score of each of ``names`` (N,), from zone ridges fitted on Brixia images only.

    The zone ridge is fitted on the Brixia images in ``pool`` (a boolean mask). An image that is
    itself in the pool gets the prediction of a ridge fitted without its patient (``folds``
    patient folds of the pool), so no image is scored by a ridge that saw its senior scores:
    the extent/opacity ridge then learns how a held-out Brixia prediction relates to its target.

    Args:
        brixia_zones: (M, 6, D) zone features of the Brixia images; senior (M, 6); brixia_groups (M,) patients.
        zone_features: (N, 6, D) zone features of the images to score.
    """
    from sklearn.model_selection import GroupKFold

    idx = np.nonzero(pool)[0]
    out = _zone_scores(_zone_ridge(brixia_zones[idx], senior[idx]), zone_features).sum(1)
    row = {n: i for i, n in enumerate(names)}
    k = min(folds, len(set(brixia_groups[idx])))
    if k < 2:
        return out
    for fit, held in GroupKFold(n_splits=k).split(idx, groups=brixia_groups[idx]):
        rows = [row[brixia_names[j]] for j in idx[held] if brixia_names[j] in row]
        if rows:
            out[rows] = _zone_scores(_zone_ridge(brixia_zones[idx[fit]], senior[idx[fit]]), zone_features[rows]).sum(1)
    return out


# ---------------------------------------------------------------- the protocol


def _samples(cfg: SeverityConfig) -> dict[str, list[dict]]:
    records = load_records(cfg.data_root)
    sets = {
        "experts": expert_scores(records, cfg.data_root),
        "brixia": brixia_scores(records, cfg.data_root),
        "lesions": lesion_samples(records, cfg.data_root),
    }
    if cfg.limit:
        sets = {k: v[: cfg.limit] for k, v in sets.items()}
    marked = {s["filename"] for s in sets["lesions"]}
    normals, _ = classification_samples([r for r in records if r["dataset"] != "kermany-pediatric"], "train")
    normals = sorted(
        (s for s in normals if s["label_name"] == "No finding" and s["filename"] not in marked),
        key=lambda s: fold_of(s["dataset"] + s["filename"], 1_000_003),
    )
    sets["negatives"] = normals[: cfg.negatives]
    test_normals, _ = classification_samples(records, "test")
    sets["test_normals"] = [s for s in test_normals if s["label_name"] == "No finding"][
        : max(cfg.limit, 90) if cfg.limit else None
    ]
    return sets


def _fold_decoders(
    cfg: SeverityConfig, segmenter: LungSegmenter, sets: dict, run: Path, progress: bool
) -> dict[int, torch.nn.Module]:
    decoders = {}
    for k in range(cfg.folds):
        train = [s for s in sets["lesions"] if fold_of(s["patient_id"], cfg.folds) != k] + sets["negatives"]
        log.info("lesion fold %d/%d: %d training images", k + 1, cfg.folds, len(train))
        decoders[k] = train_lesion_decoder(cfg, segmenter, train, run / f"fold{k}", progress)
    return decoders


def evaluate_severity(
    cfg: SeverityConfig, run: str | Path, out_dir: str | Path | None = None, progress: bool = True
) -> dict:
    """The evaluation protocol (module docstring, steps 1-3); fold decoders in ``run`` are reused.

    Writes ``severity_eval.json``, ``severity_eval.md``, ``severity_scatter.png`` and
    ``lesion_examples.png`` into ``out_dir`` (default ``run``) and ``features.npz`` into ``run``.
    """
    from .. import plots

    run, out = Path(run), Path(out_dir or run)
    out.mkdir(parents=True, exist_ok=True)
    sets = _samples(cfg)
    segmenter = LungSegmenter.from_spec(cfg.lung_weights)
    decoders = _fold_decoders(cfg, segmenter, sets, run, progress)
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
        "protocol": {
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
        },
        "lesions": lesion_metrics(sets["lesions"], outputs, seed=cfg.seed),
    }
    result["lesions"]["n_images"] = len(sets["lesions"])

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
    for groups_ in (
        ("lesions",),
        ("lesions", "geometry", "intensity"),
        ("deep",),
        ("lesions", "geometry", "intensity", "deep"),
    ):
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

    if sets["test_normals"]:
        normal_out = lesion_outputs(
            segmenter,
            {0: _final_or_fold(cfg, run, decoders)},
            sets["test_normals"],
            lambda s: 0,
            cfg.threshold,
            progress,
        )
        found = [
            any(o["lesions"][k].sum() >= 0.01 * max(o["lungs"].sum(), 1) for k in range(len(LESIONS)))
            for o in normal_out.values()
        ]
        result["lesions"]["test_no_finding_with_lesions"] = {"rate": float(np.mean(found)), "n": len(found)}
    (out / "severity_eval.json").write_text(json.dumps(result, indent=2))
    (out / "severity_eval.md").write_text(markdown(result))
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
    return result


def _final_or_fold(cfg: SeverityConfig, run: Path, decoders: dict) -> torch.nn.Module:
    """The decoder trained on every annotated image when it exists, else fold 0's."""
    final = run / "final" / "checkpoint.pt"
    if final.is_file():
        model = new_decoder(cfg)
        model.load_state_dict(torch.load(final, map_location="cpu", weights_only=True)["model"])
        return model.eval()
    return decoders[0]


def markdown(result: dict) -> str:
    """The evaluation as Markdown tables."""

    def fmt(d: dict) -> str:
        return f"{d['mean']:.2f} ({d['ci_low']:.2f}–{d['ci_high']:.2f})"

    p = result["protocol"]
    lines = [
        f"Severity: {p['repeats']} {p['split']} (seed {p['seed']}); mean over splits (2.5–97.5 percentile). Lesion maps: out of fold ({p['folds']} patient folds). "
        f"Extent and opacity read: {', '.join(p.get('image_features', [])) or 'see config'}.",
        "",
        "| score | n | model MAE | mean-baseline MAE | model R² | model Pearson r |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["scores"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {r['n']} | {fmt(r['model']['mae'])} | {fmt(r['mean_baseline']['mae'])} | {fmt(r['model']['r2'])} | {fmt(r['model']['pearson_r'])} |"
        )
    b = result["brixia"]
    lines += ["", "| Brixia vs senior rater | n | global MAE | zone MAE | global Pearson r |", "|---|---|---|---|---|"]
    for who in ("model", "junior_rater", "mean_baseline"):
        lines.append(
            f"| {who.replace('_', ' ')} | {b['n']} | {fmt(b[who]['global_mae'])} | {fmt(b[who]['zone_mae'])} | {fmt(b[who]['global_pearson_r'])} |"
        )
    lines += [
        "",
        "| lesion | Dice (95% CI), marked images | model finds it, radiologists did not | radiologists marked it, model finds none |",
        "|---|---|---|---|",
    ]
    for name in LESIONS:
        r = result["lesions"][name]
        d = (
            f"{r['dice']['value']:.3f} ({r['dice']['ci_low']:.3f}–{r['dice']['ci_high']:.3f}), n = {r['dice']['n']}"
            if r["dice"]
            else "n/a"
        )
        lines.append(
            f"| {name} | {d} | {r['model_only']['rate']:.0%} of {r['model_only']['n']} | {r['radiologist_only']['rate']:.0%} of {r['radiologist_only']['n']} |"
        )
    if "test_no_finding_with_lesions" in result["lesions"]:
        t = result["lesions"]["test_no_finding_with_lesions"]
        lines += [
            "",
            f"Test-split 'No finding' images where the shipped lesion model finds lesions (≥ 1% of the lungs): {t['rate']:.0%} of {t['n']}.",
        ]
    if result.get("ablation"):
        lines += [
            "",
            "Ablation: the same ridges on one set of feature groups each (extent and opacity without the Brixia score).",
            "",
            "| feature groups | geographic extent MAE | opacity MAE | Brixia global MAE |",
            "|---|---|---|---|",
        ]
        for name, r in result["ablation"].items():
            lines.append(f"| {name} | {r['geographic_extent']:.2f} | {r['opacity']:.2f} | {r['brixia_global']:.2f} |")
    return "\n".join(lines) + "\n"


def fit_heads(
    cfg: SeverityConfig,
    image_features: np.ndarray,
    targets: np.ndarray,
    zone_features: np.ndarray,
    zone_targets: np.ndarray,
    brixia_global: np.ndarray | None = None,
) -> torch.nn.Module:
    """The shipped severity head: ridge fits turned into a :class:`SeverityHead`.

    Args:
        image_features (N, D) with targets (N, 2) geographic extent, opacity;
        zone_features (M, 6, Dz) with zone_targets (M, 6) senior Brixia zones;
        brixia_global (N,): with ``cfg.image_brixia``, each scored image's held-out predicted
            Brixia global score (:func:`stacked_brixia`), appended to its image features.
    """
    img_cols, zone_cols = columns(cfg.image_groups, zone=False), columns(cfg.zone_groups, zone=True)
    head = create_model(
        "severity_linear",
        num_classes=3,
        image_groups=cfg.image_groups,
        zone_groups=cfg.zone_groups,
        image_in=len(img_cols),
        zone_in=len(zone_cols),
        image_brixia=cfg.image_brixia,
    )
    x = image_features[:, img_cols]
    if cfg.image_brixia:
        if brixia_global is None:
            raise ValueError("image_brixia: pass each image's held-out predicted Brixia global score")
        x = np.concatenate([x, np.asarray(brixia_global, x.dtype)[:, None]], axis=1)
    fits = [_ridge().fit(x, targets[:, j]) for j in range(targets.shape[1])]
    zfit = _zone_ridge(zone_features[:, :, zone_cols], zone_targets)
    with torch.no_grad():
        for name, linear, parts in (("image", head.image, fits), ("zone", head.zone, [zfit])):
            scaler = parts[0][0]
            getattr(head, f"{name}_mean").copy_(torch.from_numpy(scaler.mean_))
            getattr(head, f"{name}_scale").copy_(torch.from_numpy(scaler.scale_))
            for j, p in enumerate(parts):
                assert np.allclose(p[0].mean_, scaler.mean_)  # one scaler per feature matrix
                linear.weight[j] = torch.from_numpy(p[1].coef_)
                linear.bias[j] = float(p[1].intercept_)
    return head.eval()


def main(
    cfg: SeverityConfig,
    out_dir: str | Path,
    resume: bool = False,
    export_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Evaluate (steps 1-3), train the shipped lesion decoder and heads (step 4), export both with specs."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(out_dir)
    if run.exists() and any(run.iterdir()) and not resume:
        raise FileExistsError(
            f"{run}: run folder exists and is not empty; use --resume to continue it or choose another --out"
        )
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")
    t0 = time.time()
    sets = _samples(cfg)
    segmenter = LungSegmenter.from_spec(cfg.lung_weights)
    decoder = train_lesion_decoder(cfg, segmenter, sets["lesions"] + sets["negatives"], run / "final", progress)
    result = evaluate_severity(cfg, run, run, progress)

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
    head = fit_heads(
        cfg,
        feats["image_features"][[row[s["filename"]] for s in ex]],
        np.array([[s["geographic_extent"], s["opacity"]] for s in ex]),
        Z,
        senior,
        brixia_global,
    )
    size = tuple(segmenter.size)
    common = {
        "split_version": SPLIT_VERSION,
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(cfg).items()
            if k not in ("data_root", "out_dir")
        },
        "command": "covidcxr train severity --config configs/severity.yaml --out runs/severity --export src/covidcxr/weights",
        "train_minutes": round((time.time() - t0) / 60, 1),
    }
    lesion_spec = WeightSpec(
        name="unet_mobilenetv2_lesions",
        architecture="lesion_decoder",
        task="lesions",
        targets=list(LESIONS),
        input_size=size,
        normalization=NORMALIZATION,
        file="unet_mobilenetv2_lesions.pt",
        resize="stage-1 encoder features",
        threshold=cfg.threshold,
        lung_weights=segmenter.spec.sha256,
        model_kwargs={"decoder_channels": list(cfg.decoder_channels)},
        training={
            **common,
            "data": {"annotated_images": len(sets["lesions"]), "lesion_free_images": len(sets["negatives"])},
        },
        metrics={
            "protocol": f"{cfg.folds}-fold patient cross-validation (out of fold)",
            **{k: v for k, v in result["lesions"].items()},
        },
    )
    export = Path(export_dir or run / "export")
    lesion_path = save_weights(decoder, lesion_spec, export)
    head_spec = WeightSpec(
        name="severity_linear",
        architecture="severity_linear",
        task="severity",
        targets=["geographic_extent", "opacity", "brixia_zone"],
        input_size=size,
        normalization=NORMALIZATION,
        file="severity_linear.pt",
        resize="stage-1 encoder features",
        dtype="float32",
        model_kwargs={
            "image_groups": list(cfg.image_groups),
            "zone_groups": list(cfg.zone_groups),
            "image_in": head.image_in,
            "zone_in": head.zone.in_features,
            "image_brixia": head.image_brixia,
        },
        lung_weights=segmenter.spec.sha256,
        training={
            **common,
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
    spec_path = save_weights(head, head_spec, export)
    log.info("exported %s and %s", lesion_path, spec_path)
    return run
