"""Training of the lung-segmentation model: ``train_one_epoch``, ``evaluate``, ``main``.

A run folder holds the resolved config, a checkpoint written after every epoch (model,
optimizer, scheduler, epoch, history: ``--resume`` continues a killed run to the same
result), metrics.json, a learning curve and an overlay of validation predictions; the
best-by-validation weights are exported with their spec.

A research design may replace the epoch (:class:`EpochHook`: extra modules that join the
checkpoint and the step that trains them; :mod:`covidcxr.research.adversarial` is one); the
product trains with the plain loop below.

Under ``torchrun --nproc_per_node N`` (see :mod:`covidcxr.engine.common.distributed`) the model is
wrapped in DistributedDataParallel and each process trains on its shard of every epoch
with ``batch_size`` images per step (effective batch ``batch_size x N``); rank 0 validates
and writes the run folder, and checkpoints hold the unwrapped model, so a single process
can resume or export them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ... import plots
from ...data import load_records
from ...data.masks import IGNORE, LUNG
from ...data.segmentation import MANUAL_SOURCES, SegmentationDataset, segmentation_samples
from ...data.splits import SPLIT_VERSION
from ...data.transforms import segmentation_augment
from ...io import NORMALIZATION
from ...io.enhance import check_enhancement
from ...models import WeightSpec, create_model, eval_mode, save_weights
from ..common import distributed
from ..common.loop import Loop
from ..common.losses import dice_bce_loss
from ..common.runs import autocast, export_name, provenance, rank_seed, start_run
from ..common.runs import device as device_of

log = logging.getLogger(__name__)


@dataclass
class EpochHook:
    """An epoch other than the plain one, for research designs built on this trainer.

    ``extra`` (modules and optimizers) joins every checkpoint; ``step(model, loader,
    optimizer, scheduler, epoch)`` trains one epoch and returns its history entries (at
    least ``train_loss``); ``check(checkpoint)`` may refuse a checkpoint it cannot resume.
    """

    extra: dict[str, Any]
    step: Callable[..., dict]
    check: Callable[[dict], None] | None = None


@dataclass
class SegTrainConfig:
    """Lung-segmentation training settings (configs/segmentation.yaml)."""

    data_root: str | None = None
    out_dir: str = "runs/segmentation"
    model: str = "unet_mobilenetv2"
    pretrained: str | None = None  # "imagenet" needs internet once
    init: str | None = (
        None  # "imagenet-file:PATH[@SHA256]": the encoder from a local ImageNet MobileNetV2 file (covidcxr.models.pretrained)
    )
    init_bn: str = "folded"  # with init: "folded" fine-tunes the file's identity batch norms as they are; "reestimate" gives them X-ray statistics first
    input_size: int = 256  # images are resized to this; the model runs at it at inference
    enhancement: str = "none"  # none | clahe | dehaze before the resize (covidcxr.io.enhance); recorded in the spec
    crop_size: int = 0  # >0: train on random crops of this size (cheaper steps at a larger input_size)
    opacity: float = (
        0.0  # share of training images with simulated airspace opacity in the lungs (data.transforms.SimulatedOpacity)
    )
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
    export_name: str = ""  # "": <model>-<run folder name> (configs/segmentation.yaml: the shipped name)
    quick: bool = False  # a smoke run (--quick): every file it writes says so; the exported name ends in -quick

    #: ``--quick``: a few dozen images at 64 px, one epoch (docs/training.md).
    QUICK: ClassVar[dict] = {"limit": 24, "input_size": 64, "epochs": 1, "batch_size": 8}


def _init_from_file(net: torch.nn.Module, cfg: SegTrainConfig, train_ds: SegmentationDataset) -> None:
    """Start the encoder from an ``imagenet-file:PATH[@SHA256]`` (the only ``init`` segmentation takes)."""
    from ...models.pretrained import load_imagenet, loaded_part, parse_init, reestimate_batchnorm

    parsed = parse_init(cfg.init)
    if parsed is None:
        raise ValueError(f"segmentation init must be 'imagenet-file:PATH[@SHA256]', got {cfg.init!r}")
    if cfg.init_bn not in ("folded", "reestimate"):
        raise ValueError(f"init_bn must be 'folded' or 'reestimate', got {cfg.init_bn!r}")
    report = load_imagenet(net, *parsed)
    if cfg.init_bn == "reestimate":
        loader = DataLoader(
            train_ds, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed)
        )
        batches = (batch["image"] for _, batch in zip(range(8), loader))
        reestimate_batchnorm(net, batches, within=loaded_part(net, report["loaded"]))


def train_one_epoch(model, loader, optimizer, scheduler, amp: str, epoch: int, device: torch.device) -> float:
    """One pass over ``loader``; returns the mean training loss (over all processes under torchrun)."""
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not distributed.is_main())
    for batch in bar:
        x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            logits = model(x)
        loss = dice_bce_loss(logits, batch["mask"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(x)
        n += len(x)
        bar.set_postfix(loss=f"{total / n:.4f}")
    total, n = distributed.all_reduce_sum([total, n], device)
    return total / max(n, 1)


@torch.inference_mode()
def evaluate(model, loader, amp: str = "none", device: torch.device | None = None) -> dict:
    """Mean loss and mean per-image Dice (threshold 0.5) at the input size, ignore region excluded."""
    device = device or torch.device("cpu")
    dices, losses = [], []
    with eval_mode(model):
        for batch in loader:
            x = batch["image"].to(device).contiguous(memory_format=torch.channels_last)
            with autocast(amp, device):
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
    augment = segmentation_augment(opacity=cfg.opacity)
    if cfg.crop_size and cfg.crop_size < cfg.input_size:
        augment = v2.Compose([augment, v2.RandomCrop(cfg.crop_size)])
    progress = distributed.is_main()
    kw = {"progress": progress, "enhancement": cfg.enhancement}
    return SegmentationDataset(train, size, transform=augment, **kw), SegmentationDataset(val, size, **kw)


def _train_loader(train_ds: SegmentationDataset, cfg: SegTrainConfig, epoch: int) -> DataLoader:
    """The epoch's loader: shuffled with the epoch's seed; this rank's shard under torchrun."""
    seed = rank_seed(cfg.seed, epoch)
    if distributed.world_size() == 1:
        return DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=len(train_ds) > cfg.batch_size,
            num_workers=cfg.workers,
            generator=torch.Generator().manual_seed(seed),
        )
    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed)  # the same permutation on every rank
    sampler.set_epoch(epoch)
    return DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=len(sampler) > cfg.batch_size,
        num_workers=cfg.workers,
        generator=torch.Generator().manual_seed(seed),
    )


