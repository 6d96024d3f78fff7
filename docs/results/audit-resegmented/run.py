"""The audit's "all but the lungs blacked out", with the lungs segmented again on the blacked-out film.

`covidcxr audit` blacks out everything outside the lungs and reuses the intact film's lung mask,
so the lesion model sees the very pixels it saw before and the check is trivially passed. Here
the whole chain runs again on the blacked-out film, stage 1 included: a mask that moves, and
the findings and P(abnormal) read through it, show how much of a reading leans on the pixels
outside the lungs through the outline. A measurement of the shipped chain; nothing is fitted or
changed by it.

For every test-split film of the audit's three archives (NIH, Kermany, covid-chestxray):
the Predictor (gate off, no heat map) on the film, then on the film with every pixel outside
its intact lung mask set to 0. Reported per archive: Dice of the two masks, the median and 90th
percentile of |P(abnormal) change|, how often the headline changes, and the archive check of
every finding fact and P(abnormal) (AUROC with a bootstrap CI) in both modes.

Usage:
    python docs/results/audit-resegmented/run.py --out docs/results/audit-resegmented
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from covidcxr import Predictor, read_image
from covidcxr.data import load_records
from covidcxr.data.classification import CLASSES, classification_samples, first_per_group
from covidcxr.engine.diagnosis.audit import ARCHIVES, archive_checks
from covidcxr.engine.diagnosis.report import ci_cell
from covidcxr.infer.findings import finding_facts
from covidcxr.metrics import dice

MODES = ("intact", "all but the lungs blacked out, lungs segmented again")


def reading(pipe: Predictor, image: np.ndarray):
    (res,) = pipe.run([image])
    if res.error:
        return None
    facts = finding_facts(res.severity, res.lesions, res.zones)
    return res, facts, np.array([res.probabilities[c] for c in CLASSES])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/audit-resegmented")
    ap.add_argument("--limit", type=int, default=0, help="at most this many films per archive (0: all)")
    ap.add_argument("--n-resamples", type=int, default=500, help="bootstrap resamples of each AUROC's CI")
    args = ap.parse_args()
    members = {d for _, datasets, _, _ in ARCHIVES for d in datasets}
    samples = [s for s in classification_samples(load_records(), "test")[0] if s["dataset"] in members]
    samples = first_per_group(samples, args.limit)
    pipe = Predictor.load(use_gate=False, saliency=False)
    kept, facts, probs, rows = [], {m: [] for m in MODES}, {m: [] for m in MODES}, []
    for s in tqdm(samples, desc="films", unit="film"):
        image = read_image(s["path"])
        intact = reading(pipe, image)
        if intact is None:
            continue
        outside = reading(pipe, np.where(intact[0].lung_mask, image, 0).astype(np.float32))
        if outside is None:
            continue
        kept.append(s)
        for m, r in zip(MODES, (intact, outside)):
            facts[m].append(r[1])
            probs[m].append(r[2])
        rows.append(
            {
                "dataset": s["dataset"],
                "dice": dice(intact[0].lung_mask, outside[0].lung_mask),
                "p_abnormal_change": float(intact[2][2] - outside[2][2]),  # P(abnormal) = 1 - P(No finding)
                "headline_changed": intact[0].prediction != outside[0].prediction,
            }
        )
    labels = np.array([s["label"] for s in kept])
    modes = {m: (np.array(facts[m]), np.array(probs[m])) for m in MODES}
    checks = archive_checks(kept, labels, modes, n_resamples=args.n_resamples)
    summary = {}
    for name, datasets, _, _ in ARCHIVES:
        r = [row for row in rows if row["dataset"] in datasets]
        change = np.abs([row["p_abnormal_change"] for row in r])
        summary[name] = {
            "n": len(r),
            "mask_dice_median": float(np.median([row["dice"] for row in r])),
            "mask_dice_p10": float(np.percentile([row["dice"] for row in r], 10)),
            "p_abnormal_abs_change_median": float(np.median(change)),
            "p_abnormal_abs_change_p90": float(np.percentile(change, 90)),
            "headline_changed": float(np.mean([row["headline_changed"] for row in r])),
        }
        print(name, json.dumps(summary[name]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resegmented.json").write_text(
        json.dumps({"per_archive": summary, "archive_checks": checks}, indent=2, default=float) + "\n"
    )
    lines = [
        "| archive | n | mask Dice, median (10th pct) | abs. change of P(abnormal), median (90th pct) | headline changed |",
        "|---|---|---|---|---|",
    ]
    for name, v in summary.items():
        lines.append(
            f"| {name} | {v['n']} | {v['mask_dice_median']:.3f} ({v['mask_dice_p10']:.3f}) | "
            f"{v['p_abnormal_abs_change_median']:.3f} ({v['p_abnormal_abs_change_p90']:.3f}) | {v['headline_changed']:.1%} |"
        )
    for name, a in checks.items():
        lines += ["", f"### {name} (n = {a['n']}, {a['n_positive']} positive): AUROC", ""]
        lines += ["| score | " + " | ".join(MODES) + " |", "|---|---|---|"]
        first = a["modes"][MODES[0]]
        lines += [f"| {k} | " + " | ".join(ci_cell(a["modes"][m][k]) for m in MODES) + " |" for k in first]
    (out / "resegmented.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
