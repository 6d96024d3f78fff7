"""Segmentation loss honouring an ignore label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.masks import IGNORE, LUNG


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the pixels that are not ``IGNORE``.

    Args:
        logits: (N, 1, H, W) raw scores.
        target: (N, H, W) integer labels 0 background, 1 lung, 2 ignore.
    """
    logits = logits[:, 0].float()
    valid = (target != IGNORE).float()
    y = (target == LUNG).float()
    bce = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * valid).sum() / valid.sum().clamp_min(1)
    p = torch.sigmoid(logits) * valid
    inter = (p * y).sum(dim=(1, 2))
    dice = (2 * inter + 1) / (p.sum(dim=(1, 2)) + y.sum(dim=(1, 2)) + 1)
    return bce + dice_weight * (1 - dice.mean())
