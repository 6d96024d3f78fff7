"""Resizing shared by training and inference, and paired augmentation.

Paired transforms draw their random parameters once per sample and apply them to image and
mask alike (torchvision.transforms.v2 with ``tv_tensors.Mask``: nearest for the mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from .opacity import PaintedOpacity


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


def segmentation_augment(
    rotation: float = 10.0, translate: float = 0.06, scale: tuple[float, float] = (0.85, 1.15), opacity: float = 0.0
) -> v2.Compose:
    """Geometric (paired) then intensity (image only) augmentation for lung segmentation.

    No flips: left and right lungs differ (the heart), and a mirrored chest is not a
    plausible radiograph. ``opacity`` > 0: that share of images also gets
    :class:`~covidcxr.data.opacity.PaintedOpacity` (after the geometry, so it follows the moved
    mask).
    """
    steps = [v2.RandomAffine(degrees=rotation, translate=(translate, translate), scale=scale, fill=0)]
    if opacity > 0:
        steps.append(PaintedOpacity(p=opacity))
    return v2.Compose([*steps, IntensityJitter()])


class AcquisitionJitter(torch.nn.Module):
    """Loss of resolution, blur and noise, drawn per image (masks untouched).

    Sources differ in how their images were processed (publication figures are shrunk and
    re-compressed, archive images are not). Degrading every source at random makes that
    difference a weaker cue for the diagnosis.
    """

    def __init__(
        self,
        p_downscale: float = 0.3,
        min_scale: float = 0.35,
        p_blur: float = 0.2,
        p_noise: float = 0.3,
        max_noise: float = 0.04,
    ) -> None:
        super().__init__()
        self.p_downscale, self.min_scale = p_downscale, min_scale
        self.p_blur, self.p_noise, self.max_noise = p_blur, p_noise, max_noise
        self.blur = v2.GaussianBlur(5, sigma=(0.3, 1.5))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = image.as_subclass(torch.Tensor)
        u = torch.rand(4)
        if u[0] < self.p_downscale:
            h, w = out.shape[-2:]
            s = self.min_scale + float(u[3]) * (1 - self.min_scale)
            small = F.interpolate(
                out[None],
                size=(max(8, int(h * s)), max(8, int(w * s))),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            out = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
        if u[1] < self.p_blur:
            out = self.blur(out)
        if u[2] < self.p_noise:
            out = out + torch.randn_like(out) * float(torch.rand(1)) * self.max_noise
        return tv_tensors.wrap(out.clamp(0, 1), like=image), mask


def diagnosis_augment(
    rotation: float = 10.0, translate: float = 0.05, scale: tuple[float, float] = (0.9, 1.1)
) -> v2.Compose:
    """Augmentation of lung views for the diagnosis: small affine, intensity, acquisition.

    No flips (a mirrored chest is not a plausible radiograph); geometric changes move the
    lung mask with the image, so masked views stay aligned.
    """
    return v2.Compose(
        [
            v2.RandomAffine(degrees=rotation, translate=(translate, translate), scale=scale, fill=0),
            IntensityJitter(brightness=0.1, contrast=0.25, gamma=0.35),
            AcquisitionJitter(),
        ]
    )
