"""Validation-only tuning of the gate (docs/experiments/gate-hospital-sources.md); never loads the test cache.

Run after the feature caches exist (covidcxr train gate --out RUN builds them):
    python docs/results/gate-hospital/tune_val.py
    python docs/results/gate-hospital/tune_val.py --run runs/gate-D2 --C 0.05,0.01,0.2,1.0 --augmented-only
        (the refit on lung model D, 2026-12-06: docs/results/gate-lungs-D/; the shipped gate is
        not scored there, it reads another lung model's features)
"""

import argparse
import json
import time
from pathlib import Path

from covidcxr.engine.gate import train as G
from covidcxr.models import load_weights

ap = argparse.ArgumentParser()
ap.add_argument("--run", type=Path, default=Path("runs/gate"), help="the gate run folder with the feature caches")
ap.add_argument("--C", default="0.05,0.01,0.2", help="regularisation strengths tried, comma-separated")
ap.add_argument("--augmented-only", action="store_true", help="fit with the augmented copies only")
ap.add_argument("--quick", action="store_true")
args = ap.parse_args()
out = args.run


def load(name):
    return G.cached(out / f"features_{name}.npz", lambda: (_ for _ in ()).throw(FileNotFoundError(name)))


data = {s: load(s) for s in ("train", "train_augmented", "val", "val_augmented")}
val = {s: data[s] for s in ("val", "val_augmented")}


def summary(gate, spec, label):
    res, wrong = G.score(gate, spec, val)
    r, a = res["val"], res["val_augmented"]
    fr = {
        k.split(":")[0]: (v["refused"], v["n"], v["by_gate"], v["by_intensity_only"])
        for k, v in r["per_kind"].items()
        if k.endswith(":frontal")
    }
    worst = max(v[0] / v[1] for v in fr.values())
    neg = [(k, v["refused"], v["n"]) for k, v in r["per_kind"].items() if not k.endswith(":frontal")]
    print(
        f"{label}: thr {spec.threshold:.3f} worst-source {worst:.2%}; frontal {fr}; neg {neg}; aug refused {a['false_refusal_frontal']:.2%} of {a['n_frontal']}",
        flush=True,
    )
    return worst, r, a, wrong


if not args.augmented_only:  # the shipped gate reads the features of the run it was fitted beside
    shipped, sspec = load_weights(None, kind="gate")
    summary(shipped, sspec, "shipped")
rows = []
for aug in (True,) if args.augmented_only else (True, False):
    for C in (float(c) for c in args.C.split(",")):
        t = time.time()
        gate, thr, check0 = G.fit_all(data, C=C, augmented=aug, percentile=99.8)
        print(f"fit C={C} aug={aug} {time.time() - t:.0f}s", flush=True)
        for pct in (99.8, 99.9, 100.0):
            check = G.fit_intensity_check(data["train"]["facts"][data["train"]["y"] == 1], pct)
            check["kinds"] = check0["kinds"]
            worst, r, a, wrong = summary(gate, G.ThresholdSpec(thr, check), f"C={C} aug={aug} pct={pct}")
            ok = (
                worst <= 0.02
                and r["lateral_ct"]["refused"] == r["lateral_ct"]["n"]
                and r["refusal_non_xray"] >= 0.95
                and a["false_refusal_frontal"] <= 0.05
            )
            rows.append(
                {
                    "C": C,
                    "augmented": aug,
                    "percentile": pct,
                    "threshold": thr,
                    "worst_source": worst,
                    "acceptable": bool(ok),
                    "lateral_ct": r["lateral_ct"],
                    "non_xray": r["refusal_non_xray"],
                    "augmented_refused": a["false_refusal_frontal"],
                }
            )
        if args.quick:
            break
    if args.quick:
        break
(out / "tuning_val.json").write_text(json.dumps(rows, indent=2))
