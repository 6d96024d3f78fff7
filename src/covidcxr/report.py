"""The report a person reads: the X-ray, the lung outline, the heat map and the probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .data.labels import CLASSES

DISCLAIMER = "Research and teaching only; not for clinical decisions."
_COLORS = {"COVID-19": "#d62728", "Other pneumonia": "#ff7f0e", "No finding": "#2ca02c"}


def _preview(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk so its longer side is at most ``max_side``, and the factor used."""
    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    if f == 1.0:
        return image, f
    small = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32) / 255, f


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def save_report(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    probabilities: dict[str, float],
    heat: np.ndarray | None = None,
    title: str = "",
    warnings: list[str] | None = None,
    lung_share: float | None = None,
    severity: dict | None = None,
    lesions: np.ndarray | None = None,
    zones: np.ndarray | None = None,
) -> None:
    """Write a PNG: X-ray with lung outline | heat map | lesions and Brixia zones | probabilities and severity.

    Args:
        image: (H, W) in [0, 1]; mask: (H, W) bool lungs; heat: (H, W) in [0, 1] or None.
        probabilities: class -> calibrated probability.
        severity: the ``severity`` object of a prediction; lesions (K, H, W) bool and
            zones (H, W) uint8 (0 outside, 1-6 = A-F) draw its panel.
    """
    from .plots import _plt

    plt = _plt()
    small, _ = _preview(image, 512)
    lungs = _shrink_mask(mask, small.shape)
    sev_panel = severity is not None and lesions is not None and zones is not None
    panels = 2 + (heat is not None) + sev_panel
    fig, axes = plt.subplots(1, panels, figsize=(3.3 * panels + 0.6, 3.9), gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.2]})
    ax = axes[0]
    ax.imshow(small, cmap="gray", vmin=0, vmax=1)
    if lungs.any():
        ax.contour(lungs, levels=[0.5], colors="#00e5ff", linewidths=1.0)
    ax.set_title(f"lungs ({mask.mean():.0%} of the image)", fontsize=9)
    ax.axis("off")
    if heat is not None:
        ax = axes[1]
        ax.imshow(small, cmap="gray", vmin=0, vmax=1)
        h_small = np.asarray(Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize((small.shape[1], small.shape[0]), Image.Resampling.BILINEAR), np.float32) / 255
        ax.imshow(np.ma.masked_less(h_small, 0.15), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        share = f", {lung_share:.0%} inside the lungs" if lung_share is not None and np.isfinite(lung_share) else ""
        ax.set_title(f"Grad-CAM{share}", fontsize=9)
        ax.axis("off")
    if sev_panel:
        _severity_panel(axes[-2], small, lungs, severity, lesions, zones)
    ax = axes[-1]
    names = list(CLASSES)
    vals = [probabilities[c] for c in names]
    ax.barh(range(len(names))[::-1], vals, color=[_COLORS[c] for c in names])
    for i, v in zip(range(len(names))[::-1], vals):
        ax.text(min(v + 0.02, 0.8), i, f"{v:.0%}", va="center", fontsize=9)
    ax.set_yticks(range(len(names))[::-1], names, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_title("diagnosis probabilities", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    if severity is not None:
        b = severity["brixia"]
        ax.text(0.0, -0.32, f"severity: geographic extent {severity['geographic_extent']:.1f}/8, opacity {severity['opacity']:.1f}/6\nBrixia {b['global']:.1f}/18", transform=ax.transAxes, fontsize=8, va="top")
    notes = [DISCLAIMER] + [f"! {w}" for w in (warnings or [])][:3]
    fig.text(0.01, 0.01, "\n".join(notes), fontsize=7, va="bottom", color="0.3")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * len(notes), 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _severity_panel(ax, small: np.ndarray, lungs: np.ndarray, severity: dict, lesions: np.ndarray, zones: np.ndarray) -> None:
    """Lesions tinted over the X-ray, Brixia zone borders and each zone's score."""
    from .data.severity import ZONES
    from .plots import lesion_overlay

    les = np.stack([_shrink_mask(m, small.shape) for m in lesions])
    z = np.asarray(Image.fromarray(zones).resize((small.shape[1], small.shape[0]), Image.Resampling.NEAREST))
    ax.imshow(lesion_overlay(small, les, lungs))
    if z.any():
        ax.contour(z, levels=np.arange(1, 7) - 0.5 + 0.01, colors="white", linewidths=0.5, alpha=0.7)
    for k, name in enumerate(ZONES, start=1):
        ys, xs = np.nonzero(z == k)
        if len(ys):
            ax.text(xs.mean(), ys.mean(), f"{name} {severity['brixia'][name]:.1f}", color="white", fontsize=7, ha="center", va="center",
                    bbox={"facecolor": "black", "alpha": 0.45, "pad": 1, "lw": 0})
    shares = severity["lesions"]
    short = {"ground-glass": "GGO", "consolidation": "cons."}
    ax.set_title("  ".join(f"{short.get(k, k)} R {v['right_lung']:.0%} L {v['left_lung']:.0%}" for k, v in shares.items()), fontsize=8)
    ax.axis("off")
