"""Validation-only check of the v3-marked-agree gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity check refuses only what the reason head does not take for a frontal film"); never loads the test cache.

    python docs/results/gate-agree/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py and docs/results/gate-marked/tune_val.py built.
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


data = {s: load(s) for s in ("train", "train_augmented", "train_marked_negatives", "val", "val_augmented")}
gate, thr, check = G.fit_all(data, C=0.2, augmented=True, negatives_with=("train_marked_negatives",), agree="kinds")
res, wrong = G.score(gate, G.ThresholdSpec(thr, check), {s: data[s] for s in ("val", "val_augmented")})
row = {"agree": "kinds", "threshold": thr, **G.validation_summary(res)}
print(json.dumps(row), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps({**row, "wrong": wrong}, indent=2) + "\n")
