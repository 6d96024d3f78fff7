"""The lung model under dense disease: painted opacity and per-severity Dice.

Two checks that the plain Dice cannot make, because the manual-mask films are mostly mild
disease and Dice is dominated by the large clear lung:

- **painted**: every manual-mask film of the split is painted with each opacity pattern of
  :mod:`covidcxr.data.opacity` at each strength (seeded by file name and pattern, so every
  model sees the same films), and the lung model is scored against the unchanged manual mask:
  lung recall (the share of the manual lung the outline covers) and Dice;
- **severity tertiles**: Dice of the plain films in tertiles of expert severity (geographic
  extent 0-8, else the senior Brixia global score scaled to 0-8), on the films that have both
  a manual lung mask and a score.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...data.masks import IGNORE, LUNG, MASK_SOURCES, read_mask
from ...data.opacity import PATTERNS, paint
from ...data.severity import brixia_scores, expert_scores
from ...io import read_image
from ...metrics import bootstrap_ci, dice, with_ci

#: Strengths of the painted rows; the last is the "strongest setting" of the aims.
STRENGTHS = (0.33, 0.67, 1.0)


def seed_of(filename: str, pattern: str) -> int:
    """The painting seed of one film and pattern: the same for every model and run."""
    return int.from_bytes(hashlib.sha256(f"{filename}:{pattern}".encode()).digest()[:4], "little")


def recall(pred: np.ndarray, lung: np.ndarray, valid: np.ndarray) -> float:
    """Share of the manual lung (ignore pixels excluded) inside the predicted outline."""
    target = lung & valid
    return float((pred & target).sum() / target.sum()) if target.any() else float("nan")


def _manual(rec: dict) -> dict[str, np.ndarray]:
    return {s: read_mask(ref, s) for s, ref in rec["masks"].items() if MASK_SOURCES[s] == "manual"}


def painted_rows(segmenter, records: list[dict], strengths=STRENGTHS, patterns=PATTERNS) -> list[dict]:
    """One row per (film, manual mask, pattern, strength), plus ``strength`` 0 for the plain film.

    The film is painted inside its first manual mask (v7labs where there are two); each
    manual mask then scores the outline.
    """
    rows: list[dict] = []
    for rec in tqdm(records, desc="stress (painted opacity)", unit="img"):
        masks = _manual(rec)
        if not masks:
            continue
        image = read_image(rec["path"])
        first = next(iter(masks.values()))
        lung = torch.from_numpy(first == LUNG)
        settings = [("none", 0.0)] + [(p, s) for p in patterns for s in strengths]
        films = [image] + [
            paint(
                torch.from_numpy(image), lung, p, s, torch.Generator().manual_seed(seed_of(rec["filename"], p))
            ).numpy()
            for p, s in settings[1:]
        ]
        preds = segmenter.segment(films)
        for (pattern, strength), pred in zip(settings, preds):
            for source, target in masks.items():
                valid = target != IGNORE
                rows.append(
                    {
                        "filename": rec["filename"],
                        "source": source,
                        "pattern": pattern,
                        "strength": strength,
                        "recall": recall(pred, target == LUNG, valid),
                        "dice": dice(pred, target == LUNG, valid),
                    }
                )
    return rows


def severity_of(records: list[dict], data_root=None) -> dict[str, float]:
    """Expert severity on a 0-8 scale per file name: geographic extent, else senior Brixia x 8/18."""
    out = {r["filename"]: 8 * float(r["senior"].sum()) / 18 for r in brixia_scores(records, data_root)}
    out.update({r["filename"]: r["geographic_extent"] for r in expert_scores(records, data_root)})
    return out


def summarise(rows: list[dict], severity: dict[str, float]) -> dict:
    """Recall and Dice per strength (pooled over patterns) and per pattern at the strongest; Dice per tertile."""
    plain = {(r["filename"], r["source"]): r for r in rows if r["strength"] == 0}
    out: dict = {"plain": {m: bootstrap_ci([r[m] for r in plain.values()]) for m in ("recall", "dice")}}
    for s in sorted({r["strength"] for r in rows} - {0}):
        mine = [r for r in rows if r["strength"] == s]
        drop = [plain[(r["filename"], r["source"])]["dice"] - r["dice"] for r in mine]
        out[f"strength {s:g}"] = {
            "recall": bootstrap_ci([r["recall"] for r in mine]),
            "recall_p10": float(np.nanpercentile([r["recall"] for r in mine], 10)) if mine else float("nan"),
            "dice": bootstrap_ci([r["dice"] for r in mine]),
            "dice_drop": bootstrap_ci(drop),
            "per_pattern": {
                p: {m: float(np.nanmean([r[m] for r in mine if r["pattern"] == p])) for m in ("recall", "dice")}
                for p in sorted({r["pattern"] for r in mine})
            },
        }
    scored = [r for r in plain.values() if r["filename"] in severity]
    if len(scored) >= 3:
        cuts = np.quantile([severity[r["filename"]] for r in scored], [1 / 3, 2 / 3])
        tertile = {r["filename"]: int(np.searchsorted(cuts, severity[r["filename"]], side="right")) for r in scored}
        out["severity_tertiles"] = {
            name: {
                "severity_range": [
                    float(min(severity[r["filename"]] for r in scored if tertile[r["filename"]] == t)),
                    float(max(severity[r["filename"]] for r in scored if tertile[r["filename"]] == t)),
                ],
                "dice": bootstrap_ci([r["dice"] for r in scored if tertile[r["filename"]] == t]),
            }
            for t, name in enumerate(("lowest", "middle", "highest"))
            if any(tertile[r["filename"]] == t for r in scored)
        }
    return out


def markdown(summary: dict) -> str:
    """The stress rows as a Markdown table."""

    def cell(r: dict, fmt: str = ".4f") -> str:
        return with_ci(r, fmt)

    lines = [
        "Manual-mask films painted with synthetic opacity inside the lungs (mask unchanged), all five patterns pooled.",
        "",
        "| setting | n | lung recall | recall, 10th pct | Dice | Dice drop vs plain |",
        "|---|---|---|---|---|---|",
        f"| plain | {summary['plain']['dice']['n']} | {cell(summary['plain']['recall'])} | | {cell(summary['plain']['dice'])} | |",
    ]
    for key, r in summary.items():
        if key.startswith("strength"):
            lines.append(
                f"| {key} | {r['dice']['n']} | {cell(r['recall'])} | {r['recall_p10']:.3f} | {cell(r['dice'])} | {cell(r['dice_drop'], '+.4f')} |"
            )
    strongest = max((k for k in summary if k.startswith("strength")), default=None)
    if strongest:
        lines += [
            "",
            f"Per pattern at the strongest setting ({strongest}):",
            "",
            "| pattern | recall | Dice |",
            "|---|---|---|",
        ]
        for p, r in summary[strongest]["per_pattern"].items():
            lines.append(f"| {p} | {r['recall']:.4f} | {r['dice']:.4f} |")
    if "severity_tertiles" in summary:
        lines += [
            "",
            "Plain films by expert severity (0–8):",
            "",
            "| tertile | severity | n | Dice |",
            "|---|---|---|---|",
        ]
        for name, r in summary["severity_tertiles"].items():
            lo, hi = r["severity_range"]
            lines.append(f"| {name} | {lo:.1f}–{hi:.1f} | {r['dice']['n']} | {cell(r['dice'])} |")
    return "\n".join(lines) + "\n"


def contact_sheet(segmenter, records: list[dict], path, cols: int = 12, thumb: int = 160) -> int:
    """Every film of ``records`` as a thumbnail with the model's lung outline drawn (cyan), one PNG.

    For looking, not scoring: films without manual masks (a hospital's ICU films) show where
    the outline stops. Titles carry the file name and the lungs' share of the image.

    Returns:
        the number of films drawn.
    """
    from PIL import Image
    from scipy import ndimage

    from ...plots import pyplot

    plt = pyplot()
    rows = -(-len(records) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.75), squeeze=False)
    for ax, rec in zip(axes.flat, tqdm(records, desc="contact sheet", unit="img")):
        image = read_image(rec["path"])
        lung = segmenter.segment([image])[0]
        edge = lung & ~ndimage.binary_erosion(lung, iterations=max(1, image.shape[0] // 160))
        rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
        rgb[edge] = (0, 255, 255)
        small = Image.fromarray(rgb).resize((thumb, round(thumb * image.shape[0] / image.shape[1])))
        ax.imshow(small)
        ax.set_title(f"{Path(rec['filename']).stem[:14]} {lung.mean():.0%}", fontsize=5)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("lung outline (cyan) on every film; title: file, lungs' share of the image", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(records)
