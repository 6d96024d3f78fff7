"""Validation-only check of the v3-marked gate (docs/experiments/gate-hospital-sources.md, "Amendment: negatives
carrying the same marks"); never loads the test cache.

    python docs/results/gate-marked/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py built and builds the marked negatives
(4 copies of every training lateral view and CT slice, every mark) if they are missing.
"""

import argparse
import json
from pathlib import Path

from covidcxr.data import load_records
from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import marked_negatives, read_cached
from covidcxr.engine.gate.images import ALL_MARKS
from covidcxr.infer import LungSegmenter

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)
built_by = "docs/results/gate-surround/tune_val.py"
data = {
    s: read_cached(out / f"features_{s}.npz", built_by) for s in ("train", "train_augmented", "val", "val_augmented")
}
data["train_marked_negatives"] = marked_negatives(
    load_records(None),
    "train",
    LungSegmenter.from_spec(),
    4,
    out / "features_train_marked_negatives.npz",
    marks=ALL_MARKS,
)
rows = []
for intensity_with in ((), ("train_augmented",)):
    row, wrong, _ = G.validate(
        data, C=0.2, augmented=True, intensity_with=intensity_with, negatives_with=("train_marked_negatives",)
    )
    row = {"intensity_with": list(intensity_with), **row}
    print(json.dumps(row), flush=True)
    rows.append({**row, "wrong": wrong})
ok = [r for r in rows if r["acceptable"]]
chosen = min(ok, key=lambda r: (r["worst_source"], r["augmented_refused"], bool(r["intensity_with"]))) if ok else None
print("chosen:", chosen and chosen["intensity_with"])
Path(__file__).with_name("tuning_val.json").write_text(
    json.dumps({"rows": rows, "chosen_intensity_with": chosen and chosen["intensity_with"]}, indent=2) + "\n"
)
