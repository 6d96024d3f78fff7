"""The report a person reads: the X-ray, the lung outline, the heat map and the probabilities."""

from __future__ import annotations

import textwrap
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import __version__
from .data.labels import CLASSES
from .infer.uncertainty import CAVEAT
from .infer.zones import zone_borders

if TYPE_CHECKING:
    from .infer import Result

DISCLAIMER = "Research and teaching only; not for clinical decisions."
#: Panels show the X-ray at most this many pixels on its longer side (about their size at REPORT_DPI).
PREVIEW_SIDE = 560
REPORT_DPI = 170
#: Notes under the panels: characters per line, and the height of a line in inches (7.5 pt and leading).
NOTE_CHARS, NOTE_INCHES = 170, 0.145
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


def save_report(path, image: np.ndarray, result: Result) -> None:
    """Write the report PNG of a reading: X-ray with lungs, lesions and zones | heat map | probabilities, notes.

    Args:
        path: a file path or a binary file object.
        image: (H, W) in [0, 1], the image read.
        result: its :class:`covidcxr.infer.Result` (read, not refused).
    """
    from matplotlib.figure import Figure

    small, _ = _preview(image, PREVIEW_SIDE)
    lungs = _shrink_mask(result.lung_mask, small.shape)
    heat = result.heatmap
    panels = 2 + (heat is not None)
    notes = [line for note in report_notes(result) for line in textwrap.wrap(plain_text(note, 400), NOTE_CHARS)]
    # A Figure outside pyplot: nothing global keeps it, so it is freed even when drawing fails.
    # Fixed margins instead of tight_layout, which measured every tick label and doubled the drawing time.
    height = 4.6 + NOTE_INCHES * len(notes)
    fig = Figure(figsize=(3.6 * panels + 0.8, height))
    axes = fig.subplots(1, panels, gridspec_kw=_grid(panels, len(notes), height))
    _lung_panel(axes[0], small, lungs, result)
    if heat is not None:
        _heat_panel(fig, axes[1], small, heat, result)
    _probability_panel(axes[-1], result.probabilities, result.findings)
    # File names reach the title (and may reach the notes): plain text, never math text ("a$x^{$.png").
    fig.text(
        0.01,
        0.01,
        "\n".join(plain_text(n, 220) for n in notes),
        fontsize=7.5,
        va="bottom",
        color="0.25",
        parse_math=False,
    )
    name = Path(result.path or "image").name
    first, second = headline_lines(result)
    fig.suptitle(
        plain_text(f"{name}: {first}") + "\n" + plain_text(second, 2 * TITLE_CHARS),
        fontsize=10.5,
        parse_math=False,
        color="#b35900" if result.uncertain else "black",
    )
    fig.savefig(path, format="png", dpi=REPORT_DPI, pil_kwargs={"compress_level": 1})  # fast PNG encoding


def _grid(panels: int, notes: int, height: float) -> dict:
    bottom = (0.75 + NOTE_INCHES * notes) / height  # the lesion legend, then the notes
    top = 1 - 1.25 / height  # the two headline lines, then panel titles of up to three lines
    return {
        "width_ratios": [1] * (panels - 1) + [1.1],
        "left": 0.01,
        "right": 0.98,
        "top": top,
        "bottom": bottom,
        "wspace": 0.12,
    }


def headline_lines(result: Result) -> tuple[str, str]:
    """The report's headline: what a radiologist would write first, then the probabilities behind the reading.

    First line: the RSNA category and the opacity finding with its extent (without the findings, the
    reading alone). Second line: the reading, P(disease) against its threshold, P(COVID-19 | disease),
    which is near chance, and UNCERTAIN when the reading is.
    """
    p = result.probabilities
    reading = f"{result.prediction} ({p[result.prediction]:.0%})"
    if not result.findings:
        return reading + ("  -  UNCERTAIN" if result.uncertain else ""), "probabilities: " + ", ".join(
            f"{c} {v:.0%}" for c, v in p.items()
        )
    opacity = result.findings["airspace_opacity"]
    extent = f"geographic extent {result.findings['geographic_extent']:.1f} of 8"
    found = f"airspace opacity, {extent}" if opacity["present"] else f"no airspace opacity called ({extent})"
    first = f"{result.category['label']}: {found}" if result.category else found
    q = result.findings["covid_pattern"]["score"]
    second = (
        f"Reading: {result.prediction}; P(disease) {opacity['probability']:.0%} "
        f"(called at {opacity.get('threshold', 0.5):.0%}); P(COVID-19 | disease) {q:.0%}, near chance"
    )
    return first, second + ("  -  UNCERTAIN" if result.uncertain else "")


