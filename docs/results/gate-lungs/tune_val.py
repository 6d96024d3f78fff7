"""Validation-only check of the v3-lungs gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity check on the lung facts only"); never loads the test cache.

    python docs/results/gate-lungs/tune_val.py [--out runs/gate-v3]

Reads the caches docs/results/gate-surround/tune_val.py built (augmented copies with every mark).
"""

import argparse
import json
from pathlib import Path

from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import read_cached
from covidcxr.infer.gate import LUNG_FACTS

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)
built_by = "docs/results/gate-surround/tune_val.py"
data = {
    s: read_cached(out / f"features_{s}.npz", built_by) for s in ("train", "train_augmented", "val", "val_augmented")
}
rows = []
for percentile in (99.8, 99.9, 100.0):
    row, wrong, _ = G.validate(data, C=0.2, augmented=True, percentile=percentile, intensity_facts=LUNG_FACTS)
    row = {"facts": list(LUNG_FACTS), "percentile": percentile, **row}
    print(json.dumps(row), flush=True)
    rows.append({**row, "wrong": wrong})
ok = [r for r in rows if r["acceptable"]]
chosen = min(ok, key=lambda r: (r["worst_source"], r["percentile"] != 99.8)) if ok else None
print("chosen:", chosen and chosen["percentile"])
Path(__file__).with_name("tuning_val.json").write_text(
    json.dumps({"rows": rows, "chosen_percentile": chosen and chosen["percentile"]}, indent=2) + "\n"
)
