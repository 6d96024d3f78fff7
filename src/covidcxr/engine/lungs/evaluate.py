"""Evaluation of a lung-segmentation model at each image's own pixel size.

Per image: Dice, IoU and HD95 of the post-processed mask against every mask of the image;
summarised per mask source with bootstrap 95% CIs. Model-generated lungVAE masks are
reported apart, as agreement. The human ceiling is the Dice between the v7labs and
GeneralBlockchain masks on the images both annotated.

:func:`compare_segmentation` runs two lung models on the same images and reports the
paired differences B - A of Dice and HD95 with bootstrap CIs (e.g. adversarial vs plain
U-Net, ``covidcxr evaluate segmentation --compare A.json B.json``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...data import load_records
from ...data.masks import IGNORE, LUNG, MASK_SOURCES, read_mask
from ...infer import LungSegmenter
from ...io import read_image
from ...metrics import bootstrap_ci, dice, hd95, iou, with_ci
from ...models.weights import WeightSpec, shipped_spec_path
from ..common.runs import weights_record

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
            rows.append(
                {
                    "filename": rec["filename"],
                    "dice": dice(a == LUNG, b == LUNG, valid),
                    "iou": iou(a == LUNG, b == LUNG, valid),
                    "hd95": hd95(a == LUNG, b == LUNG),
                }
            )
    return {"n_images": len(rows), **_summarise(rows), "per_image": rows}


def select_records(records: list[dict], split: str, limit: int = 0) -> list[dict]:
    """Records of ``split`` with at least one mask; with ``limit``, until each mask source has ``limit`` images."""
    chosen = [r for r in records if r["split"] == split and r["masks"]]
    if not limit:
        return chosen
    per_source: dict[str, int] = {}
    kept = []
    for r in chosen:
        if any(per_source.get(s, 0) < limit for s in r["masks"]):
            kept.append(r)
            for s in r["masks"]:
                per_source[s] = per_source.get(s, 0) + 1
    return kept


def score_masks(pred: np.ndarray, rec: dict, shape: tuple[int, ...]) -> list[dict]:
    """Per-image rows of a predicted lung mask against every mask of its record.

    Args:
        pred: (H, W) bool lung mask at the image's own size.
        rec: a data record (``filename``, ``dataset``, ``masks``: source -> mask reference).
        shape: the image's (H, W).

    Returns:
        one dict per mask source: ``filename, dataset, source, height, width, dice, iou, hd95``.
    """
    rows = []
    for source, ref in rec["masks"].items():
        target = read_mask(ref, source)
        valid = target != IGNORE
        lung = target == LUNG
        rows.append(
            {
                "filename": rec["filename"],
                "dataset": rec["dataset"],
                "source": source,
                "height": shape[0],
                "width": shape[1],
                "dice": dice(pred, lung, valid),
                "iou": iou(pred, lung, valid),
                "hd95": hd95(pred & valid, lung),
            }
        )
    return rows


def evaluate_segmentation(
    spec_path: str | Path | None = None,
    data_root: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path = "eval/segmentation",
    update_spec: bool = False,
    limit: int = 0,
    smoke: bool = False,
    stress: bool = False,
    sheet: str | None = None,
) -> dict:
    """Evaluate on ``split``; writes ``segmentation_eval.json`` and plots into ``out_dir``.

    With ``sheet`` (a data folder's name, e.g. ``hannover``), also a contact sheet of every
    film of that folder with the lung outline drawn (``<sheet>_outlines.png``). With
    ``stress``, also the rows of :mod:`covidcxr.engine.lungs.stress` (painted opacity
    at three strengths, Dice per severity tertile): ``summary["stress"]``, ``stress.json``
    (with per-image rows) and ``stress.md``.

    The JSON names the weights it evaluated (``evaluated_weights``: name, sha256); ``smoke``
    marks it (and the spec's metrics) as a smoke run's.

    Returns:
        summary dict: ``per_source`` (manual sources and ``all_manual``), ``agreement``
        (lungVAE), ``human_ceiling`` (on the same split and on all images).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = LungSegmenter.from_spec(spec_path)
    records = load_records(data_root)
    chosen = select_records(records, split, limit)
    rows: list[dict] = []
    for rec in tqdm(chosen, desc=f"evaluating ({split})", unit="img"):
        image = read_image(rec["path"])
        rows.extend(score_masks(segmenter.segment([image])[0], rec, image.shape))
    manual = [r for r in rows if MASK_SOURCES[r["source"]] == "manual"]
    summary = {
        "weights": str(spec_path or shipped_spec_path("lungs")),
        "evaluated_weights": weights_record(segmenter.spec, spec_path or shipped_spec_path("lungs")),
        **({"smoke": True} if smoke else {}),
        "split": split,
        "per_source": {
            s: _summarise([r for r in manual if r["source"] == s]) for s in sorted({r["source"] for r in manual})
        },
        "agreement": {
            s: _summarise([r for r in rows if r["source"] == s])
            for s in sorted({r["source"] for r in rows})
            if MASK_SOURCES[s] == "generated"
        },
        "human_ceiling": {
            split: {k: v for k, v in inter_annotator(chosen).items() if k != "per_image"},
            "all": {k: v for k, v in inter_annotator(records).items() if k != "per_image"},
        },
    }
    summary["per_source"]["all_manual"] = _summarise(manual)
    if stress:
        summary["stress"] = _stress(segmenter, chosen, records, data_root, out)
    if sheet:
        summary["sheet"] = str(sheet_of(segmenter, records, sheet, out))
    (out / "segmentation_eval.json").write_text(json.dumps({**summary, "per_image": rows}, indent=2))
    _plot(rows, summary, out / "segmentation_eval.png")
    (out / "segmentation_eval.md").write_text(markdown_table(summary))
    if update_spec:
        path = Path(spec_path) if spec_path else shipped_spec_path("lungs")
        spec = WeightSpec.from_json(path)
        spec.metrics = {
            "split": split,
            "command": f"covidcxr evaluate segmentation --weights {path.name} --split {split}",
            "dice": {
                s: {k: round(v, 4) if isinstance(v, float) else v for k, v in res["dice"].items()}
                for s, res in summary["per_source"].items()
            },
            "hd95_px": {s: round(res["hd95"]["value"], 2) for s, res in summary["per_source"].items()},
            "human_ceiling_dice": round(summary["human_ceiling"]["all"]["dice"]["value"], 4),
            **({"smoke": True, "limit": limit} if smoke else {}),
        }
        spec.to_json(path)
    return summary


def _stress(segmenter, chosen: list[dict], records: list[dict], data_root, out: Path) -> dict:
    from . import stress as st

    rows = st.painted_rows(segmenter, chosen)
    result = st.summarise(rows, st.severity_of(records, data_root))
    (out / "stress.json").write_text(json.dumps({**result, "per_image": rows}, indent=2))
    (out / "stress.md").write_text(st.markdown(result))
    return result


def sheet_of(segmenter, records: list[dict], dataset: str, out: Path) -> Path:
    """``<dataset>_outlines.png``: the lung outline on every film of one data folder (all splits)."""
    from . import stress as st

    chosen = [r for r in records if r["dataset"] == dataset]
    if not chosen:
        known = ", ".join(sorted({r["dataset"] for r in records}))
        raise ValueError(f"no films of {dataset!r} under the data root; known: {known}")
    path = out / f"{dataset}_outlines.png"
    st.contact_sheet(segmenter, chosen, path)
    return path


def markdown_table(summary: dict) -> str:
    """The summary as a Markdown table: value (95% CI) per mask source and metric."""

    def cell(r: dict, fmt: str) -> str:
        return with_ci(r, fmt)

    lines = [
        f"Split: {summary['split']}. Masks at each image's own pixel size; 95% bootstrap CIs.",
        "",
        "| mask source | kind | n | Dice | IoU | HD95 (px) |",
        "|---|---|---|---|---|---|",
    ]
    groups = [(s, "manual", r) for s, r in summary["per_source"].items()] + [
        (s, "model-generated (agreement)", r) for s, r in summary["agreement"].items()
    ]
    for source, kind, r in groups:
        lines.append(
            f"| {source} | {kind} | {r['dice']['n']} | {cell(r['dice'], '.4f')} | {cell(r['iou'], '.4f')} | {cell(r['hd95'], '.1f')} |"
        )
    for name, r in summary["human_ceiling"].items():
        label = "all images" if name == "all" else f"{name} split"
        lines.append(
            f"| human ceiling: v7labs vs GeneralBlockchain, {label} | manual vs manual | {r['n_images']} | {cell(r['dice'], '.4f')} | {cell(r['iou'], '.4f')} | {cell(r['hd95'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], summary: dict, path: Path) -> None:
    from ...plots import pyplot

    plt = pyplot()
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


# ---------------------------------------------------------------------------
# Paired comparison of two lung models on the same images and masks


def _lung_spec(path: str | Path) -> WeightSpec:
    spec = WeightSpec.from_json(path)
    if spec.task != "lung-segmentation":
        raise ValueError(
            f"{path}: a {spec.task!r} spec (architecture {spec.architecture}); the comparison needs two lung-segmentation specs "
            "(task 'lung-segmentation'), e.g. the export/*.json of two `covidcxr train segmentation` runs"
        )
    return spec


def _paired(rows: list[dict]) -> dict:
    """Means of A and B and of the per-row differences B - A, with bootstrap CIs (a pair is kept or dropped whole)."""
    res: dict = {"n": len(rows)}
    for m in ("dice", "hd95"):
        both = [
            r for r in rows if np.isfinite(r[f"{m}_a"]) and np.isfinite(r[f"{m}_b"])
        ]  # HD95 is NaN for an empty mask
        res[f"{m}_a"] = bootstrap_ci([r[f"{m}_a"] for r in both])
        res[f"{m}_b"] = bootstrap_ci([r[f"{m}_b"] for r in both])
        res[f"{m}_diff"] = bootstrap_ci([r[f"{m}_b"] - r[f"{m}_a"] for r in both])
    return res


def compare_segmentation(
    spec_a: str | Path,
    spec_b: str | Path,
    data_root: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path = "eval/segmentation-comparison",
    limit: int = 0,
) -> dict:
    """Evaluate two lung models on the same images and masks; paired differences B - A.

    Both models segment every image of ``split`` (post-processed, at the image's own size,
    as :func:`evaluate_segmentation`); each is scored against every manual mask. The
    difference's CI is a bootstrap over the per-mask differences, so a resample keeps or
    drops an image for both models at once (images with two manual masks count twice in
    ``all_manual``, as in :func:`evaluate_segmentation`). Writes ``comparison.json`` (with
    per-image rows), ``comparison.md`` and ``comparison.png`` into ``out_dir``.

    Returns:
        ``{"a", "b", "split", "per_source": {source | "all_manual": {"n", "dice_a",
        "dice_b", "dice_diff", "hd95_a", "hd95_b", "hd95_diff"}}}``, each metric a
        :func:`~covidcxr.metrics.bootstrap_ci` dict.

    Raises:
        ValueError: a spec is not a lung-segmentation spec.
    """
    specs = [_lung_spec(spec_a), _lung_spec(spec_b)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seg_a, seg_b = LungSegmenter.from_spec(spec_a), LungSegmenter.from_spec(spec_b)
    chosen = select_records(load_records(data_root), split, limit)
    rows: list[dict] = []
    for rec in tqdm(chosen, desc=f"comparing ({split})", unit="img"):
        image = read_image(rec["path"])
        rows_a = score_masks(seg_a.segment([image])[0], rec, image.shape)
        rows_b = score_masks(seg_b.segment([image])[0], rec, image.shape)
        for a, b in zip(rows_a, rows_b):  # the same masks in the same order
            if MASK_SOURCES[a["source"]] != "manual":
                continue
            row = {k: a[k] for k in ("filename", "dataset", "source", "height", "width")}
            row.update(dice_a=a["dice"], dice_b=b["dice"], hd95_a=a["hd95"], hd95_b=b["hd95"])
            rows.append(row)
    sources = sorted({r["source"] for r in rows})
    summary = {
        "a": str(spec_a),
        "b": str(spec_b),
        "sha256": {"a": specs[0].sha256, "b": specs[1].sha256},
        "split": split,
        "per_source": {
            **{s: _paired([r for r in rows if r["source"] == s]) for s in sources},
            "all_manual": _paired(rows),
        },
    }
    (out / "comparison.json").write_text(json.dumps({**summary, "per_image": rows}, indent=2))
    (out / "comparison.md").write_text(comparison_table(summary))
    _plot_comparison(rows, summary, out / "comparison.png")
    return summary


def comparison_table(summary: dict) -> str:
    """A paired comparison as a Markdown table: means of A and B, and B - A with its 95% CI."""

    def cell(r: dict, fmt: str) -> str:
        return with_ci(r, fmt, sep=" to ")

    lines = [
        f"A: `{summary['a']}`; B: `{summary['b']}`. Split: {summary['split']}; manual masks at each image's own pixel size.",
        "Differences are B − A per image on the same mask (paired); 95% bootstrap CIs. Higher Dice and lower HD95 are better.",
        "",
        "| mask source | n | Dice A | Dice B | Dice B − A | HD95 A (px) | HD95 B (px) | HD95 B − A (px) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, r in summary["per_source"].items():
        lines.append(
            f"| {source} | {r['n']} | {r['dice_a']['value']:.4f} | {r['dice_b']['value']:.4f} | {cell(r['dice_diff'], '+.4f')} "
            f"| {r['hd95_a']['value']:.1f} | {r['hd95_b']['value']:.1f} | {cell(r['hd95_diff'], '+.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _plot_comparison(rows: list[dict], summary: dict, path: Path) -> None:
    from ...plots import pyplot

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, source in enumerate(sorted({r["source"] for r in rows})):
        mine = [r for r in rows if r["source"] == source]
        a.scatter(
            [r["dice_a"] for r in mine],
            [r["dice_b"] for r in mine],
            s=10,
            alpha=0.7,
            color=f"C{i}",
            label=f"{source} (n={len(mine)})",
        )
    lo = min([r["dice_a"] for r in rows] + [r["dice_b"] for r in rows], default=0.0)
    a.plot([lo, 1], [lo, 1], color="0.5", lw=1, ls="--")
    a.set(xlabel="Dice A", ylabel="Dice B", title="Per image and mask (above the line: B better)")
    a.legend(fontsize=8, loc="lower right")
    diffs = [r["dice_b"] - r["dice_a"] for r in rows]
    b.hist(diffs, bins=40, color="C0")
    pooled = summary["per_source"]["all_manual"]["dice_diff"]
    b.axvline(0, color="0.5", lw=1, ls="--")
    b.axvline(
        pooled["value"],
        color="C3",
        lw=1.5,
        label=f"mean {with_ci(pooled, '+.4f', sep=' to ')}",
    )
    b.set(xlabel="Dice B − A", ylabel="masks", title="Paired differences, all manual masks")
    b.legend(fontsize=8)
    fig.suptitle(
        f"Lung segmentation, {summary['split']} split: B = {Path(summary['b']).name} vs A = {Path(summary['a']).name}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
