"""Validation-only check of the v3-classifier gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity check as a classifier"); never loads the test cache.

    python docs/results/gate-classifier/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py built (augmented copies with every mark).
"""

import argparse
import json
from pathlib import Path

from covidcxr.engine import gate as G

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)


def load(name):
    return G.cached(out / f"features_{name}.npz", lambda: (_ for _ in ()).throw(FileNotFoundError(name)))


data = {s: load(s) for s in ("train", "train_augmented", "val", "val_augmented")}
gate, thr, check = G.fit_all(
    data, C=0.2, augmented=True, intensity_with=("train_augmented",), intensity_kind="classifier"
)
res, wrong = G.score(gate, G.ThresholdSpec(thr, check), {s: data[s] for s in ("val", "val_augmented")})
r, a = res["val"], res["val_augmented"]
frontal = {k.split(":")[0]: [v["refused"], v["n"]] for k, v in r["per_kind"].items() if k.endswith(":frontal")}
worst = max(k / n for k, n in frontal.values())
row = {
    "intensity_kind": "classifier",
    "threshold": thr,
    "frontal_refused_per_source": frontal,
    "worst_source": worst,
    "lateral_ct": r["lateral_ct"],
    "non_xray": r["refusal_non_xray"],
    "augmented_refused": a["false_refusal_frontal"],
    "augmented_n": a["n_frontal"],
    "check": {k: v for k, v in check.items() if k != "kinds"},
    "wrong": wrong,
}
row["acceptable"] = bool(
    worst <= 0.02
    and r["lateral_ct"]["refused"] == r["lateral_ct"]["n"]
    and r["refusal_non_xray"] >= 0.95
    and a["false_refusal_frontal"] <= 0.05
)
print(json.dumps({k: v for k, v in row.items() if k not in ("wrong", "check")}), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps(row, indent=2) + "\n")
