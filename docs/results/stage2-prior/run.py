"""LOSO of the pattern-prior design beside the shipped one, on the same finding-facts cache (amendment 3 of
docs/experiments/stage2-source-blind.md). The finding facts only: no ImageNet block is computed.

    python docs/results/stage2-prior/run.py [--out docs/results/stage2-prior]
"""

import argparse
import logging

from covidcxr.engine.diagnosis.loso import run_loso, stage2_inputs

logging.basicConfig(level=logging.INFO)
ap = argparse.ArgumentParser()
ap.add_argument("--out", default="docs/results/stage2-prior")
out = ap.parse_args().out
samples, features, _ = stage2_inputs(imagenet_features=False)
rows = {
    "pooled / findings": ("pooled", "findings"),  # shipped, recomputed on this cache
    "within_source / findings": ("within_source", "findings"),
    "within_source_prior / findings": ("within_source_prior", "findings"),
}
results = run_loso(features, samples, rows, out_dir=out)
for name, r in results.items():
    print(f"{name}: primary {r['primary']:.3f}")
