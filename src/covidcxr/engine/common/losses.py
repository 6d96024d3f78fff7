"""Training losses: segmentation honouring an ignore label; the classifier's lung-attention penalty.

The penalty reads :func:`covidcxr.models.cam.class_activation`, the map inference shows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.masks import IGNORE, LUNG
from ...models.cam import class_activation


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


def outside_lungs_share(features: torch.Tensor, weight: torch.Tensor, lungs: torch.Tensor) -> torch.Tensor:
    """Share of the class-activation mass that lies outside the lungs, averaged over images and classes.

    Penalising ``|CAM_c|`` (:func:`class_activation`) outside the lungs asks every position
    outside them to add nothing to any logit: the evidence, for and against each class, has
    to come from inside the lungs. The map is upsampled to the input as Grad-CAM's is, so the
    penalty counts what the heat map shows.

    Args:
        features: (N, K, h, w) the last feature map (the Grad-CAM layer).
        weight: (C, K) the linear head's weights.
        lungs: (N, 1, H, W) lung mask of the input, in {0, 1}.

    Returns:
        scalar in [0, 1].
    """
    cam = F.interpolate(
        class_activation(features, weight).abs(), size=lungs.shape[-2:], mode="bilinear", align_corners=False
    )
    outside = (cam * (1 - lungs.float())).flatten(2).sum(2)
    return (outside / cam.flatten(2).sum(2).clamp_min(1e-6)).mean()
