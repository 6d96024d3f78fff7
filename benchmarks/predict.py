"""Speed of the whole pipeline on CPU: one image end to end, and batch mode.

Issue: "one image end to end (read, segment, classify, Grad-CAM, report) <= 1 s; batch mode
without saliency >= 10 images/s", on 2 cores; "severity adds <= 20% to the single-image
predict latency".

Cases, all in one process and run interleaved (A B C A B C ...) so background load hits each
alike; files are X-rays from every source of the development data at their stored size:

- ``single``: ``covidcxr predict FILE`` for one file at a time, the way a person runs it:
  read the file, gate, lungs, diagnosis, Grad-CAM, write the mask, heat map and report PNGs
  and the JSON line; with lesions and severity scores (the default). Median seconds per image.
- ``single_no_severity`` (baseline for severity): the same with ``--no-severity``; the
  severity overhead is reported as the ratio of the two medians.
- ``batch``: ``covidcxr predict DIR --no-saliency --no-report`` on all files (batch 16):
  read, gate, lungs, diagnosis, mask PNG, JSON line. Images per second.
- ``batch_no_severity``: the same with ``--no-severity`` too.
- ``batch+report``: the same as ``batch`` with the report PNGs (``--no-saliency`` only).
- ``segment`` (baseline): ``covidcxr segment DIR`` work on the same files (read, lungs, mask
  PNG), images per second; the batch modes are reported as ratios to it.

``--backend onnxruntime`` runs every case on the ONNX models (exported into a temporary
folder first) instead of PyTorch.

Usage:
    python benchmarks/predict.py --json benchmarks/results/predict.json
    python benchmarks/predict.py --backend onnxruntime --json benchmarks/results/predict_onnxruntime.json
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

from covidcxr.batch import read_batches  # noqa: E402
from covidcxr.data.paths import resolve_data_root  # noqa: E402
from covidcxr.infer import Predictor  # noqa: E402
from covidcxr.io import is_supported_file, mask_png  # noqa: E402
from covidcxr.predict import predict_files  # noqa: E402

SOURCES = ("covid-chestxray", "nih-chestxray8", "kermany-pediatric")
GOALS = {"single_s_per_image": 1.0, "batch_images_per_s": 10.0, "severity_overhead": 0.20}


def pick_files(root: Path, per_source: int) -> list[Path]:
    """The first ``per_source`` images (sorted names) of each source's images/ folder."""
    files = []
    for src in SOURCES:
        found = sorted(f for f in (root / src / "images").iterdir() if is_supported_file(f))
        files.extend(found[:per_source])
    return files


def segment_only(pipeline: Predictor, files: list[Path], out: Path, batch_size: int) -> None:
    for batch in read_batches(files, batch_size):
        good = [(i, im) for i, im, _ in batch if im is not None]
        for (i, _), mask in zip(good, pipeline.segmenter.segment([im for _, im in good])):
            mask_png(mask, out / f"{files[i].stem}_lungs.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root")
    ap.add_argument("--per-source", type=int, default=16, help="images per source (batch cases use all of them)")
    ap.add_argument("--single", type=int, default=12, help="images timed one at a time per repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--backend", default="torch", choices=["torch", "onnxruntime"], help="run the models on PyTorch or onnxruntime"
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = pick_files(resolve_data_root(args.data_root), args.per_source)
    onnx_dir = tempfile.mkdtemp(prefix="covidcxr-onnx-")
    if args.backend == "onnxruntime":
        from covidcxr.export import export_onnx

        export_onnx(onnx_dir)
    load = {"backend": args.backend, "onnx_dir": onnx_dir}
    full = Predictor.load(saliency=True, **load)
    no_severity = Predictor.load(saliency=True, severity=False, **load)
    fast = Predictor.load(saliency=False, **load)
    fastest = Predictor.load(saliency=False, severity=False, **load)
    single_files = files[:: max(1, len(files) // args.single)][: args.single]
    times: dict[str, list[float]] = {
        "single": [],
        "single_no_severity": [],
        "batch": [],
        "batch_no_severity": [],
        "batch+report": [],
        "segment": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: first calls allocate and pick kernels
        list(predict_files([str(files[0])], Path(tmp) / "warm", full, progress=False))
        list(predict_files([str(files[0])], Path(tmp) / "warm1", no_severity, progress=False))
        list(
            predict_files(
                [str(f) for f in files[:16]],
                Path(tmp) / "warm2",
                fast,
                batch_size=args.batch_size,
                report=False,
                progress=False,
            )
        )
        list(
            predict_files(
                [str(f) for f in files[:16]],
                Path(tmp) / "warm3",
                fastest,
                batch_size=args.batch_size,
                report=False,
                progress=False,
            )
        )
        for rep in range(args.reps):
            for f in single_files:
                for name, pipe in (("single", full), ("single_no_severity", no_severity)):
                    t = time.perf_counter()
                    rows = list(predict_files([str(f)], Path(tmp) / f"{name}{rep}", pipe, progress=False))
                    times[name].append(time.perf_counter() - t)
                    assert (
                        "error" not in rows[0] or "refused" in rows[0]["error"] or "not recognised" in rows[0]["error"]
                    ), rows[0]
            for name, pipe, kwargs in (
                ("batch", fast, {"report": False}),
                ("batch_no_severity", fastest, {"report": False}),
                ("batch+report", fast, {"report": True}),
            ):
                t = time.perf_counter()
                list(
                    predict_files(
                        [str(f) for f in files],
                        Path(tmp) / f"{name}{rep}",
                        pipe,
                        batch_size=args.batch_size,
                        progress=False,
                        **kwargs,
                    )
                )
                times[name].append(len(files) / (time.perf_counter() - t))
            out = Path(tmp) / f"segment{rep}"
            out.mkdir()
            t = time.perf_counter()
            segment_only(fast, files, out, args.batch_size)
            times["segment"].append(len(files) / (time.perf_counter() - t))
            print(
                f"rep {rep + 1}/{args.reps}: single {np.median(times['single'][-len(single_files) :]):.3f} s/image "
                f"({np.median(times['single_no_severity'][-len(single_files) :]):.3f} without severity); batch {times['batch'][-1]:.1f}, batch+report {times['batch+report'][-1]:.1f}, segment {times['segment'][-1]:.1f} images/s",
                flush=True,
            )
    res = {
        "single_s_per_image": float(np.median(times["single"])),
        "single_s_per_image_p90": float(np.quantile(times["single"], 0.9)),
        "single_no_severity_s_per_image": float(np.median(times["single_no_severity"])),
        "batch_images_per_s": float(np.median(times["batch"])),
        "batch_no_severity_images_per_s": float(np.median(times["batch_no_severity"])),
        "batch_report_images_per_s": float(np.median(times["batch+report"])),
        "segment_images_per_s": float(np.median(times["segment"])),
    }
    res["severity_overhead"] = res["single_s_per_image"] / res["single_no_severity_s_per_image"] - 1
    res["batch_vs_segment"] = res["batch_images_per_s"] / res["segment_images_per_s"]
    res["batch_report_vs_segment"] = res["batch_report_images_per_s"] / res["segment_images_per_s"]
    res["goals"] = {
        k: {"goal": g, "measured": res[k], "met": res[k] <= g if k.startswith(("single", "severity")) else res[k] >= g}
        for k, g in GOALS.items()
    }
    machine = {
        "backend": args.backend,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }
    report = {
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k != "json"}
        | {"files": len(files), "single_files": len(single_files)},
        "results": res,
        "raw": times,
        "models": fast.models,
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
