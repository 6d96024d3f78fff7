"""LOSO of the within-archive design beside the shipped one, on the same feature cache (amendment 4 of
docs/experiments/stage2-source-blind.md).

    python docs/results/stage2-archive/run.py [--out docs/results/stage2-archive]
"""

import argparse
import logging

from covidcxr.engine.diagnosis.loso import run_loso, stage2_inputs

logging.basicConfig(level=logging.INFO)
ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/results/stage2-archive")
out = ap.parse_args().out
samples, features, _ = stage2_inputs()
rows = {
    "pooled / findings": ("pooled", "findings"),  # shipped, recomputed on this cache
    "within_archive / findings": ("within_archive", "findings"),
    "within_archive / imagenet": ("within_archive", "imagenet"),
    "within_archive / imagenet+findings": ("within_archive", "imagenet+findings"),
}
results = run_loso(features, samples, rows, out_dir=out)
for name, r in results.items():
    print(f"{name}: primary {r['primary']:.3f}")
