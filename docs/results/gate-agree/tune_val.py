"""Validation-only check of the v3-marked-agree gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity check refuses only what the reason head does not take for a frontal film"); never loads the test cache.

    python docs/results/gate-agree/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py and docs/results/gate-marked/tune_val.py built.
"""

import argparse
import json
from pathlib import Path

from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import read_cached

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)
built_by = "docs/results/gate-surround/tune_val.py and docs/results/gate-marked/tune_val.py"
names = ("train", "train_augmented", "train_marked_negatives", "val", "val_augmented")
data = {s: read_cached(out / f"features_{s}.npz", built_by) for s in names}
row, wrong, _ = G.validate(data, C=0.2, augmented=True, negatives_with=("train_marked_negatives",), agree="kinds")
row = {"agree": "kinds", **row}
print(json.dumps(row), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps({**row, "wrong": wrong}, indent=2) + "\n")
