"""Validation-only check of the v3-film gate (docs/experiments/gate-hospital-sources.md, "Amendment: the
intensity facts read on the film only"); never builds or loads the test cache.

    python docs/results/gate-film/tune_val.py [--out runs/gate-film]

Builds the train and validation caches with the film facts and augmented copies carrying every
mark (about 15 min on 2 cores), fits the candidate, and applies the four criteria.
"""

import argparse
import json
from pathlib import Path

from covidcxr.data import load_records
from covidcxr.engine.gate import train as G
from covidcxr.engine.gate.data import gate_data
from covidcxr.engine.gate.images import ALL_MARKS
from covidcxr.infer import LungSegmenter

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="runs/gate-film")
out = Path(ap.parse_args().out)
out.mkdir(parents=True, exist_ok=True)
records, segmenter = load_records(None), LungSegmenter.from_spec()
data = gate_data(records, segmenter, out, splits=("train", "val"), marks=ALL_MARKS, crop="film")
row, wrong, _ = G.validate(data, C=0.2, augmented=True, percentile=99.8, crop="film")
row = {"crop": "film", "marks": list(ALL_MARKS), **row, "wrong": wrong}
print(json.dumps({k: v for k, v in row.items() if k != "wrong"}), flush=True)
Path(__file__).with_name("tuning_val.json").write_text(json.dumps(row, indent=2) + "\n")
