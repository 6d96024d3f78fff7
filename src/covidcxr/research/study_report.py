"""Summaries of the comparison study: per-cell metrics with CIs, results.csv/.md, plots.

Reads the fold files :mod:`covidcxr.research.study` writes (``<out>/cells/<cell>/seedS-foldK.npz``).
A cell's held-out predictions are pooled over its folds, per seed; a metric's value and CI
bounds are the means over seeds (one seed by default). Each cell's summary is kept in
``summary.json`` beside its folds and recomputed only when its fold files change.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from ..engine.diagnosis.evaluate import covid_vs_other
from ..metrics import bootstrap_ci, class_stratified_bootstrap_ci, with_ci
from .cnn_model import macro_auroc

log = logging.getLogger(__name__)

#: Metrics of a cell: (key, heading, unit).
METRICS = (
    ("macro_auroc", "Macro AUROC (CV)", ""),
    ("covid_vs_other_auroc", "COVID-19 vs other pneumonia AUROC, covid-chestxray only", ""),
    ("blacked_out_macro_auroc", "Macro AUROC, lungs blacked out", ""),
    ("saliency_in_lungs", "Grad-CAM share inside the lungs", ""),
    ("train_minutes", "Training time per fold, wall clock", "min"),
    ("train_cpu_minutes", "Training CPU time per fold, all threads", "min"),
    ("size_mb", "Model size (float16)", "MB"),
    ("latency_ms", "Stage-2 latency per image", "ms"),
)


def cell_metrics(folds: list[dict], n_resamples: int = 1000) -> dict:
    """Metrics with CIs of one cell from its fold results (dicts of the fold ``.npz`` arrays)."""
    per_seed: dict[int, list[dict]] = {}
    for f in folds:
        per_seed.setdefault(int(f["seed"]), []).append(f)
    results = [_seed_metrics(fs, n_resamples) for _, fs in sorted(per_seed.items())]
    out = {}
    for key in results[0]:
        vals = [r[key] for r in results]
        out[key] = {b: float(np.mean([v[b] for v in vals])) for b in ("value", "ci_low", "ci_high")}
        out[key]["n"] = int(vals[0]["n"])
        if len(vals) > 1:
            out[key]["seed_sd"] = float(np.std([v["value"] for v in vals], ddof=1))
    return out


def _seed_metrics(folds: list[dict], n_resamples: int) -> dict:
    cat = {
        k: np.concatenate([f[k] for f in folds])
        for k in ("labels", "sources", "probs", "probs_blacked", "saliency_share")
    }
    y, src = cat["labels"], cat["sources"]
    in_cc = src == "covid-chestxray"
    latency = np.concatenate([f["latency_s"] for f in folds]) * 1000
    train_min = np.array([float(f["train_s"]) for f in folds]) / 60
    train_cpu = np.array([float(f.get("train_cpu_s", np.nan)) for f in folds]) / 60
    size = float(folds[0]["size_mb"])
    return {
        "macro_auroc": class_stratified_bootstrap_ci(y, cat["probs"], macro_auroc, n_resamples=n_resamples),
        "covid_vs_other_auroc": covid_vs_other(y[in_cc], cat["probs"][in_cc], n_resamples=n_resamples),
        "blacked_out_macro_auroc": class_stratified_bootstrap_ci(
            y, cat["probs_blacked"], macro_auroc, n_resamples=n_resamples
        ),
        "saliency_in_lungs": bootstrap_ci(cat["saliency_share"], n_resamples=n_resamples),
        "train_minutes": bootstrap_ci(train_min, n_resamples=n_resamples),
        "train_cpu_minutes": bootstrap_ci(train_cpu, n_resamples=n_resamples),
        "size_mb": {"value": size, "ci_low": size, "ci_high": size, "n": 1},  # exact
        "latency_ms": bootstrap_ci(latency, statistic=np.median, n_resamples=n_resamples),
    }


def summarise(cfg, out: Path, grid: list[tuple[str, str, str]]) -> dict:
    """Per-cell metrics of every cell whose folds are all present; names the best cells."""
    rows = []
    for cell in grid:
        cell_dir = out / "cells" / "-".join(cell)
        files = [cell_dir / f"seed{s}-fold{k}.npz" for s in cfg.seeds for k in range(cfg.folds)]
        if not all(f.is_file() for f in files):
            continue
        stamp = [[f.name, f.stat().st_mtime_ns] for f in files]
        cached = cell_dir / "summary.json"
        if cached.is_file() and json.loads(cached.read_text()).get("files") == stamp:
            metrics = json.loads(cached.read_text())["metrics"]
        else:
            folds = []
            for f in files:
                with np.load(f) as d:
                    folds.append({**{k: d[k] for k in d.files}, "seed": int(f.name.split("-")[0][4:])})
            metrics = cell_metrics(folds, cfg.n_resamples)
            cached.write_text(json.dumps({"files": stamp, "metrics": metrics}, indent=1))
        rows.append({"backbone": cell[0], "input": cell[1], "enhancement": cell[2], "metrics": metrics})
    return {
        "out_dir": str(out),
        "config": {k: v for k, v in vars(cfg).items() if k not in ("data_root", "out_dir")},
        "cells": rows,
        "complete": len(rows) == len(grid),
        **best_cells(rows),
    }


def best_cells(rows: list[dict]) -> dict:
    """The best cells by three rules.

    - ``best_internal``: highest internal macro AUROC.
    - ``best_shortcut_free``: lungs-blacked-out AUROC closest to 0.5; values within 0.001 of
      each other count as tied, ties go to the higher internal macro AUROC. A cell that
      learned little also lands near 0.5, so this rule alone can name a weak cell.
    - ``best_reading_lungs``: highest internal macro AUROC among the cells whose blacked-out
      AUROC CI contains 0.5 (no measurable use of what lies outside the lungs); None if none.
    """
    if not rows:
        return {"best_internal": None, "best_shortcut_free": None, "best_reading_lungs": None}

    def name(r: dict) -> str:
        return f"{r['backbone']} / {r['input']} / {r['enhancement']}"

    auc = [r["metrics"]["macro_auroc"]["value"] for r in rows]
    dist = [round(abs(r["metrics"]["blacked_out_macro_auroc"]["value"] - 0.5), 3) for r in rows]
    internal = int(np.nanargmax(auc))
    shortcut = min(range(len(rows)), key=lambda i: (dist[i], -auc[i]))
    blind = [
        i
        for i, r in enumerate(rows)
        if r["metrics"]["blacked_out_macro_auroc"]["ci_low"]
        <= 0.5
        <= r["metrics"]["blacked_out_macro_auroc"]["ci_high"]
    ]
    reading = max(blind, key=lambda i: auc[i]) if blind else None
    return {
        "best_internal": name(rows[internal]),
        "best_shortcut_free": name(rows[shortcut]),
        "best_reading_lungs": None if reading is None else name(rows[reading]),
    }


def write_results(summary: dict, out: Path) -> None:
    """``results.csv``, ``results.md``, ``results.json`` and the plots of a study summary."""
    rows = summary["cells"]
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=float))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["backbone", "input", "enhancement", "n_images"]
            + [f"{k}{s}" for k, _, _ in METRICS for s in ("", "_ci_low", "_ci_high")]
        )
        for r in rows:
            m = r["metrics"]
            w.writerow(
                [r["backbone"], r["input"], r["enhancement"], m["macro_auroc"]["n"]]
                + [f"{m[k][b]:.4g}" for k, _, _ in METRICS for b in ("value", "ci_low", "ci_high")]
            )
    (out / "results.md").write_text(markdown(summary))
    if rows:
        plot_grid(rows, out / "study_grid.png")
        plot_shortcut(rows, out / "study_shortcut.png")


def _ci(m: dict, digits: int = 3) -> str:
    if not np.isfinite(m["value"]):
        return "n/a"
    if m["ci_low"] == m["ci_high"] == m["value"]:
        return f"{m['value']:.{digits}f}"
    return with_ci(m, f".{digits}f")


def markdown(summary: dict) -> str:
    """The results table (value and 95% CI per metric and cell) and the named best cells."""
    cfg = summary["config"]
    lines = [
        "# Comparison study: backbone x input x enhancement",
        "",
        f"{cfg['folds']}-fold patient-level cross-validation of the train+val pool, seeds {list(cfg['seeds'])}, input {cfg['input_size']} px, "
        f"{cfg['epochs']} epochs x {cfg['draws_per_epoch']} class/source-balanced draws, random initialisation. Values with 95% bootstrap CIs.",
        "",
        "| backbone | input | enhancement | " + " | ".join(h + (f" ({u})" if u else "") for _, h, u in METRICS) + " |",
        "|" + "---|" * (3 + len(METRICS)),
    ]
    for r in summary["cells"]:
        m = r["metrics"]
        digits = {"train_minutes": 2, "train_cpu_minutes": 2, "size_mb": 1, "latency_ms": 1}
        lines.append(
            f"| {r['backbone']} | {r['input']} | {r['enhancement']} | "
            + " | ".join(_ci(m[k], digits.get(k, 3)) for k, _, _ in METRICS)
            + " |"
        )
    lines += [
        "",
        f"Best by internal macro AUROC: **{summary['best_internal']}**.",
        f"Best by lungs-blacked-out AUROC closest to 0.5 (ties broken by macro AUROC): **{summary['best_shortcut_free']}**.",
        f"Best internal macro AUROC among the cells whose lungs-blacked-out CI contains 0.5: **{summary.get('best_reading_lungs') or 'none'}**.",
    ]
    if not summary["complete"]:
        lines.append(
            "\nThe study is incomplete: cells with missing folds are left out (rerun `covidcxr study` to resume)."
        )
    return "\n".join(lines) + "\n"


def plot_grid(rows: list[dict], path: Path) -> None:
    """Heat maps of internal and lungs-blacked-out macro AUROC: backbones x (input, enhancement)."""
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    columns = list(dict.fromkeys((r["input"], r["enhancement"]) for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(columns) * 2, 1.5 + 0.5 * len(backbones)), squeeze=False)
    for ax, key, title, cmap in zip(
        axes[0],
        ("macro_auroc", "blacked_out_macro_auroc"),
        ("macro AUROC (CV)", "lungs blacked out (0.5 = lungs only)"),
        ("viridis", "coolwarm"),
    ):
        grid = np.full((len(backbones), len(columns)), np.nan)
        for r in rows:
            grid[backbones.index(r["backbone"]), columns.index((r["input"], r["enhancement"]))] = r["metrics"][key][
                "value"
            ]
        im = ax.imshow(grid, cmap=cmap, vmin=0.5 if key == "macro_auroc" else 0.0, vmax=1.0, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if key == "macro_auroc" and v < 0.8 else "k",
                )
        ax.set_xticks(range(len(columns)), [f"{i}\n{e}" for i, e in columns], fontsize=7)
        ax.set_yticks(range(len(backbones)), backbones, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_shortcut(rows: list[dict], path: Path) -> None:
    """Internal macro AUROC against the lungs-blacked-out AUROC, with CIs, one point per cell."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    markers = {"whole": "o", "crop": "s", "masked": "^"}
    colors = {"none": "tab:blue", "clahe": "tab:orange", "dehaze": "tab:green"}
    for r in rows:
        a, b = r["metrics"]["blacked_out_macro_auroc"], r["metrics"]["macro_auroc"]
        ax.errorbar(
            a["value"],
            b["value"],
            xerr=[[a["value"] - a["ci_low"]], [a["ci_high"] - a["value"]]],
            yerr=[[b["value"] - b["ci_low"]], [b["ci_high"] - b["value"]]],
            fmt=markers.get(r["input"], "o"),
            color=colors.get(r["enhancement"], "k"),
            ms=5,
            elinewidth=0.6,
            alpha=0.8,
        )
    ax.axvline(0.5, color="grey", lw=0.8, ls="--")
    for label, m in markers.items():
        ax.plot([], [], m, color="grey", label=f"input: {label}")
    for label, c in colors.items():
        ax.plot([], [], "o", color=c, label=f"enhancement: {label}")
    ax.set_xlabel("macro AUROC with the lungs blacked out (right of 0.5: reads outside the lungs)")
    ax.set_ylabel("macro AUROC, cross-validated")
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