def report_notes(result: Result) -> list[str]:
    """The lines under the panels: uncertainty, category, severity and findings in words, warnings, models, caveat."""
    notes = [f"Uncertain: {r['text']}." for r in result.uncertain_reasons]
    if result.uncertain and not result.uncertain_reasons:
        notes.append(f"Uncertain: {result.uncertain_reason}.")
    if result.category is not None:
        notes.append(f"{result.category['label']} (RSNA category): {'; '.join(result.category['reasons'])}.")
    if result.severity is not None:
        b = result.severity["brixia"]
        notes.append(
            f"Severity: geographic extent {result.severity['geographic_extent']:.1f} of 8, "
            f"opacity {result.severity['opacity']:.1f} of 6, Brixia score {b['global']:.1f} of 18 (zones A-F, 0-3 each)."
        )
    if result.findings:
        notes.append(findings_line(result.findings))
    notes += [f"Warning: {w}" for w in result.warnings][:3]
    models = ", ".join(f"{m['name']} ({m['sha256'][:8]})" for m in result.model.values())
    notes.append(f"Models: {models}; covidcxr {__version__}.")
    if result.category is not None:
        notes.append(f"Not measured: {result.category['cannot_see']}.")
    notes.append(f"{CAVEAT} {DISCLAIMER}")
    return notes


def _lung_panel(ax, small: np.ndarray, lungs: np.ndarray, result: Result) -> None:
    title = f"Lungs: {result.lung_mask.mean():.0%} of the image"
    if result.severity is not None and result.lesions is not None and result.zones is not None:
        _severity_panel(ax, small, lungs, result.severity, result.lesions, result.zones, title)
        return
    ax.imshow(small, cmap="gray", vmin=0, vmax=1)
    if lungs.any():
        ax.contour(lungs, levels=[0.5], colors="#00e5ff", linewidths=1.0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _heat_panel(fig, ax, small: np.ndarray, heat: np.ndarray, result: Result) -> None:
    ax.imshow(small, cmap="gray", vmin=0, vmax=1)
    if not np.any(heat > 0):  # nothing to draw: say so rather than show a bare X-ray
        found = "lesion evidence" if result.saliency_method == "lesion evidence" else "evidence for the predicted class"
        ax.text(
            0.5, 0.5, f"no {found} found", transform=ax.transAxes, ha="center", va="center", fontsize=9,
            color="white", bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"},
        )  # fmt: skip
        ax.set_title(f"Where the reading looked ({result.saliency_method or 'heat map'})", fontsize=9)
        ax.axis("off")
        return
    h_small = np.asarray(
        Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(
            (small.shape[1], small.shape[0]), Image.Resampling.BILINEAR
        ),
        np.float32,
    )
    shown = ax.imshow(np.ma.masked_less(h_small / 255, 0.15), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    share = result.saliency_in_lungs
    inside = f"\n{share:.0%} of it inside the lungs" if share is not None and np.isfinite(share) else ""
    ax.set_title(f"Where the reading looked ({result.saliency_method or 'heat map'}){inside}", fontsize=9)
    ax.axis("off")
    bar = fig.colorbar(shown, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02, ticks=[0, 0.5, 1])
    bar.ax.set_xticklabels(["none", "", "most"], fontsize=7)
    bar.set_label("share of the evidence (below 15% not drawn)", fontsize=7)


def _probability_panel(ax, probabilities: dict[str, float], findings: dict | None = None) -> None:
    """The class probabilities; with findings, a line under them saying the reading follows P(disease), not the longest bar."""
    names = list(CLASSES)
    vals = [probabilities[c] for c in names]
    rows = range(len(names))[::-1]
    ax.barh(rows, vals, color=[_COLORS[c] for c in names], alpha=0.85, height=0.55)
    for i, name, v in zip(rows, names, vals, strict=True):
        ax.text(0.01, i + 0.33, f"{name}: {v:.0%}", va="bottom", fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(0, 1.02)
    ax.set_ylim(-0.5, len(names) - 0.05)
    ax.set_xticks([0, 0.5, 1], ["0%", "50%", "100%"], fontsize=8)
    ax.set_title("Diagnosis probabilities", fontsize=9)
    ax.spines[["top", "right", "left"]].set_visible(False)
    opacity = (findings or {}).get("airspace_opacity")
    if opacity and "threshold" in opacity:
        ax.set_xlabel(
            f"The reading is disease when P(disease) = 1 - P(No finding) is at least {opacity['threshold']:.0%}"
            f"\n(here {opacity['probability']:.0%}), not the longest bar",
            fontsize=8,
        )


def findings_line(findings: dict) -> str:
    """One line of the findings behind the diagnosis, for the report."""
    opacity, pattern = findings["airspace_opacity"], findings["covid_pattern"]
    return (
        f"Findings: airspace opacity {opacity['probability']:.0%} ({'present' if opacity['present'] else 'not found'}); "
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
    rgb[zone_borders(z)] = (255, 255, 255)  # drawn into the pixels (cheaper than contours)
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
    ax.set_title(
        title
        + "\n"
        + "\n".join(
            f"{k} opacity: right lung {v['right_lung']:.0%}, left {v['left_lung']:.0%}"
            if k == "ground-glass"
            else f"{k}: right lung {v['right_lung']:.0%}, left {v['left_lung']:.0%}"
            for k, v in shares.items()
        ),
        fontsize=8,
    )
    ax.axis("off")
    from matplotlib.patches import Patch

    from .plots import LESION_COLORS

    handles = [
        Patch(color=np.asarray(LESION_COLORS[k]) / 255, label=name.replace("ground-glass", "ground-glass opacity"))
        for k, name in enumerate(shares)
    ]
    handles += [Patch(color="#00e5ff", label="lung outline"), Patch(fc="white", ec="0.4", label="zone A-F: score 0-3")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, ncol=2, frameon=False)
