"""Cold start of ``covidcxr predict`` on one image, as a person first runs it (each case a new process).

Issue: "a single-image ``covidcxr predict`` finishes in <= 3 s wall with the torch backend";
measured as a subprocess from the shell's point of view, with the cost of importing PyTorch
alone as the baseline in the same run (the floor no lazy import can go under).

Cases, run interleaved (A B C D A B C D ...) so background load falls on each alike:

- ``python``: an empty interpreter;
- ``import torch`` (baseline);
- ``covidcxr --version``: the CLI without models;
- ``predict torch``: ``covidcxr predict SAMPLE --out TMP --overwrite -q`` (every output);
- ``predict onnxruntime``: the same with ``--backend onnxruntime`` (models exported first, not timed).

It also writes the ten slowest imports of the torch predict (``python -X importtime``).

Usage:
    python benchmarks/startup.py --json benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "covidcxr" / "samples" / "sample_cxr.jpg"
GOAL_S = 3.0


def _timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1000:]}")
    return time.perf_counter() - t0


def slowest_imports(cmd: list[str], env: dict, n: int = 10) -> list[dict]:
    """The ``n`` imports with the largest cumulative time (top-level entries only), from -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if cumulative.isdigit() and not name.startswith(" "):
            rows.append({"module": name, "cumulative_s": int(cumulative) / 1e6})
    top = [r for r in rows if not r["module"].startswith((" ",))]
    return sorted(top, key=lambda r: -r["cumulative_s"])[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cli = [sys.executable, "-m", "covidcxr.cli"]
    with tempfile.TemporaryDirectory(prefix="covidcxr-startup-") as tmp:
        onnx = Path(tmp) / "onnx"
        subprocess.run([*cli, "export", "onnx", "--out", str(onnx)], env=env, check=True, capture_output=True)
        out = str(Path(tmp) / "out")
        cases = {
            "python": [sys.executable, "-c", "pass"],
            "import torch": [sys.executable, "-c", "import torch"],
            "covidcxr --version": [*cli, "--version"],
            "predict torch": [*cli, "predict", str(SAMPLE), "--out", out, "--overwrite", "-q"],
            "predict onnxruntime": [
                *cli, "predict", str(SAMPLE), "--out", out, "--overwrite", "-q",
                "--backend", "onnxruntime", "--onnx-dir", str(onnx),
            ],
        }  # fmt: skip
        _timed(cases["predict torch"], env)  # warm the file cache, not the interpreter
        times: dict[str, list[float]] = {k: [] for k in cases}
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for name, cmd in cases.items():
                times[name].append(_timed(cmd, env))
            load.append(os.getloadavg()[0])
        imports = slowest_imports(cases["predict torch"][1:], env)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    report = {
        "goal_predict_torch_s": GOAL_S,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "predict_torch_over_import_torch": round(median["predict torch"] / median["import torch"], 2),
        "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "slowest_imports_predict_torch": imports,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1min": load},
    }
    for k, v in median.items():
        print(f"{k:>22}: {v:.2f} s")
    print(f"predict (torch) = {report['predict_torch_over_import_torch']}x the import of torch; goal {GOAL_S} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
