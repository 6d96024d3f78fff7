"""Training of the lung-segmentation model: ``train_one_epoch``, ``evaluate``, ``main``.

A run folder holds the resolved config, a checkpoint written after every epoch (model,
optimizer, scheduler, epoch, history: ``--resume`` continues a killed run to the same
result), metrics.json, a learning curve and an overlay of validation predictions; the
best-by-validation weights are exported with their spec.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .. import plots
from ..config import save_config
from ..data import load_records
from ..data.masks import IGNORE, LUNG
from ..data.segmentation import MANUAL_SOURCES, SegmentationDataset, segmentation_samples
from ..data.splits import SPLIT_VERSION
from ..data.transforms import segmentation_augment
from ..io import NORMALIZATION
from ..models import WeightSpec, create_model, eval_mode, save_weights
from .losses import dice_bce_loss

log = logging.getLogger(__name__)


@dataclass
class SegTrainConfig:
    """Lung-segmentation training settings (configs/segmentation.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/segmentation"
    model: str = "unet_mobilenetv2"
    pretrained: str | None = None  # "imagenet" needs internet once
    input_size: int = 256  # images are resized to this; the model runs at it at inference
    crop_size: int = 0  # >0: train on random crops of this size (cheaper steps at a larger input_size)
    epochs: int = 12
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    amp: str = "bf16"  # bf16 | none (bf16 autocast + channels_last)
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    workers: int = 0  # DataLoader worker processes (0 on 2-core machines)
    threads: int = 0  # 0: all cores
    limit: int = 0  # >0: use at most this many train/val samples (smoke tests)
    export_name: str = "unet_mobilenetv2_lungs"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(amp: str, device: torch.device):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "none":
        return contextlib.nullcontext()
    raise ValueError(f"amp must be 'bf16' or 'none', got {amp!r}")


def train_one_epoch(model, loader, optimizer, scheduler, amp: str, epoch: int, device: torch.device) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False)
    for batch in bar:
        x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        with _autocast(amp, device):
            logits = model(x)
        loss = dice_bce_loss(logits, batch["mask"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(x)
        n += len(x)
        bar.set_postfix(loss=f"{total / n:.4f}")
    return total / max(n, 1)


@torch.inference_mode()
def evaluate(model, loader, amp: str = "none", device: torch.device = torch.device("cpu")) -> dict:
    """Mean loss and mean per-image Dice (threshold 0.5) at the input size, ignore region excluded."""
    dices, losses = [], []
    with eval_mode(model):
        for batch in loader:
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with _autocast(amp, device):
                logits = model(x).float().cpu()
            losses.append(dice_bce_loss(logits, batch["mask"]).item() * len(x))
            pred = logits[:, 0] > 0
            valid = batch["mask"] != IGNORE
            y = batch["mask"] == LUNG
            inter = (pred & y & valid).sum(dim=(1, 2)).float()
            denom = ((pred & valid).sum(dim=(1, 2)) + y.sum(dim=(1, 2))).float()
            dices.extend(torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).tolist())
    return {"loss": sum(losses) / max(len(dices), 1), "dice": sum(dices) / max(len(dices), 1)}


def _datasets(cfg: SegTrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    records = load_records(cfg.data_root)
    size = (cfg.input_size, cfg.input_size)
    train = segmentation_samples(records, "train", MANUAL_SOURCES)
    val = segmentation_samples(records, "val", MANUAL_SOURCES)
    if cfg.limit:
        train, val = train[: cfg.limit], val[: max(cfg.limit // 4, 2)]
    log.info("segmentation samples: %d train, %d val", len(train), len(val))
    augment = segmentation_augment()
    if cfg.crop_size and cfg.crop_size < cfg.input_size:
        augment = v2.Compose([augment, v2.RandomCrop(cfg.crop_size)])
    return SegmentationDataset(train, size, transform=augment), SegmentationDataset(val, size)


def _checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(cfg: SegTrainConfig, resume: bool = False, export_dir: str | Path | None = None) -> Path:
    """Train, checkpoint every epoch, export the best weights; returns the run folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Path(cfg.out_dir)
    ckpt_path = run / "checkpoint.pt"
    if run.exists() and any(run.iterdir()) and not resume:
        raise FileExistsError(f"{run}: run folder exists and is not empty; use --resume to continue it or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "config.yaml")

    torch.manual_seed(cfg.seed)
    train_ds, val_ds = _datasets(cfg)
    if len(train_ds) == 0:
        raise RuntimeError("no training samples with manual lung masks were found; check --data-root")
    device = _device(cfg.device)
    model = create_model(cfg.model, in_chans=1, num_classes=1, pretrained=cfg.pretrained).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(train_ds) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    history: list[dict] = []
    best = {"dice": -1.0, "epoch": -1, "state": None}
    start = 0
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best, start = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1
        log.info("resumed %s at epoch %d", run, start + 1)

    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.workers)
    t0 = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    bar = tqdm(range(start, cfg.epochs), desc="training", initial=start, total=cfg.epochs)
    for epoch in bar:
        # Every epoch reseeds shuffling and augmentation, so a resumed run repeats it exactly.
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        loader = DataLoader(
            train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size, num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch),
        )
        train_loss = train_one_epoch(model, loader, optimizer, scheduler, cfg.amp, epoch, device)
        val = evaluate(model, val_loader, cfg.amp, device)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val["loss"], "val_dice": val["dice"], "elapsed_s": time.time() - t0, "lr": scheduler.get_last_lr()[0]})
        if val["dice"] > best["dice"]:
            best = {"dice": val["dice"], "epoch": epoch + 1, "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        bar.set_postfix(loss=f"{train_loss:.4f}", val_dice=f"{val['dice']:.4f}")
        _checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch, history=history, best=best, config=asdict(cfg))
        (run / "metrics.json").write_text(json.dumps({"history": history, "best_epoch": best["epoch"], "best_val_dice": best["dice"]}, indent=2))
        plots.learning_curve(history, run / "learning_curve.png")

    model.load_state_dict(best["state"])
    model.cpu()
    plots.segmentation_overlays(model, val_ds, run / "val_overlays.png")
    spec = WeightSpec(
        name=cfg.export_name,
        architecture=cfg.model,
        task="lung-segmentation",
        targets=["lungs"],
        input_size=(cfg.input_size, cfg.input_size),
        normalization=NORMALIZATION,
        file=f"{cfg.export_name}.pt",
        training={
            "command": "covidcxr train segmentation --config configs/segmentation.yaml --out runs/seg-v1 --export src/covidcxr/weights",
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k not in ("data_root", "out_dir")},
            "data": {"mask_sources": list(MANUAL_SOURCES), "split_version": SPLIT_VERSION, "train_samples": len(train_ds), "val_samples": len(val_ds)},
            "best_epoch": best["epoch"],
            "val_dice": round(best["dice"], 4),
            "train_minutes": round(history[-1]["elapsed_s"] / 60, 1),
        },
    )
    spec_path = save_weights(model, spec, export_dir or run / "export")
    log.info("exported %s", spec_path)
    return run
