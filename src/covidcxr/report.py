"""The report a person reads: the X-ray, the lung outline, the heat map and the probabilities."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from .data.labels import CLASSES

DISCLAIMER = "Research and teaching only; not for clinical decisions."
#: Panels show the X-ray at most this many pixels on its longer side (about their size at 90 dpi).
PREVIEW_SIDE = 320
_COLORS = {"COVID-19": "#d62728", "Other pneumonia": "#ff7f0e", "No finding": "#2ca02c"}
#: Longest title drawn, in characters; a longer one keeps its start and end around an ellipsis.
TITLE_CHARS = 110


def plain_text(text: str, max_chars: int = TITLE_CHARS) -> str:
    """A user-supplied string (a file name) made safe to draw as text.

    Lone surrogates (from file names that are not UTF-8) become ``\\udcNN``, which the font
    renderer would refuse; control and other unprintable characters become ``\\xNN``, for
    which no font has a glyph; a string longer than ``max_chars`` keeps its start and its end
    (the extension) around an ellipsis. Draw the result with ``parse_math=False`` too, so that
    ``$`` stays a dollar sign instead of opening matplotlib math text.

    Args:
        text: Any string.
        max_chars: Longest result, in characters.

    Returns:
        Printable text of at most ``max_chars`` characters.
    """
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(ch if unicodedata.category(ch)[0] != "C" else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > max_chars:
        tail = max_chars // 3
        text = text[: max_chars - tail - 1] + "\u2026" + text[-tail:]
    return text


def _preview(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk so its longer side is at most ``max_side``, and the factor used."""
    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    if f == 1.0:
        return image, f
    small = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
        (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR
    )
    return np.asarray(small, np.float32) / 255, f


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return (
        np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST))
        > 127
    )


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
    findings: dict | None = None,
    saliency_name: str = "Grad-CAM",
) -> None:
    """Write a PNG: X-ray with lung outline (and lesions, Brixia zones) | heat map | probabilities, severity.

    Args:
        image: (H, W) in [0, 1]; mask: (H, W) bool lungs; heat: (H, W) in [0, 1] or None.
        probabilities: class -> calibrated probability.
        severity: the ``severity`` object of a prediction; lesions (K, H, W) bool and
            zones (H, W) uint8 (0 outside, 1-6 = A-F) draw its panel.
        findings: the ``findings`` object of a prediction (what the diagnosis rests on), or None.
        saliency_name: what the heat map is ("Grad-CAM", "class activation").
    """
    from matplotlib.figure import Figure

    small, _ = _preview(image, PREVIEW_SIDE)
    lungs = _shrink_mask(mask, small.shape)
    sev_panel = severity is not None and lesions is not None and zones is not None
    panels = 2 + (heat is not None)
    sev_line = []
    if severity is not None:
        b = severity["brixia"]
        sev_line = [
            f"severity: geographic extent {severity['geographic_extent']:.1f}/8, opacity {severity['opacity']:.1f}/6, Brixia {b['global']:.1f}/18"
        ]
    notes = (
        [DISCLAIMER, *sev_line]
        + ([findings_line(findings)] if findings else [])
        + [f"! {w}" for w in (warnings or [])][:3]
    )
    # Fixed margins instead of tight_layout, which measured every tick label and doubled the drawing time.
    # A Figure outside pyplot: nothing global keeps it, so it is freed even when drawing fails
    # (an unclosed pyplot figure cost about 5 MB per failed request of the server).
    fig = Figure(figsize=(3.3 * panels + 0.6, 3.9))
    axes = fig.subplots(
        1,
        panels,
        gridspec_kw={
            "width_ratios": [1] * (panels - 1) + [1.2],
            "left": 0.01,
            "right": 0.99,
            "top": 0.86,
            "bottom": 0.08 + 0.035 * len(notes),
            "wspace": 0.06,
        },
    )
    ax = axes[0]
    if sev_panel:  # lesions, Brixia zones and their scores drawn into the lung panel
        _severity_panel(ax, small, lungs, severity, lesions, zones, f"lungs ({mask.mean():.0%} of the image)")
    else:
        ax.imshow(small, cmap="gray", vmin=0, vmax=1)
        if lungs.any():
            ax.contour(lungs, levels=[0.5], colors="#00e5ff", linewidths=1.0)
        ax.set_title(f"lungs ({mask.mean():.0%} of the image)", fontsize=9)
        ax.axis("off")
    if heat is not None:
        ax = axes[1]
        ax.imshow(small, cmap="gray", vmin=0, vmax=1)
        h_small = (
            np.asarray(
                Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
                    (small.shape[1], small.shape[0]), Image.Resampling.BILINEAR
                ),
                np.float32,
            )
            / 255
        )
        ax.imshow(np.ma.masked_less(h_small, 0.15), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        share = f", {lung_share:.0%} inside the lungs" if lung_share is not None and np.isfinite(lung_share) else ""
        ax.set_title(f"{saliency_name}{share}", fontsize=9)
        ax.axis("off")
    ax = axes[-1]
    names = list(CLASSES)
    vals = [probabilities[c] for c in names]
    ax.barh(range(len(names))[::-1], vals, color=[_COLORS[c] for c in names], alpha=0.85, height=0.6)
    for i, (name, v) in zip(range(len(names))[::-1], zip(names, vals)):
        ax.text(0.02, i + 0.38, f"{name}: {v:.0%}", va="bottom", fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(names) - 0.1)
    ax.set_xticks([0, 0.5, 1], ["0", "50%", "100%"], fontsize=8)
    ax.set_title("diagnosis probabilities", fontsize=9)
    ax.spines[["top", "right", "left"]].set_visible(False)
    # File names reach the title (and may reach the notes): plain text, never math text ("a$x^{$.png").
    fig.text(
        0.01, 0.01, "\n".join(plain_text(n, 200) for n in notes), fontsize=7, va="bottom", color="0.3", parse_math=False
    )
    fig.suptitle(plain_text(title), fontsize=9, parse_math=False)
    fig.savefig(
        path, format="png", dpi=90, pil_kwargs={"compress_level": 1}
    )  # fast PNG encoding; the report is small anyway


def findings_line(findings: dict) -> str:
    """One line of the findings behind the diagnosis, for the report."""
    opacity, pattern = findings["airspace_opacity"], findings["covid_pattern"]
    return (
        f"findings: airspace opacity {opacity['probability']:.0%} ({'present' if opacity['present'] else 'not found'}); "
        f"COVID-19 pattern {pattern['score']:.0%} (lesions: bilateral {pattern['bilateral']:.0%}, "
        f"peripheral {pattern['peripheral']:.0%}, lower zones {pattern['lower_zone']:.0%})"
    )


def _severity_panel(
    ax, small: np.ndarray, lungs: np.ndarray, severity: dict, lesions: np.ndarray, zones: np.ndarray, title: str
) -> None:
    """Lung outline, lesions tinted over the X-ray, Brixia zone borders and each zone's score."""
    from .data.severity import ZONES
    from .plots import lesion_overlay

    les = np.stack([_shrink_mask(m, small.shape) for m in lesions])
    z = np.asarray(Image.fromarray(zones).resize((small.shape[1], small.shape[0]), Image.Resampling.NEAREST))
    rgb = lesion_overlay(small, les, lungs)
    border = np.zeros(z.shape, bool)  # zone borders inside the lungs, drawn into the pixels (cheaper than contours)
    border[1:] |= (z[1:] != z[:-1]) & (z[1:] > 0) & (z[:-1] > 0)
    border[:, 1:] |= (z[:, 1:] != z[:, :-1]) & (z[:, 1:] > 0) & (z[:, :-1] > 0)
    rgb[border] = (255, 255, 255)
    ax.imshow(rgb)
    for k, name in enumerate(ZONES, start=1):
        ys, xs = np.nonzero(z == k)
        if len(ys):
            ax.text(
                xs.mean(),
                ys.mean(),
                f"{name} {severity['brixia'][name]:.1f}",
                color="white",
                fontsize=7,
                ha="center",
                va="center",
                fontweight="bold",
            )
    shares = severity["lesions"]
    short = {"ground-glass": "GGO", "consolidation": "cons."}
    ax.set_title(
        title
        + "\n"
        + "  ".join(f"{short.get(k, k)} R {v['right_lung']:.0%} L {v['left_lung']:.0%}" for k, v in shares.items()),
        fontsize=8,
    )
    ax.axis("off")
