"""Adversarial (pix2pix-style) lung segmentation: a PatchGAN judges (X-ray, mask) pairs.

``python -m covidcxr.research adversarial`` trains the U-Net with its Dice + BCE loss plus
``adv_weight`` times an adversarial term, against a conditional PatchGAN
(:mod:`covidcxr.research.discriminator`) that learns to tell (image, ground-truth mask) pairs
from (image, predicted lung probability) pairs. Each step, as in pix2pix:

1. discriminator: real pairs -> 1, fake pairs (prediction detached) -> 0;
2. U-Net: Dice + BCE + ``adv_weight`` x (fake pairs -> 1), the discriminator frozen.

Least-squares GAN loss (Mao et al. 2017; pix2pix/CycleGAN ``--gan_mode lsgan``), not BCE:
ground-truth masks are binary and predictions are soft, so the discriminator soon tells
them apart with confidence; BCE's generator term -log D then grows without bound and its
gradient would swamp Dice + BCE, while the squared error stays near 1 when the
discriminator is sure and 0.25 at equilibrium, so ``adv_weight`` sets a predictable share of
the loss.

Pixels labelled ignore (v7labs paints instruments over the lung 127) carry no adversarial
signal, as they carry no supervised one: in the real pair they hold the prediction itself,
so both pairs agree there, and the U-Net gets no adversarial gradient through them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.masks import IGNORE, LUNG
from ..engine.common import distributed
from ..engine.common.losses import dice_bce_loss
from ..engine.common.runs import autocast
from ..engine.lungs.train import EpochHook, SegTrainConfig
from ..engine.lungs.train import main as train_lungs
from ..models import create_model
from . import discriminator  # noqa: F401  (registers patchgan)

log = logging.getLogger(__name__)


def build_discriminator(cfg: Any, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The PatchGAN for a segmentation config and its optimizer (Adam, pix2pix's betas 0.5, 0.999).

    Args:
        cfg: an :class:`AdversarialConfig` (``disc_channels``,
            ``disc_layers``, ``disc_lr``).

    Returns:
        the discriminator (on ``device``, channels_last, not wrapped) and its optimizer; the
        learning rate is constant (the U-Net's one-cycle schedule is its own).
    """
    disc = create_model(
        "patchgan", in_chans=1, num_classes=1, base_channels=cfg.disc_channels, n_layers=cfg.disc_layers
    )
    disc = disc.to(device, memory_format=torch.channels_last)
    return disc, torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))


def _lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(logits.float(), torch.full_like(logits, float(real), dtype=torch.float32))


