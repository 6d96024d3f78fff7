"""Evaluation of a lung-segmentation model at each image's own pixel size.

Per image: Dice, IoU and HD95 of the post-processed mask against every mask of the image;
summarised per mask source with bootstrap 95% CIs. Model-generated lungVAE masks are
reported apart, as agreement. The human ceiling is the Dice between the v7labs and
GeneralBlockchain masks on the images both annotated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import load_records
from ..data.masks import IGNORE, LUNG, MASK_SOURCES, read_mask
from ..io import read_image
from ..metrics import bootstrap_ci, dice, hd95, iou
from ..models.weights import WeightSpec, shipped_spec_path
from ..pipeline import LungSegmenter

log = logging.getLogger(__name__)


def _summarise(rows: list[dict]) -> dict:
    return {m: bootstrap_ci([r[m] for r in rows]) for m in ("dice", "iou", "hd95")}


def inter_annotator(records: list[dict]) -> dict:
    """Dice and HD95 between v7labs and GeneralBlockchain lung masks where both exist."""
    rows = []
    for rec in records:
        if "v7labs" in rec["masks"] and "generalblockchain" in rec["masks"]:
            a = read_mask(rec["masks"]["v7labs"], "v7labs")
            b = read_mask(rec["masks"]["generalblockchain"], "generalblockchain")
            if a.shape != b.shape:
                continue
            valid = a != IGNORE
            rows.append({"filename": rec["filename"], "dice": dice(a == LUNG, b == LUNG, valid), "iou": iou(a == LUNG, b == LUNG, valid), "hd95": hd95(a == LUNG, b == LUNG)})
    return {"n_images": len(rows), **_summarise(rows), "per_image": rows}


def evaluate_segmentation(
    spec_path: str | Path | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path = "eval/segmentation",
    update_spec: bool = False,
    limit: int = 0,
) -> dict:
    """Evaluate on ``split``; writes ``segmentation_eval.json`` and plots into ``out_dir``.

    Returns:
        summary dict: ``per_source`` (manual sources and ``all_manual``), ``agreement``
        (lungVAE), ``human_ceiling`` (on the same split and on all images).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = LungSegmenter.from_spec(spec_path)
    records = load_records(data_root)
    chosen = [r for r in records if r["split"] == split and r["masks"]]
    if limit:
        per_source: dict[str, int] = {}
        kept = []
        for r in chosen:
            if any(per_source.get(s, 0) < limit for s in r["masks"]):
                kept.append(r)
                for s in r["masks"]:
                    per_source[s] = per_source.get(s, 0) + 1
        chosen = kept
    rows: list[dict] = []
    for rec in tqdm(chosen, desc=f"evaluating ({split})", unit="img"):
        image = read_image(rec["path"])
        pred = segmenter.segment([image])[0]
        for source, ref in rec["masks"].items():
            target = read_mask(ref, source)
            valid = target != IGNORE
            lung = target == LUNG
            rows.append(
                {
                    "filename": rec["filename"],
                    "dataset": rec["dataset"],
                    "source": source,
                    "height": image.shape[0],
                    "width": image.shape[1],
                    "dice": dice(pred, lung, valid),
                    "iou": iou(pred, lung, valid),
                    "hd95": hd95(pred & valid, lung),
                }
            )
    manual = [r for r in rows if MASK_SOURCES[r["source"]] == "manual"]
    summary = {
        "weights": str(spec_path or shipped_spec_path("lungs")),
        "split": split,
        "per_source": {s: _summarise([r for r in manual if r["source"] == s]) for s in sorted({r["source"] for r in manual})},
        "agreement": {s: _summarise([r for r in rows if r["source"] == s]) for s in sorted({r["source"] for r in rows}) if MASK_SOURCES[s] == "generated"},
        "human_ceiling": {split: {k: v for k, v in inter_annotator(chosen).items() if k != "per_image"}, "all": {k: v for k, v in inter_annotator(records).items() if k != "per_image"}},
    }
    summary["per_source"]["all_manual"] = _summarise(manual)
    (out / "segmentation_eval.json").write_text(json.dumps({**summary, "per_image": rows}, indent=2))
    _plot(rows, summary, out / "segmentation_eval.png")
    (out / "segmentation_eval.md").write_text(markdown_table(summary))
    if update_spec:
        path = Path(spec_path) if spec_path else shipped_spec_path("lungs")
        spec = WeightSpec.from_json(path)
        spec.metrics = {
            "split": split,
            "command": f"covidcxr evaluate segmentation --weights {path.name} --split {split}",
            "dice": {s: {k: round(v, 4) if isinstance(v, float) else v for k, v in res["dice"].items()} for s, res in summary["per_source"].items()},
            "hd95_px": {s: round(res["hd95"]["value"], 2) for s, res in summary["per_source"].items()},
            "human_ceiling_dice": round(summary["human_ceiling"]["all"]["dice"]["value"], 4),
        }
        spec.to_json(path)
    return summary


def markdown_table(summary: dict) -> str:
    """The summary as a Markdown table: value (95% CI) per mask source and metric."""

    def cell(r: dict, fmt: str) -> str:
        return f"{r['value']:{fmt}} ({r['ci_low']:{fmt}}–{r['ci_high']:{fmt}})"

    lines = [
        f"Split: {summary['split']}. Masks at each image's own pixel size; 95% bootstrap CIs.",
        "",
        "| mask source | kind | n | Dice | IoU | HD95 (px) |",
        "|---|---|---|---|---|---|",
    ]
    groups = [(s, "manual", r) for s, r in summary["per_source"].items()] + [(s, "model-generated (agreement)", r) for s, r in summary["agreement"].items()]
    for source, kind, r in groups:
        lines.append(f"| {source} | {kind} | {r['dice']['n']} | {cell(r['dice'], '.4f')} | {cell(r['iou'], '.4f')} | {cell(r['hd95'], '.1f')} |")
    for name, r in summary["human_ceiling"].items():
        label = "all images" if name == "all" else f"{name} split"
        lines.append(f"| human ceiling: v7labs vs GeneralBlockchain, {label} | manual vs manual | {r['n_images']} | {cell(r['dice'], '.4f')} | {cell(r['iou'], '.4f')} | {cell(r['hd95'], '.1f')} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], summary: dict, path: Path) -> None:
    from ..plots import _plt

    plt = _plt()
    sources = sorted({r["source"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "dice", "Dice"), (axes[1], "hd95", "HD95 (px)")):
        data = [[r[metric] for r in rows if r["source"] == s and np.isfinite(r[metric])] for s in sources]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(sources) + 1), [f"{s}\n(n={len(d)})" for s, d in zip(sources, data)], fontsize=8)
        ax.set_ylabel(label)
    ceiling = summary["human_ceiling"]["all"]["dice"]["value"]
    if np.isfinite(ceiling):
        axes[0].axhline(ceiling, color="C3", ls="--", lw=1, label=f"v7labs vs GeneralBlockchain {ceiling:.3f}")
        axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"Lung segmentation, {summary['split']} split, per mask source", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
