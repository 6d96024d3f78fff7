"""Peak memory and throughput of ``covidcxr predict`` in batch mode over 2,000 inputs against 200.

Issue: "Batch throughput without saliency >= 10 images/s on 2 cores; peak memory over 2,000
inputs no higher than over 200."

The real CLI runs twice as a child process, ``python -m covidcxr.cli predict --csv LIST --out
TMP -q --no-saliency --no-report`` (batch mode), over ``--small`` and over ``--large`` distinct
images drawn in turn from the three data sources (the data root holds 2,671), listed in a CSV
file (so the inputs also go through ``--csv``). Distinct paths matter: predict skips an input
whose path already has a row, so a list that repeats files would run fewer images than it names.

How the peak is measured: ``os.wait4(pid)`` returns the resource usage of exactly that child,
and its ``ru_maxrss`` is the child's peak resident set size (the kernel's high-water mark, so no
spike between two polls is missed; ``getrusage(RUSAGE_CHILDREN)`` would give the maximum over
both runs). With ``--workers N`` > 0 this is the main process only (the models, the batches,
the outputs); each decoding worker is a further process holding a batch or two of decoded images.

How the inputs are chosen so that only the count differs: the large list starts with the small
list, in the same order, and the small list opens with the largest images (by pixel count, from
the file headers) of the large list, one CLI batch of them, so the large run meets no batch of
bigger images than the small run has already seen; a higher peak therefore means memory that
grows with the number of inputs (rows or results kept, a leak), not a bigger image.

Throughput: images per second of the large run, end to end (wall time of the command, model
loading included), and per extra image, ``(large - small) / (wall_large - wall_small)``, which
cancels the start-up cost. Every input must get exactly one row (refused images, e.g. CT or
lateral views from covid-chestxray, get an error row and make the CLI exit 2: expected here).

PASS when peak(large) / peak(small) <= 1.05, the marginal rate is >= 10 images/s, and every
input has one row. The 5 % tolerance absorbs allocator and page-accounting noise between two
otherwise identical processes; a real per-input leak over 1,800 extra images is far larger.

Usage:
    python benchmarks/predict_memory.py --json benchmarks/results/predict_memory.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the checkout under test, also when covidcxr is not installed

from covidcxr.data.paths import resolve_data_root  # noqa: E402
from covidcxr.io import is_supported_file  # noqa: E402

SOURCES = ("covid-chestxray", "nih-chestxray8", "kermany-pediatric")
TOLERANCE = 1.05
GOAL_IMAGES_PER_S = 10.0
CLI_BATCH_SIZE = 8  # the CLI's default --batch-size


def draw_images(data_root: Path, n: int, seed: int) -> list[Path]:
    """``n`` distinct images taken in turn from the three sources, each source shuffled with ``seed``."""
    rng = random.Random(seed)
    pools = []
    for source in SOURCES:
        files = sorted(f for f in (data_root / source / "images").iterdir() if is_supported_file(f))
        rng.shuffle(files)
        pools.append(files)
    drawn: list[Path] = []
    while len(drawn) < n and any(pools):
        for pool in pools:
            if pool and len(drawn) < n:
                drawn.append(pool.pop())
    if len(drawn) < n:
        raise ValueError(f"asked for {n} images but the data folder holds only {len(drawn)}")
    return drawn


def _pixels(f: Path) -> int:
    try:
        with Image.open(f) as im:
            return im.width * im.height
    except Exception:  # unreadable headers are the CLI's business (an error row), not this script's
        return 0


def small_and_large(files: list[Path], n_small: int, batch_size: int) -> tuple[list[Path], list[Path]]:
    """``large`` = ``small`` + the rest, with the biggest images (one batch) opening ``small``."""
    biggest = sorted(files, key=_pixels, reverse=True)[: min(batch_size, n_small)]
    chosen = set(biggest)
    small = biggest + [f for f in files if f not in chosen][: n_small - len(biggest)]
    chosen = set(small)
    return small, small + [f for f in files if f not in chosen]


def run_cli(files: list[Path], work: Path, label: str, args: argparse.Namespace) -> dict:
    """``covidcxr predict --csv`` over ``files`` in a child process: peak RSS, wall time, rows."""
    listing = work / f"{label}.csv"
    with open(listing, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"])
        w.writerows([str(f)] for f in files)
    out = work / label
    cmd = [
        sys.executable,
        "-m",
        "covidcxr.cli",
        "predict",
        "--csv",
        str(listing),
        "--out",
        str(out),
        "-q",
        "--no-saliency",
        "--no-report",
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    if args.no_severity:
        cmd.append("--no-severity")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    # Output to files, not pipes: nothing reads a pipe while wait4 blocks, and a full pipe would hang the child.
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as std:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=std, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    rows = (
        [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        if (out / "predictions.jsonl").is_file()
        else []
    )
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {
        "images": len(files),
        "rows": len(rows),
        "distinct_paths": len({r["path"] for r in rows}),
        "error_rows": sum("error" in r for r in rows),
        "peak_rss_mib": peak / 2**20,
        "wall_s": wall,
        "images_per_s": len(files) / wall,
        "exit_code": proc.returncode,
        "stderr_tail": stderr[-1500:],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=200, help="inputs in the small run (default 200)")
    p.add_argument("--large", type=int, default=2000, help="inputs in the large run (default 2000)")
    p.add_argument("--data-root", help="folder holding covid-chestxray/, nih-chestxray8/, kermany-pediatric/")
    p.add_argument(
        "--batch-size", type=int, default=CLI_BATCH_SIZE, help=f"the CLI's --batch-size (default {CLI_BATCH_SIZE})"
    )
    p.add_argument("--workers", type=int, default=0, help="the CLI's --workers (default 0)")
    p.add_argument(
        "--no-severity", action="store_true", help="pass --no-severity (default: severity on, as the CLI runs)"
    )
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.batch_size <= args.small < args.large:
        raise SystemExit(
            f"error: need --batch-size <= --small < --large, got {args.batch_size}, {args.small} and {args.large}"
        )
    drawn = draw_images(resolve_data_root(args.data_root), args.large, args.seed)
    small, large = small_and_large(drawn, args.small, args.batch_size)
    load_start = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="covidcxr-predict-mem-") as tmp:
        for label, files in (("small", small), ("large", large)):
            print(f"running covidcxr predict over {len(files)} inputs ...", file=sys.stderr, flush=True)
            runs[label] = run_cli(files, Path(tmp), label, args)
    load_end = os.getloadavg()
    s, g = runs["small"], runs["large"]
    ratio = g["peak_rss_mib"] / s["peak_rss_mib"]
    marginal = (g["images"] - s["images"]) / (g["wall_s"] - s["wall_s"])
    complete = all(r["rows"] == r["distinct_paths"] == r["images"] and r["exit_code"] in (0, 2) for r in runs.values())
    goals = {
        "peak_ratio": {"goal": TOLERANCE, "measured": ratio, "met": ratio <= TOLERANCE},
        "images_per_s": {"goal": GOAL_IMAGES_PER_S, "measured": marginal, "met": marginal >= GOAL_IMAGES_PER_S},
        "one_row_per_input": {"met": complete},
    }
    passed = all(v["met"] for v in goals.values())

    print(
        f"\n`covidcxr predict --no-saliency --no-report` (--batch-size {args.batch_size}, --workers {args.workers}); peak RSS = wait4 ru_maxrss"
    )
    print(f"{'inputs':>7} {'rows':>6} {'errors':>7} {'peak RSS MiB':>13} {'wall s':>8} {'images/s':>9} {'exit':>5}")
    for r in runs.values():
        print(
            f"{r['images']:7d} {r['rows']:6d} {r['error_rows']:7d} {r['peak_rss_mib']:13.1f} {r['wall_s']:8.1f} {r['images_per_s']:9.1f} {r['exit_code']:5d}"
        )
    print(
        f"\npeak ratio {args.large}/{args.small}: {ratio:.3f} ({g['peak_rss_mib'] - s['peak_rss_mib']:+.1f} MiB; limit {TOLERANCE})"
    )
    print(
        f"throughput per extra image: {marginal:.1f} images/s (goal >= {GOAL_IMAGES_PER_S}); load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    print("PASS" if passed else "FAIL")
    for label, r in runs.items():
        if r["rows"] != r["images"] or r["exit_code"] not in (0, 2):
            print(
                f"\n{label} run: {r['rows']} rows for {r['images']} inputs, exit {r['exit_code']}; stderr:\n{r['stderr_tail']}"
            )

    if args.json:
        import torch

        report = {
            "command": "python benchmarks/predict_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "loadavg_start": load_start,
                "loadavg_end": load_end,
            },
            "peak_memory": "os.wait4(pid) ru_maxrss of the CLI process (kernel high-water mark of its resident set)",
            "runs": runs,
            "peak_ratio": ratio,
            "growth_mib": g["peak_rss_mib"] - s["peak_rss_mib"],
            "images_per_s_marginal": marginal,
            "images_per_s_end_to_end": g["images_per_s"],
            "goals": goals,
            "passed": passed,
            "inputs": {"small": [str(f) for f in small], "large_extra": [str(f) for f in large[len(small) :]]},
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
