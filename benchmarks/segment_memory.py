"""Peak memory of ``covidcxr segment`` over many images against over few.

Issue: "Peak memory of `covidcxr segment` over 500 images no higher than over 50."

The real CLI runs twice as a child process (``python -m covidcxr.cli segment FILES...
--out TMP -q``), over ``--small`` and over ``--large`` real images drawn from the three
data sources, and the peak resident set size (RSS) of each run is read from the kernel.

How the peak is measured: ``os.wait4(pid)`` returns the resource usage of exactly that
child, and its ``ru_maxrss`` is the child's peak RSS (the kernel's high-water mark, so
nothing between two polls is missed). ``getrusage(RUSAGE_CHILDREN)`` would be wrong
here: it is the maximum over every child this process has reaped, so the second run
would report max(first, second).

How the inputs are chosen so that only the count differs: the large list starts with
the small list, in the same order, so the large run first does what the small run does
(the same full batches), then more. The small list opens with the largest images (by
pixel count) of the large list, one CLI batch of them, so the large run meets no batch
of bigger images than the small run has already seen; a higher peak therefore means
memory that grows with the number of images (outputs or results kept, a leak), not a
bigger image. (Keep --small >= --batch-size: a small run shorter than one batch holds
fewer images at once than the large run's first batch.)

PASS when peak(large) / peak(small) <= 1.05. The 5 % tolerance absorbs allocator and
page-accounting noise between two otherwise identical processes; a real per-image leak
over 450 extra images is much larger.

Usage:
    python benchmarks/segment_memory.py --json segment_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
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
CLI_BATCH_SIZE = 8  # the CLI's default --batch-size


def draw_images(data_root: Path, n: int, seed: int) -> list[Path]:
    """``n`` images taken in turn from the three sources, each source shuffled with ``seed``."""
    rng = random.Random(seed)
    pools = []
    for source in SOURCES:
        files = sorted(f for f in (data_root / source / "images").iterdir() if is_supported_file(f))
        rng.shuffle(files)
        pools.append(files)
    drawn = []
    while len(drawn) < n and any(pools):
        for pool in pools:
            if pool and len(drawn) < n:
                drawn.append(pool.pop())
    if len(drawn) < n:
        raise ValueError(f"asked for {n} images but the data folder holds only {len(drawn)}")
    return drawn


def small_and_large(files: list[Path], n_small: int, batch_size: int) -> tuple[list[Path], list[Path]]:
    """Split the drawn images so that ``large`` = ``small`` + the rest, with the biggest images in ``small``.

    Sizes come from the file headers (no decoding).
    """
    pixels = {}
    for f in files:
        with Image.open(f) as im:
            pixels[f] = im.width * im.height
    biggest = sorted(files, key=pixels.__getitem__, reverse=True)[: min(batch_size, n_small)]
    rest = [f for f in files if f not in set(biggest)]
    small = biggest + rest[: n_small - len(biggest)]
    chosen = set(small)
    return small, small + [f for f in files if f not in chosen]


def run_cli(files: list[Path], out_dir: Path, weights: str | None, batch_size: int) -> dict:
    """Run ``covidcxr segment`` over ``files`` in a child process; its peak RSS, exit code and wall time."""
    cmd = [
        sys.executable,
        "-m",
        "covidcxr.cli",
        "segment",
        *map(str, files),
        "--out",
        str(out_dir),
        "-q",
        "--batch-size",
        str(batch_size),
    ]
    if weights:
        cmd += ["--lung-weights", weights]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    # stderr to a file, not a pipe: nothing reads a pipe while wait4 blocks, and a full pipe would hang the child.
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak_bytes = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    masks = len(list(out_dir.glob("*_lungs.png")))
    return {
        "images": len(files),
        "masks_written": masks,
        "peak_rss_mib": peak_bytes / 2**20,
        "exit_code": proc.returncode,
        "wall_s": wall,
        "stderr_tail": stderr[-2000:],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=50, help="images in the small run (default 50)")
    p.add_argument("--large", type=int, default=500, help="images in the large run (default 500)")
    p.add_argument("--weights", help="weights spec JSON (default: the shipped lung model)")
    p.add_argument("--data-root", help="folder holding covid-chestxray/, nih-chestxray8/, kermany-pediatric/")
    p.add_argument(
        "--batch-size", type=int, default=CLI_BATCH_SIZE, help=f"the CLI's --batch-size (default {CLI_BATCH_SIZE})"
    )
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0 < args.small < args.large:
        raise SystemExit(f"error: need 0 < --small < --large, got {args.small} and {args.large}")
    drawn = draw_images(resolve_data_root(args.data_root), args.large, args.seed)
    small, large = small_and_large(drawn, args.small, args.batch_size)

    runs = {}
    with tempfile.TemporaryDirectory(prefix="covidcxr-mem-") as tmp:
        for label, files in (("small", small), ("large", large)):
            print(f"running covidcxr segment over {len(files)} images ...", file=sys.stderr, flush=True)
            runs[label] = run_cli(files, Path(tmp) / label, args.weights, args.batch_size)
    failed = [r for r in runs.values() if r["exit_code"] != 0 or r["masks_written"] != r["images"]]

    ratio = runs["large"]["peak_rss_mib"] / runs["small"]["peak_rss_mib"]
    passed = ratio <= TOLERANCE and not failed
    print(f"\nPeak RSS of `covidcxr segment` (wait4 ru_maxrss of the CLI process), --batch-size {args.batch_size}")
    print(f"{'images':>7} {'peak RSS MiB':>13} {'wall s':>8} {'masks':>6} {'exit':>5}")
    for r in runs.values():
        print(
            f"{r['images']:7d} {r['peak_rss_mib']:13.1f} {r['wall_s']:8.1f} {r['masks_written']:6d} {r['exit_code']:5d}"
        )
    growth = runs["large"]["peak_rss_mib"] - runs["small"]["peak_rss_mib"]
    print(
        f"\nratio {args.large}/{args.small}: {ratio:.3f} ({growth:+.1f} MiB)  "
        f"{'PASS' if passed else 'FAIL'} (limit {TOLERANCE}: 5% tolerance for allocator noise)"
    )
    for label, r in runs.items():
        if r in failed:
            print(
                f"\n{label} run failed (exit {r['exit_code']}, {r['masks_written']}/{r['images']} masks); stderr:\n{r['stderr_tail']}"
            )

    if args.json:
        report = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
            "runs": runs,
            "inputs": {"small": [str(f) for f in small], "large_extra": [str(f) for f in large[len(small) :]]},
            "ratio": ratio,
            "growth_mib": growth,
            "tolerance": TOLERANCE,
            "passed": passed,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
