"""What the gate refuses: rates with Wilson intervals per kind of input, tables, the wrong decisions and a contact sheet."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...infer.gate import GateDecision


def wilson_interval(refused: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a refusal rate ``refused / n`` (NaN, NaN for n = 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(refused), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_with_ci(refused: np.ndarray) -> dict:
    """n, refused, rate and its Wilson 95% CI of a boolean array of refusals."""
    refused = np.asarray(refused, bool)
    k, n = int(refused.sum()), int(refused.size)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "refused": k, "rate": k / n if n else float("nan"), "ci": [lo, hi]}


def refusal_rates(decisions: Sequence[GateDecision], y: np.ndarray, kinds: list[str]) -> dict:
    """Refusals per kind of input with Wilson CIs, by check and reason, and the headline rates.

    ``decisions``: the gate's decision on each example (:func:`covidcxr.infer.gate.decide`).
    ``per_kind[kind]``: n, refused, rate, ci, by_gate (the linear gate refuses), by_intensity_only
    (the intensity check alone refuses) and the refusals by reason code.
    """
    refused = np.array([not d.accepted for d in decisions], bool)
    by_gate = np.array([d.check == "gate" for d in decisions], bool)
    by_int = np.array([d.check == "intensity" for d in decisions], bool)
    reasons = np.array([d.reason for d in decisions])
    kinds_a = np.array(kinds)
    per_kind = {}
    for k in sorted(set(kinds)):
        sel = kinds_a == k
        per_kind[k] = {
            **rate_with_ci(refused[sel]),
            "by_gate": int(by_gate[sel].sum()),
            "by_intensity_only": int(by_int[sel].sum()),
            "reasons": {r: int(n) for r, n in zip(*np.unique(reasons[sel & refused], return_counts=True))},
        }
    lat_ct = np.isin(kinds_a, ["lateral", "CT"])
    y = np.asarray(y)
    return {
        "false_refusal_frontal": float(refused[y == 1].mean()),
        "refusal_lateral_ct": float(refused[lat_ct].mean()) if lat_ct.any() else float("nan"),
        "refusal_non_xray": float(refused[(y == 0) & ~lat_ct].mean()) if ((y == 0) & ~lat_ct).any() else float("nan"),
        "n_frontal": int((y == 1).sum()),
        "n_lateral_ct": int(lat_ct.sum()),
        "lateral_ct": rate_with_ci(refused[lat_ct]),
        "per_kind": per_kind,
    }


def _pct(row: dict) -> str:
    return (
        f"{row['refused']}/{row['n']} = {row['rate']:.1%} [{row['ci'][0]:.1%}, {row['ci'][1]:.1%}]" if row["n"] else "–"
    )


def refusal_table(results: dict[str, dict]) -> str:
    """A Markdown table of refusals per kind (rows) and split (columns), each 'k/n = rate [Wilson 95% CI]'."""
    splits = list(results)
    kinds = sorted({k for r in results.values() for k in r["per_kind"]}, key=lambda k: (not k.endswith(":frontal"), k))
    lines = ["| input | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for k in kinds:
        cells = [_pct(results[s]["per_kind"][k]) if k in results[s]["per_kind"] else "–" for s in splits]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| lateral + CT | " + " | ".join(_pct(results[s]["lateral_ct"]) for s in splits) + " |")
    return "\n".join(lines) + "\n"


def refused_list(data: dict, decisions: Sequence[GateDecision], split: str) -> list[dict]:
    """Frontal films refused and lateral views / CT slices let through: what a person should look at."""
    out = []
    for y, kind, name, d in zip(data["y"], data["kind"], data["name"], decisions, strict=True):
        if (not d.accepted) if y == 1 else (kind in ("lateral", "CT") and d.accepted):
            out.append(
                {
                    "split": split,
                    "kind": kind,
                    "name": name,
                    "p_frontal": round(d.probability, 4),
                    "check": d.check or "accepted",
                    "reason": "accepted" if d.accepted else d.reason,
                }
            )
    return out


def contact_sheet(items: list[dict], path: str | Path, columns: int = 6, title: str = "") -> Path:
    """A PNG grid of thumbnails (``items``: name = image path, plus kind, check, reason, p_frontal) captioned with file name and reason."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ...io import ImageReadError, read_image
    from ...io.resize import resize_aa
    from ...report import plain_text

    items = [it for it in items if Path(str(it["name"]).split("#")[0]).is_file()]
    rows = max(1, -(-len(items) // columns))
    fig = Figure(figsize=(2.4 * columns, 2.9 * rows + 0.4))
    FigureCanvasAgg(fig)
    fig.suptitle(plain_text(title or f"{len(items)} images", 120), fontsize=10)
    if not items:
        fig.text(0.5, 0.5, "none", ha="center", va="center")
    for i, it in enumerate(items):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_axis_off()
        try:
            image = read_image(str(it["name"]).split("#")[0])
            f = 200 / max(image.shape)
            ax.imshow(
                resize_aa(image, (max(1, round(image.shape[0] * f)), max(1, round(image.shape[1] * f))))
                if f < 1
                else image,
                cmap="gray",
                vmin=0,
                vmax=1,
            )
        except ImageReadError:
            pass
        caption = f"{plain_text(Path(str(it['name'])).name, 28)}\n{it['kind']} ({it['split']})\n{it['check']}: {it['reason']}, p={it['p_frontal']:.2f}"
        ax.set_title(caption, fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def source_totals(results: dict[str, dict], splits=("train", "val", "test")) -> dict[str, dict]:
    """Frontal refusals per source over the given splits together (e.g. all of hannover's images)."""
    totals: dict[str, list[int]] = {}
    for s in splits:
        for k, row in results.get(s, {}).get("per_kind", {}).items():
            if k.endswith(":frontal"):
                t = totals.setdefault(k.split(":")[0], [0, 0])
                t[0], t[1] = t[0] + row["refused"], t[1] + row["n"]
    return {
        src: {"n": n, "refused": k, "rate": k / n, "ci": list(wilson_interval(k, n))} for src, (k, n) in totals.items()
    }


def write_report(out: Path, results: dict, wrong: list[dict], extra: dict, title: str) -> None:
    """gate_eval.json, gate_eval.md (the per-source table) and refused.png (contact sheet) in ``out``."""
    (out / "gate_eval.json").write_text(json.dumps({**extra, "results": results, "wrong": wrong}, indent=2) + "\n")
    totals = extra.get("all_splits", {})
    md = [
        f"# {title}\n",
        "Refused / n = rate [Wilson 95% CI]; frontal rows are false refusals, the others true refusals.\n",
        refusal_table(results),
    ]
    if totals:
        md += [
            f"\nFrontal films refused over {', '.join(results)} together (train films are in-sample for a gate trained on them):\n",
            "| source | refused |",
            "|---|---|",
        ]
        md += [f"| {src} | {_pct(row)} |" for src, row in sorted(totals.items())]
    md += [
        "\nFrontal films refused, by the check that refused them (the linear gate; the intensity check alone):\n",
        "| split | linear gate | intensity check alone | reasons given |",
        "|---|---|---|---|",
    ]
    for split, r in results.items():
        rows = [v for k, v in r["per_kind"].items() if ":frontal" in k]
        why: dict[str, int] = {}
        for v in rows:
            for code, n in v.get("reasons", {}).items():
                why[code] = why.get(code, 0) + n
        md.append(
            f"| {split} | {sum(v['by_gate'] for v in rows)} | {sum(v['by_intensity_only'] for v in rows)} | "
            + (", ".join(f"{n} {c}" for c, n in sorted(why.items())) or "–")
            + " |"
        )
    oof = extra.get("out_of_fold")
    if oof:
        md.append(
            f"\n{oof['source']} training films scored by gates refitted without their patients ({oof['folds']} patient folds, "
            f"{oof['patients']} patients): refused {_pct(oof)}\n"
        )
    (out / "gate_eval.md").write_text("\n".join(md) + "\n")
    films = [w for w in wrong if "#" not in str(w["name"])]  # augmented copies and variants would show their original
    contact_sheet(
        films,
        out / "refused.png",
        title=f"{title}: frontal films refused, lateral views and CT slices let through ({len(films)})",
    )