def _pair(image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) image and (N, H, W) mask probability -> (N, 2, H, W) discriminator input."""
    return torch.cat([image, prob[:, None].to(image.dtype)], dim=1).contiguous(memory_format=torch.channels_last)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    # DistributedDataParallel expects a gradient for every parameter on every backward, so
    # a wrapped discriminator keeps its flags (its gradients from the U-Net step are dropped
    # by the next zero_grad); a plain one is frozen to save that work.
    if distributed.unwrap(module) is module:
        module.requires_grad_(flag)


def adversarial_step(
    model: nn.Module,
    disc: nn.Module,
    image: torch.Tensor,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    disc_optimizer: torch.optim.Optimizer,
    adv_weight: float,
    amp: str = "none",
) -> dict[str, float]:
    """One discriminator update, then one U-Net update; the learning-rate scheduler is the caller's.

    Args:
        model: the segmentation network (logits (N, 1, H, W)); may be DDP-wrapped.
        disc: the PatchGAN; may be DDP-wrapped.
        image: (N, 1, H, W) normalized images, on the models' device.
        target: (N, H, W) labels 0 background, 1 lung, 2 ignore.
        adv_weight: weight of the adversarial term beside Dice + BCE.
        amp: ``"bf16"`` or ``"none"``, as in the plain loop.

    Returns:
        ``loss`` (Dice + BCE, the plain loop's loss), ``g_adv`` (the U-Net's adversarial
        term, unweighted), ``d_loss`` (the discriminator's mean over real and fake pairs).
    """
    device = image.device
    x = image.contiguous(memory_format=torch.channels_last)
    with autocast(amp, device):
        logits = model(x)
    prob = torch.sigmoid(logits[:, 0].float())
    ignore = target == IGNORE
    fake = prob.detach()
    real = torch.where(ignore, fake, (target == LUNG).float())

    # (1) discriminator: real and fake pairs in one batch (InstanceNorm keeps samples apart; one DDP forward).
    _set_requires_grad(disc, True)
    with autocast(amp, device):
        d_out = disc(torch.cat([_pair(x, real), _pair(x, fake)]).contiguous(memory_format=torch.channels_last))
    d_real, d_fake = d_out.chunk(2)
    d_loss = 0.5 * (_lsgan(d_real, True) + _lsgan(d_fake, False))
    disc_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    disc_optimizer.step()

    # (2) U-Net: supervised loss + fool the (now updated, frozen) discriminator.
    _set_requires_grad(disc, False)
    with autocast(amp, device):
        g_out = disc(_pair(x, torch.where(ignore, fake, prob)))
    g_adv = _lsgan(g_out, True)
    sup = dice_bce_loss(logits, target)
    optimizer.zero_grad(set_to_none=True)
    (sup + adv_weight * g_adv).backward()
    optimizer.step()
    _set_requires_grad(disc, True)
    return {"loss": sup.item(), "g_adv": g_adv.item(), "d_loss": d_loss.item()}


def train_one_epoch(
    model: nn.Module,
    disc: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    disc_optimizer: torch.optim.Optimizer,
    scheduler,
    adv_weight: float,
    amp: str,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One adversarial pass over ``loader``.

    Returns:
        means over the epoch's images (all processes under torchrun) of ``loss``
        (Dice + BCE, comparable with the plain loop's ``train_loss``), ``g_adv`` and ``d_loss``.
    """
    model.train()
    disc.train()
    sums = {"loss": 0.0, "g_adv": 0.0, "d_loss": 0.0}
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1} (adversarial)", leave=False, disable=not distributed.is_main())
    for batch in bar:
        x = batch["image"].to(device)
        out = adversarial_step(model, disc, x, batch["mask"].to(device), optimizer, disc_optimizer, adv_weight, amp)
        scheduler.step()
        for k in sums:
            sums[k] += out[k] * len(x)
        n += len(x)
        bar.set_postfix(loss=f"{sums['loss'] / n:.4f}", d=f"{sums['d_loss'] / n:.3f}", g=f"{sums['g_adv'] / n:.3f}")
    *totals, n = distributed.all_reduce_sum([*sums.values(), n], device)
    return {k: v / max(n, 1) for k, v in zip(sums, totals)}


def check_checkpoint(ckpt: dict, adversarial: bool, path: Any) -> None:
    """Refuse to resume a plain run adversarially or the other way round.

    Raises:
        ValueError: the checkpoint's kind and the config's ``adversarial`` differ.
    """
    has_disc = "disc" in ckpt
    if has_disc != adversarial:
        kind = "an adversarial" if has_disc else "a plain"
        fix = "with python -m covidcxr.research adversarial" if has_disc else "with covidcxr train segmentation"
        raise ValueError(
            f"{path}: checkpoint of {kind} run but adversarial={adversarial}; resume it {fix}, or start a new run folder"
        )


@dataclass
class AdversarialConfig(SegTrainConfig):
    """The lung trainer's settings plus the PatchGAN's (pix2pix: 64 channels, 3 layers)."""

    out_dir: str = "runs/segmentation-adversarial"
    adversarial: bool = True
    adv_weight: float = 0.05  # x LSGAN term (0.25 at equilibrium) beside Dice + BCE (~0.1 once trained)
    disc_lr: float = 2e-4  # PatchGAN's Adam, constant (pix2pix)
    disc_channels: int = 32  # PatchGAN width
    disc_layers: int = 3  # stride-2 layers: 3 -> 70x70 receptive field


def hook(cfg: AdversarialConfig, device: torch.device) -> EpochHook:
    """The adversarial epoch for :func:`covidcxr.engine.lungs.train.main`."""
    disc_net, disc_optimizer = build_discriminator(cfg, device)
    disc = distributed.wrap(disc_net, device)

    def step(model, loader, optimizer, scheduler, epoch: int) -> dict:
        stats = train_one_epoch(
            model, disc, loader, optimizer, disc_optimizer, scheduler, cfg.adv_weight, cfg.amp, epoch, device
        )
        return {"train_loss": stats["loss"], "g_adv": stats["g_adv"], "d_loss": stats["d_loss"]}

    return EpochHook(
        extra={"disc": disc_net, "disc_optimizer": disc_optimizer},
        step=step,
        check=lambda ckpt: check_checkpoint(ckpt, True, Path(cfg.out_dir) / "checkpoint.pt"),
    )


def main(cfg: AdversarialConfig, resume: bool = False, export_dir: str | Path | None = None) -> Path:
    """Train the U-Net adversarially; the run folder is laid out as the plain trainer's."""
    return train_lungs(cfg, resume=resume, export_dir=export_dir, hook=hook)