def main(
    cfg: SegTrainConfig,
    resume: bool = False,
    export_dir: str | Path | None = None,
    command: str | None = None,
    hook: Callable[[SegTrainConfig, torch.device], EpochHook] | None = None,
) -> Path:
    """Train, checkpoint every epoch, export the best weights; returns the run folder.

    ``command`` is the command line the spec records (default: this process's ``sys.argv``).
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; it joins the process
    group first and leaves it at the end.
    """
    check_enhancement(cfg.enhancement)  # before a run folder is made
    device = distributed.init(device_of(cfg.device))
    try:
        return _train(cfg, device, resume, export_dir, command, hook)
    finally:
        distributed.cleanup()


def _train(
    cfg: SegTrainConfig,
    device: torch.device,
    resume: bool,
    export_dir: str | Path | None,
    command: str | None = None,
    hook: Callable[[SegTrainConfig, torch.device], EpochHook] | None = None,
) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = start_run(cfg, resume)
    torch.manual_seed(cfg.seed)
    train_ds, val_ds = _datasets(cfg)
    if len(train_ds) == 0:
        raise ValueError("no training samples with manual lung masks were found; check --data-root")
    net = create_model(cfg.model, in_chans=1, num_classes=1, pretrained=cfg.pretrained)
    if cfg.init:
        _init_from_file(net, cfg, train_ds)
    net = net.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_rank = -(-len(train_ds) // distributed.world_size())
    steps = cfg.epochs * -(-per_rank // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    custom = hook(cfg, device) if hook else None  # built after the U-Net: the plain path draws nothing more
    loop = Loop(
        run,
        net,
        optimizer,
        scheduler,
        cfg.epochs,
        device,
        metric="val_dice",
        best_key="dice",
        config=asdict(cfg),
        extra=custom.extra if custom else {},
        check=custom.check if custom else None,
    ).load(resume)
    model = distributed.wrap(net, device)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, num_workers=cfg.workers)

    def step(epoch: int) -> dict:
        # Every epoch reseeds shuffling and augmentation, so a resumed run repeats it exactly.
        torch.manual_seed(rank_seed(cfg.seed, epoch))
        loader = _train_loader(train_ds, cfg, epoch)
        if custom:
            return custom.step(model, loader, optimizer, scheduler, epoch)
        return {"train_loss": train_one_epoch(model, loader, optimizer, scheduler, cfg.amp, epoch, device)}

    def validate() -> dict:  # rank 0 validates the plain module
        val = evaluate(net, val_loader, cfg.amp, device)
        return {"val_loss": val["loss"], "val_dice": val["dice"]}

    loop.run_epochs(step, validate)
    if distributed.is_main():
        net.load_state_dict(loop.best["state"])
        _export(cfg, net.cpu(), val_ds, run, export_dir, loop.best, loop.history, len(train_ds), command)
    distributed.barrier()  # the weights exist when any rank returns
    return run


def _export(
    cfg: SegTrainConfig,
    model,
    val_ds: SegmentationDataset,
    run: Path,
    export_dir: str | Path | None,
    best: dict,
    history: list[dict],
    train_samples: int,
    command: str | None = None,
) -> None:
    """Validation overlays, then the best weights and their spec (rank 0)."""
    plots.segmentation_overlays(model, val_ds, run / "val_overlays.png")
    name = export_name(cfg.export_name, cfg.model, run, cfg.quick)
    config = {
        k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items() if k not in ("data_root", "out_dir")
    }
    spec = WeightSpec(
        name=name,
        architecture=cfg.model,
        task="lung-segmentation",
        targets=["lungs"],
        input_size=(cfg.input_size, cfg.input_size),
        normalization=NORMALIZATION,
        file=f"{name}.pt",
        enhancement=cfg.enhancement,
        training={
            **provenance(config, command, cfg.quick),
            "config": config,
            "data": {
                "mask_sources": list(MANUAL_SOURCES),
                "split_version": SPLIT_VERSION,
                "train_samples": train_samples,
                "val_samples": len(val_ds),
            },
            "best_epoch": best["epoch"],
            "val_dice": round(best["dice"], 4),
            "train_minutes": round(history[-1]["elapsed_s"] / 60, 1),
        },
    )
    spec_path = save_weights(model, spec, export_dir or run / "export")
    log.info("exported %s", spec_path)
