"""Throughput of ``covidcxr predict --engine ray`` against the local engine, on the same images in the same run.

Issue: "images/s for local vs ray on this machine (2 cores; expect no gain, the point is that it
does not lose much: >= 0.8x local) and the per-worker throughput, so a user can size a cluster".

- Images: ``--n`` X-rays made from the three fixture images (tests/fixtures) with small
  variations (mirror, crop, contrast, size 60-85 %, PNG or JPEG), written to a temporary
  folder; no data folder is read.
- ``local``: :func:`covidcxr.predict.predict_files` with one loaded Predictor, as
  ``covidcxr predict DIR --no-saliency --no-report`` runs it (batch 8, decoding between
  batches, PyTorch's default threads).
- ``ray``: the same call with :class:`covidcxr.raydata.RayRows` (``--engine ray``): a private
  Ray cluster on this machine, started once before the timed rounds (its start-up is reported
  apart: with ``--address`` a cluster is already up), and a pool of ``--workers`` actors (default:
  one per CPU), which each round creates anew, each loading its models: that is in the time.
- ``local_1_thread`` (a control, in no goal): ``local`` with ``torch.set_num_threads(1)``, the
  threads of one actor, to tell the gain of two processes from the cost of two threads.
- The cases run back to back in every round, each first in turn, so load from other work on
  the machine falls on all alike. Outputs go to fresh folders.

Reported: median images/s of each (rows written / wall time of the call), their ratio
ray / local (the goal: >= 0.8), each actor's images/s while busy (batch time, models loaded),
their sum (the pool's rate once started: workers x per-worker rate), and the seconds to the
first row of a ray round (actor start and model loading).

Usage:
    python benchmarks/predict_ray.py --json benchmarks/results/predict_ray.json
    python benchmarks/predict_ray.py --n 40 --reps 1    # a quick look
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
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout under test

from covidcxr.infer import Predictor  # noqa: E402
from covidcxr.predict import predict_files  # noqa: E402
from covidcxr.raydata import RayRows, connect  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
XRAYS = ("nih_00000710_003.png", "kermany_IM-0117-0001.jpeg", "ieee8023_2cd63b76.jpg")
GOAL = 0.8


def make_images(folder: Path, n: int) -> list[str]:
    """``n`` varied copies of the fixture X-rays in ``folder``."""
    files = []
    for k in range(n):
        im = Image.open(FIXTURES / XRAYS[k % 3]).convert("L")
        if k // 3 % 2:
            im = ImageOps.mirror(im)
        w, h = im.size
        m = 4 * (k % 5)
        im = im.crop((m, m // 2, w - m // 2, h - m)).point(
            lambda v, g=0.8 + 0.05 * (k % 7): round(255 * (v / 255) ** g)
        )
        scale = 0.6 + 0.05 * (k % 6)
        im = im.resize((int(im.width * scale), int(im.height * scale)))
        files.append(str(folder / f"cxr{k:04d}.{'png' if k % 2 else 'jpg'}"))
        im.save(files[-1])
    return files


def timed(files: list[str], out: Path, predictor: Predictor, read_rows=None) -> tuple[float, float, int]:
    """(images/s, seconds to the first row, rows) of one run into ``out``."""
    start = time.perf_counter()
    first = None
    rows = 0
    for _ in predict_files(files, out, predictor, report=False, progress=False, read_rows=read_rows):
        first = first or time.perf_counter() - start
        rows += 1
    seconds = time.perf_counter() - start
    assert rows == len(files), f"{rows} rows for {len(files)} inputs"
    return rows / seconds, first or seconds, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images per run")
    ap.add_argument("--reps", type=int, default=3, help="rounds (each: one local and one ray run)")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="ray actors (default: one per CPU)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    load = {"saliency": False}
    load_avg = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="covidcxr-ray-bench-") as tmp:
        (Path(tmp) / "in").mkdir()
        files = make_images(Path(tmp) / "in", args.n)
        predictor = Predictor.load(**load)
        start = time.perf_counter()
        connect(None)
        startup = time.perf_counter() - start
        import ray

        threads = ray.get(ray.remote(num_cpus=1)(_torch_threads).remote())
        timed(files[:16], Path(tmp) / "warm", predictor)  # first calls allocate and pick kernels
        local, local1, remote, first, workers = [], [], [], [], []
        cases = ("local", "ray", "local_1_thread")
        for rep in range(args.reps):
            for case in cases[rep % 3 :] + cases[: rep % 3]:  # each case first in turn
                out = Path(tmp) / f"{case}{rep}"
                if case == "local":
                    local.append(timed(files, out, predictor)[0])
                    continue
                if case == "local_1_thread":
                    threads_before = torch.get_num_threads()
                    torch.set_num_threads(1)
                    local1.append(timed(files, out, predictor)[0])
                    torch.set_num_threads(threads_before)
                    continue
                rows = RayRows(load, num_workers=args.workers, batch_size=args.batch_size)
                rate, to_first, _ = timed(files, out, predictor, rows)
                remote.append(rate)
                first.append(to_first)
                workers.append({wid[:8]: round(w.rate, 3) for wid, w in rows.workers.items()})
            print(
                f"round {rep + 1}/{args.reps}: local {local[-1]:.2f}, ray {remote[-1]:.2f}, "
                f"local with 1 thread {local1[-1]:.2f} images/s "
                f"(first row after {first[-1]:.1f} s); workers {workers[-1]}",
                flush=True,
            )
        ray.shutdown()
    load_avg.append(os.getloadavg())
    per_worker = [r for w in workers for r in w.values()]
    res = {
        "local_images_per_s": float(np.median(local)),
        "ray_images_per_s": float(np.median(remote)),
        "ray_vs_local": float(np.median(remote) / np.median(local)),
        "ray_vs_local_per_round": [r / lo for r, lo in zip(remote, local, strict=True)],
        "local_1_thread_images_per_s": float(np.median(local1)),
        "per_worker_images_per_s": float(np.median(per_worker)),
        "pool_images_per_s_while_busy": float(np.median([sum(w.values()) for w in workers])),
        "ray_seconds_to_first_row": float(np.median(first)),
        "ray_cluster_start_seconds": startup,
    }
    res["goal"] = {"ray_vs_local": GOAL, "met": res["ray_vs_local"] >= GOAL}
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "ray": ray.__version__,
            "actor_torch_threads": threads,
            "local_torch_threads": torch.get_num_threads(),
            "loadavg_start_end": load_avg,
        },
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "results": res,
        "raw": {"local": local, "local_1_thread": local1, "ray": remote, "ray_first_row_s": first, "workers": workers},
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if res["goal"]["met"] else 1


def _torch_threads() -> int:
    """PyTorch's threads in a one-CPU Ray worker (Ray sets OMP_NUM_THREADS to the worker's CPUs)."""
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
