"""Validation-only check of the v3-classifier gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity check as a classifier"); never loads the test cache.

    python docs/results/gate-classifier/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py built (augmented copies with every mark).
"""

import argparse
import json
from pathlib import Path

from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import read_cached

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)
built_by = "docs/results/gate-surround/tune_val.py"
data = {
    s: read_cached(out / f"features_{s}.npz", built_by) for s in ("train", "train_augmented", "val", "val_augmented")
}
row, wrong, check = G.validate(
    data, C=0.2, augmented=True, intensity_with=("train_augmented",), intensity_kind="classifier"
)
row = {"intensity_kind": "classifier", **row, "check": {k: v for k, v in check.items() if k != "kinds"}, "wrong": wrong}
print(json.dumps({k: v for k, v in row.items() if k not in ("wrong", "check")}), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps(row, indent=2) + "\n")
