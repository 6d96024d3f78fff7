"""Synthetic airspace opacity painted inside the lungs, the lung mask unchanged.

Dense disease makes a lung as bright as the heart and the diaphragm beside it, so the edge a
segmentation model follows disappears where the disease is. Painting such opacity into films
with manual lung masks, while the target stays the anatomical lung, teaches the model to
outline the lung through its opacities (training: :class:`PaintedOpacity`) and measures
whether it does (the stress rows of ``covidcxr evaluate segmentation``: :func:`paint`).

Five patterns, after the appearances a radiologist describes:

- ``lower_whiteout``: dense bilateral lower-zone opacity rising from the bases;
- ``peripheral_ggo``: patchy ground glass, peripheral and lower-zone predominant;
- ``unilateral_whiteout``: one lung opaque from the base to most of its height;
- ``effusion``: a homogeneous base with a meniscus (higher at the chest wall);
- ``cardiac_consolidation``: a dense blob against the heart border, lower zone.

The target brightness is the soft tissue around the lungs (a quantile from 0.5 to 0.9 of the
pixels that are not lung inside the lungs' bounding box: from the heart's grey to the
diaphragm's white), so at full strength the opacity has no edge against the diaphragm or the
heart. Up to 80% of the fine detail (ribs, vessels) is kept, as on a real film, or none. Every draw comes from one ``torch.Generator``, so a
seed reproduces a painted film exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .masks import LUNG

PATTERNS = ("lower_whiteout", "peripheral_ggo", "unilateral_whiteout", "effusion", "cardiac_consolidation")


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=gen))


def _noise(gen: torch.Generator, h: int, w: int, cells: int) -> torch.Tensor:
    """A smooth random field in [0, 1] of shape (h, w): a ``cells`` lattice, bicubic."""
    lattice = torch.rand(1, 1, cells, cells, generator=gen)
    return F.interpolate(lattice, size=(h, w), mode="bicubic", align_corners=False)[0, 0].clamp(0, 1)


def _lung_frames(lung: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per lung (image left, image right): its pixels and two coordinates inside it.

    The lungs are split at the column with the fewest lung pixels in the middle half of the
    lungs' width, every lung pixel going to one side. This is not
    :func:`covidcxr.infer.zones.split_lungs` (which keeps the two largest regions and drops small
    fragments, for Brixia zones) on purpose: the painting must reach every pixel of the manual
    mask, and the shipped lung model's recipe and its stress-test numbers were made with this rule. ``v`` runs from 0 at a lung's apex to 1 at its base; ``u`` from 0 at its
    medial edge to 1 at the chest wall, both measured per lung over its own extent.

    Returns:
        ``(region, v, u)`` per lung with any pixels; each (H, W).
    """
    h, w = lung.shape
    cols = lung.sum(0)
    xs = torch.nonzero(cols).flatten()
    if xs.numel() == 0:
        return []
    x0, x1 = int(xs[0]), int(xs[-1])
    a, b = x0 + (x1 - x0) // 4, x0 + 3 * (x1 - x0) // 4
    mid = a + int(torch.argmin(cols[a : b + 1])) if b > a else (x0 + x1) // 2
    yy = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    xx = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    frames = []
    for side, region in enumerate((lung & (xx < mid), lung & (xx >= mid))):
        if not region.any():
            continue
        ys, xs_ = yy[region], xx[region]
        top, bottom = float(ys.min()), float(ys.max())
        left, right = float(xs_.min()), float(xs_.max())
        v = ((yy - top) / max(bottom - top, 1.0)).clamp(0, 1)
        lateral = (left - xx) if side == 0 else (xx - right)  # negative inside: 0 at the chest wall
        u = (1 + lateral / max(right - left, 1.0)).clamp(0, 1)
        frames.append((region, v, u))
    return frames


def _lower(gen, frame, level: tuple[float, float], soft: tuple[float, float]) -> torch.Tensor:
    """Opacity rising from a lung's base to a wavy level (a share of the lung's height)."""
    region, v, u = frame
    edge = 1 - _uniform(gen, *level) + 0.08 * (_noise(gen, *v.shape, 4) - 0.5)
    return torch.sigmoid((v - edge) / _uniform(gen, *soft)) * region


