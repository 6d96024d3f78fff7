"""Resizing shared by training and inference, and paired augmentation.

Paired transforms draw their random parameters once per sample and apply them to image and
mask alike (torchvision.transforms.v2 with ``tv_tensors.Mask``: nearest for the mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an image to the model's input size (bilinear, antialiased when shrinking).

    Shape:
        (H, W) or (C, H, W) float -> (C, *size); a 2-D input gets C = 1.
    """
    if image.ndim == 2:
        image = image[None]
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label mask, (H, W) integer -> ``size``."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(mask.dtype)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of logits back to an image's own pixel size, (N, K, h, w) -> (N, K, *size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class IntensityJitter(torch.nn.Module):
    """Brightness, contrast and gamma changes of an image in [0, 1] (masks untouched)."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.2, gamma: float = 0.3) -> None:
        super().__init__()
        self.brightness, self.contrast, self.gamma = brightness, contrast, gamma

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(3) * 2 - 1
        gamma = float(torch.exp(u[0] * self.gamma))
        out = image.clamp(0, 1) ** gamma
        mean = out.mean()
        out = (out - mean) * (1 + float(u[1]) * self.contrast) + mean + float(u[2]) * self.brightness
        return tv_tensors.wrap(out.clamp(0, 1), like=image), mask


def segmentation_augment(rotation: float = 10.0, translate: float = 0.06, scale: tuple[float, float] = (0.85, 1.15)) -> v2.Compose:
    """Geometric (paired) then intensity (image only) augmentation for lung segmentation.

    No flips: left and right lungs differ (the heart), and a mirrored chest is not a
    plausible radiograph.
    """
    return v2.Compose(
        [
            v2.RandomAffine(degrees=rotation, translate=(translate, translate), scale=scale, fill=0),
            IntensityJitter(),
        ]
    )
