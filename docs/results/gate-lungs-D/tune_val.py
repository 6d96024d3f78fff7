"""Validation-only tuning of the gate on the lung model D (docs/experiments/gate-hospital-sources.md, 2026-12-06); never loads the test cache.

Run after the feature caches exist (covidcxr train gate --out runs/gate-D2 builds them):
    python docs/results/gate-lungs-D/tune_val.py
"""

import json
import sys
import time
from pathlib import Path

from covidcxr.engine.gate import train as G
from covidcxr.models import load_weights

out = Path("runs/gate-D2")


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


shipped, sspec = load_weights(None, kind="gate")
# (the shipped gate reads the old features)
rows = []
for aug in (True,):
    for C in (0.05, 0.01, 0.2, 1.0):
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
        if "--quick" in sys.argv:
            break
    if "--quick" in sys.argv:
        break
Path("runs/gate-D2/tuning_val.json").write_text(json.dumps(rows, indent=2))