def _pattern_field(pattern: str, frames, gen: torch.Generator) -> torch.Tensor:
    """The opacity weight in [0, 1] of one pattern over the whole image (0 outside the lungs)."""
    h, w = frames[0][0].shape
    field = torch.zeros(h, w)
    if pattern == "lower_whiteout":
        for frame in frames:
            field = field.maximum(_lower(gen, frame, (0.35, 0.9), (0.03, 0.12)))
    elif pattern == "peripheral_ggo":
        patches = _noise(gen, h, w, int(torch.randint(5, 10, (1,), generator=gen)))
        patches = torch.sigmoid((patches - 0.45) / 0.08)
        for region, v, u in frames:
            field = field.maximum(patches * (0.25 + 0.75 * u) * (0.4 + 0.6 * v) * region)
        field = field * _uniform(gen, 0.5, 0.8)  # ground glass: vessels stay visible
    elif pattern == "unilateral_whiteout":
        frame = frames[int(torch.randint(len(frames), (1,), generator=gen))]
        field = _lower(gen, frame, (0.7, 1.05), (0.03, 0.08))
    elif pattern == "effusion":
        chosen = [f for f in frames if float(torch.rand(1, generator=gen)) < 0.6] or frames[-1:]
        for region, v, u in chosen:
            meniscus = 1 - _uniform(gen, 0.15, 0.45) - _uniform(gen, 0.05, 0.25) * u**2
            field = field.maximum(torch.sigmoid((v - meniscus) / _uniform(gen, 0.01, 0.03)) * region)
    elif pattern == "cardiac_consolidation":
        region, v, u = frames[int(torch.randint(len(frames), (1,), generator=gen))]
        cv, cu, r = _uniform(gen, 0.55, 0.85), _uniform(gen, 0.0, 0.3), _uniform(gen, 0.2, 0.35)
        blob = torch.exp(-((v - cv) ** 2 + (u - cu) ** 2) / (2 * r**2))
        field = torch.sigmoid((blob - 0.5) / 0.1) * (0.7 + 0.3 * _noise(gen, h, w, 6)) * region
    else:
        raise ValueError(f"unknown opacity pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    return field.clamp(0, 1)


def paint(
    image: torch.Tensor, lung: torch.Tensor, pattern: str, strength: float, generator: torch.Generator
) -> torch.Tensor:
    """Paint one opacity pattern into the lungs of one image.

    Args:
        image: (1, H, W) or (H, W) float in [0, 1].
        lung: (H, W) bool, the anatomical lung (unchanged by painting).
        pattern: one of :data:`PATTERNS`.
        strength: 0 leaves the image as it is; 1 brings the densest part to soft-tissue brightness.
        generator: the source of every random draw.

    Returns:
        the painted image, the same shape as ``image``, in [0, 1].
    """
    frames = _lung_frames(lung.bool())
    if not frames or strength <= 0:
        return image
    squeeze = image.ndim == 2
    img = image[None] if squeeze else image
    h, w = img.shape[-2:]
    y, x = torch.nonzero(lung, as_tuple=True)
    box = img[0, int(y.min()) : int(y.max()) + 1, int(x.min()) : int(x.max()) + 1]
    around = box[~lung[int(y.min()) : int(y.max()) + 1, int(x.min()) : int(x.max()) + 1]]
    quantile = _uniform(generator, 0.5, 0.9)  # from the heart's grey to the diaphragm's white
    tissue = (around if around.numel() else img[0].flatten()).float().quantile(quantile)
    weight = _pattern_field(pattern, frames, generator) * strength
    sigma = max(0.5, 0.004 * h)
    weight = TF.gaussian_blur(weight[None, None], kernel_size=2 * int(3 * sigma) + 1, sigma=sigma)[0]
    detail_sigma = max(1.0, 0.01 * h)
    smooth = TF.gaussian_blur(img[None], kernel_size=2 * int(3 * detail_sigma) + 1, sigma=detail_sigma)[0]
    detail = (img - smooth) * _uniform(generator, 0.0, 0.8)
    out = (img * (1 - weight) + (tissue + detail) * weight).clamp(0, 1)
    return out[0] if squeeze else out


class PaintedOpacity(torch.nn.Module):
    """Paired training transform: with probability ``p``, one random pattern at a random strength.

    Draws from the global torch generator (the training loop reseeds it every epoch), so a
    resumed run paints the same films. The mask passes through unchanged.
    """

    def __init__(self, p: float = 0.5, strength: tuple[float, float] = (0.3, 1.0)) -> None:
        super().__init__()
        self.p, self.strength = p, strength

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if float(torch.rand(1)) >= self.p:
            return image, mask
        gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,))))
        pattern = PATTERNS[int(torch.randint(len(PATTERNS), (1,), generator=gen))]
        strength = _uniform(gen, *self.strength)
        lung = mask.as_subclass(torch.Tensor) == LUNG
        out = paint(image.as_subclass(torch.Tensor), lung, pattern, strength, gen)
        return tv_tensors.wrap(out, like=image), mask
