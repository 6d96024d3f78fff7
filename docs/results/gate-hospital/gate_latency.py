"""What the input gate adds to one image end to end, as a ratio measured in one run (issue 16).

``benchmarks/predict.py``'s ``single`` case (``covidcxr predict FILE``: read, gate, lungs,
lesions and severity, diagnosis, Grad-CAM, mask + heat map + report PNGs), on the same files,
with the gate against the same pipeline without it (``gate = None``: no gate probability, no
intensity check), interleaved file by file so background load hits both alike.

Usage:
    python docs/results/gate-hospital/gate_latency.py --json docs/results/gate-hospital/gate_latency.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bench_predict", ROOT / "benchmarks" / "predict.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # its pick_files and its import of the checkout under test


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--per-source", type=int, default=16)
    ap.add_argument("--single", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = bench.pick_files(bench.resolve_data_root(args.data_root), args.per_source)
    single = files[:: max(1, len(files) // args.single)][: args.single]
    gated = bench.Predictor.load(saliency=True)
    ungated = bench.Predictor.load(saliency=True)
    ungated.gate = None  # no gate at all (``use_gate=False`` would still run it, as a warning)
    times: dict[str, list[float]] = {"gate": [], "no_gate": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, pipe in (("gate", gated), ("no_gate", ungated)):
            list(bench.predict_files([str(files[0])], Path(tmp) / f"warm-{name}", pipe, progress=False))
        for rep in range(args.reps):
            for i, f in enumerate(single):
                order = (
                    (("gate", gated), ("no_gate", ungated))
                    if (rep + i) % 2 == 0
                    else (("no_gate", ungated), ("gate", gated))
                )
                for name, pipe in order:
                    t = time.perf_counter()
                    list(bench.predict_files([str(f)], Path(tmp) / f"{name}{rep}", pipe, progress=False))
                    times[name].append(time.perf_counter() - t)
    g, n = np.median(times["gate"]), np.median(times["no_gate"])
    paired = np.array(times["gate"]) / np.array(times["no_gate"])
    res = {
        "files": [str(f) for f in single],
        "reps": args.reps,
        "threads": args.threads,
        "median_s": {"gate": float(g), "no_gate": float(n)},
        "gate_overhead": float(g / n - 1),
        "paired_ratio_median": float(np.median(paired)),
        "aim": 0.10,
        "times": times,
    }
    print(
        f"one image: {g:.3f} s with the gate, {n:.3f} s without: gate adds {g / n - 1:+.1%} (median of paired ratios {np.median(paired) - 1:+.1%}; aim <= 10%)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
