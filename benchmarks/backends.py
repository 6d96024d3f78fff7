"""onnxruntime against PyTorch eager for the whole pipeline, on CPU, in one process.

Issue: "onnxruntime >= 1.5x faster than torch eager for the whole pipeline on 2 cores,
outputs within 1e-4".

Both backends run ``Predictor.run`` (gate, lungs, lesions and severity, diagnosis and, for
``single``, saliency) on the same decoded images, interleaved (torch, onnx, torch, onnx, ...)
so that background load hits both alike:

- ``single``: one image at a time with saliency (the ``covidcxr predict FILE`` work without
  file writing): median seconds per image;
- ``batch``: batches of 16 without saliency (batch mode): images per second.

Outputs are compared on every image: the largest absolute difference of the calibrated
probabilities, the gate probability, and the share of lung-mask pixels that differ.

Usage:
    python benchmarks/backends.py --json benchmarks/results/backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout under test

from covidcxr.data.paths import resolve_data_root  # noqa: E402
from covidcxr.export import export_onnx  # noqa: E402
from covidcxr.infer import Predictor  # noqa: E402
from covidcxr.io import read_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict import pick_files  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--per-source", type=int, default=16)
    ap.add_argument("--single", type=int, default=12, help="images timed one at a time per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    images = [read_image(f) for f in pick_files(resolve_data_root(args.data_root), args.per_source)]
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(tmp)
        pipes = {
            "torch": (Predictor.load(saliency=True), Predictor.load(saliency=False)),
            "onnxruntime": (
                Predictor.load(backend="onnxruntime", onnx_dir=tmp, saliency=True),
                Predictor.load(backend="onnxruntime", onnx_dir=tmp, saliency=False),
            ),
        }
        for full, fast in pipes.values():  # warm-up
            full.run(images[:1])
            fast.run(images[: args.batch_size])
        outs = {k: pipes[k][1].run(images) for k in pipes}
        single = images[:: max(1, len(images) // args.single)][: args.single]
        times: dict[str, list[float]] = {f"{k}_{c}": [] for k in pipes for c in ("single", "batch")}
        for rep in range(args.reps):
            for k, (full, fast) in pipes.items():
                for im in single:
                    t = time.perf_counter()
                    full.run([im])
                    times[f"{k}_single"].append(time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(0, len(images), args.batch_size):
                    fast.run(images[i : i + args.batch_size])
                times[f"{k}_batch"].append(len(images) / (time.perf_counter() - t))
            print(
                f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {np.median(v):.3f}" for k, v in times.items()),
                flush=True,
            )
    diffs = {"probabilities": 0.0, "gate_probability": 0.0, "mask_pixels": 0.0}
    for a, b in zip(outs["torch"], outs["onnxruntime"]):
        if a.probabilities and b.probabilities:
            diffs["probabilities"] = max(
                diffs["probabilities"],
                max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities),
            )
        if a.gate_probability is not None and b.gate_probability is not None:
            diffs["gate_probability"] = max(diffs["gate_probability"], abs(a.gate_probability - b.gate_probability))
        if a.lung_mask is not None and b.lung_mask is not None:
            diffs["mask_pixels"] = max(diffs["mask_pixels"], float((a.lung_mask != b.lung_mask).mean()))
    res = {k: float(np.median(v)) for k, v in times.items()}
    res["speedup_single"] = res["torch_single"] / res["onnxruntime_single"]
    res["speedup_batch"] = res["onnxruntime_batch"] / res["torch_batch"]
    res["max_abs_diff"] = diffs
    res["goals"] = {
        "speedup_single": {"goal": 1.5, "met": res["speedup_single"] >= 1.5},
        "speedup_batch": {"goal": 1.5, "met": res["speedup_batch"] >= 1.5},
        "probabilities_within_1e-4": diffs["probabilities"] <= 1e-4,
    }
    machine = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }
    import onnxruntime

    machine["onnxruntime"] = onnxruntime.__version__
    report = {
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k != "json"} | {"images": len(images)},
        "results": res,
        "raw": times,
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
