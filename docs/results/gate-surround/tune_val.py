"""Validation-only choice of the v3 gate (docs/experiments/gate-hospital-sources.md, "Follow-up"); never loads the test cache.

Builds the augmented caches with the current ``augment_frontal`` (the ``surround`` mark
included) and the surround-only copies if they are missing, then fits the three settings of
``intensity_with`` (none, all augmented copies, surround-only copies):
    python docs/results/gate-surround/tune_val.py [--out runs/gate-v3]
"""

import argparse
import json
from pathlib import Path

from covidcxr.data import load_records
from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import AUGMENTED_PER_SOURCE, augmented_data, gate_data
from covidcxr.engine.gate.images import ALL_MARKS
from covidcxr.infer import LungSegmenter

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-v3")
out = Path(ap.parse_args().out)


records, segmenter = load_records(None), LungSegmenter.from_spec()
data = gate_data(records, segmenter, out, splits=("train", "val"), augmented=False)
for s in ("train", "val"):  # the augmented copies with every mark, the candidate's (not the shipped default)
    data[f"{s}_augmented"] = augmented_data(
        records, s, segmenter, AUGMENTED_PER_SOURCE[s], out / f"features_{s}_augmented.npz", marks=ALL_MARKS
    )
data["train_surround"] = augmented_data(  # surround-only copies: the third setting's extra intensity examples
    records,
    "train",
    segmenter,
    AUGMENTED_PER_SOURCE["train"],
    out / "features_train_surround.npz",
    1,
    ("surround",),
    "surround",
)
rows = []
for intensity_with in ((), ("train_augmented",), ("train_surround",)):
    row, _, _ = G.validate(data, C=0.2, augmented=True, percentile=99.8, intensity_with=intensity_with)
    row = {"intensity_with": list(intensity_with), **row}
    rows.append(row)
    print(json.dumps(row), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps(rows, indent=2) + "\n")
