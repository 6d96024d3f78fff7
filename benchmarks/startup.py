"""Cold start of ``covidcxr predict`` on one image, as a person first runs it, on both installs (each case a new process).

Issue 30: on the light install (``pip install covidcxr``: onnxruntime, no PyTorch) a single-image
``covidcxr predict`` finishes in <= 2 s and ``covidcxr --version`` in <= 0.5 s; measured from the
shell's point of view, with ``python -c "import numpy"`` of each install as the baseline in the same
run (the floor of any Python program that reads an image).

Cases, run interleaved (A B C ... A B C ...) so background load falls on each alike:

- ``import numpy`` in each install (baseline) and ``import torch`` in the full one;
- ``covidcxr --version``: the CLI without models, in each install;
- ``full: predict``: ``covidcxr predict SAMPLE --out TMP --overwrite -q`` with every output on the
  full install (``--backend auto``: PyTorch), and the same with ``--backend onnxruntime``;
- ``light: predict``: the same command on the light install (``auto``: onnxruntime on the shipped graphs).

Each case's median wall time and median CPU time (user + system) are reported: on a busy machine the
wall time grows with the load, the CPU time much less.

The full install is this interpreter with this checkout's ``src`` first on the path; the light one is
the interpreter ``--light-python`` names, running its installed copy (build it with
``python3 -m venv /tmp/light && /tmp/light/bin/pip install .``). Each install's size (``du``) is
recorded, and the ten slowest imports of the light predict (``python -X importtime``).

Usage:
    python benchmarks/startup.py --light-python /tmp/light/bin/python --json benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "covidcxr" / "samples" / "sample_cxr.jpg"
GOAL_LIGHT_PREDICT_S = 2.0
GOAL_VERSION_S = 0.5


def _timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the child's) of one run of ``cmd``.

    CPU time is what the run costs whatever else the machine does; on a busy machine the wall
    time grows with the load, the CPU time much less.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-1000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def slowest_imports(python: str, cmd: list[str], env: dict, n: int = 10) -> list[dict]:
    """The ``n`` imports with the largest cumulative time (top-level entries only), from -X importtime."""
    proc = subprocess.run([python, "-X", "importtime", *cmd], env=env, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if cumulative.isdigit() and not name.startswith(" "):
            rows.append({"module": name, "cumulative_s": int(cumulative) / 1e6})
    top = [r for r in rows if not r["module"].startswith((" ",))]
    return sorted(top, key=lambda r: -r["cumulative_s"])[:n]


def install_size_mb(python: str) -> float:
    """Disk use of the environment an interpreter belongs to (``du -sk`` of its ``sys.prefix``), in MB."""
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    du = subprocess.run(["du", "-sk", prefix.stdout.strip()], capture_output=True, text=True, check=True)
    return round(int(du.stdout.split()[0]) / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--light-python", required=True, help="python of a light install (pip install covidcxr, no torch)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    light_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # its installed copy, nothing else
    light = args.light_python
    check = subprocess.run([light, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, env=light_env)  # fmt: skip
    if check.stdout.strip() != "True":
        ap.error(f"{light} is not a light install (it has PyTorch, or does not run): {check.stderr[-300:]}")
    full_cli, light_cli = [sys.executable, "-m", "covidcxr.cli"], [light, "-m", "covidcxr.cli"]
    with tempfile.TemporaryDirectory(prefix="covidcxr-startup-") as tmp:
        out = str(Path(tmp) / "out")
        predict = ["predict", str(SAMPLE), "--out", out, "--overwrite", "-q"]
        cases = {
            "full: import numpy": ([sys.executable, "-c", "import numpy"], full_env),
            "full: import torch": ([sys.executable, "-c", "import torch"], full_env),
            "full: covidcxr --version": ([*full_cli, "--version"], full_env),
            "full: predict (torch)": ([*full_cli, *predict], full_env),
            "full: predict --backend onnxruntime": ([*full_cli, *predict, "--backend", "onnxruntime"], full_env),
            "light: import numpy": ([light, "-c", "import numpy"], light_env),
            "light: covidcxr --version": ([*light_cli, "--version"], light_env),
            "light: predict (onnxruntime)": ([*light_cli, *predict], light_env),
        }
        for cmd, env in cases.values():  # warm the file cache, not the interpreter
            _timed(cmd, env)
        times: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        load = [os.getloadavg()[0]]
        for _ in range(args.rounds):
            for name, (cmd, env) in cases.items():
                wall, used = _timed(cmd, env)
                times[name].append(wall)
                cpu[name].append(used)
            load.append(os.getloadavg()[0])
        imports = slowest_imports(light, cases["light: predict (onnxruntime)"][0][1:], light_env)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    median_cpu = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
    report = {
        "goals_s": {"light: predict (onnxruntime)": GOAL_LIGHT_PREDICT_S, "light: covidcxr --version": GOAL_VERSION_S},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "median_cpu_s": {k: round(v, 3) for k, v in median_cpu.items()},
        "over_import_numpy": {
            "light: predict (onnxruntime)": round(
                median["light: predict (onnxruntime)"] / median["light: import numpy"], 2
            ),
            "full: predict (torch)": round(median["full: predict (torch)"] / median["full: import numpy"], 2),
        },
        "install_size_mb": {"full": install_size_mb(sys.executable), "light": install_size_mb(light)},
        "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "slowest_imports_light_predict": imports,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1min": load},
    }
    for k, v in median.items():
        print(f"{k:>36}: {v:.2f} s wall, {median_cpu[k]:.2f} s CPU")
    for k, v in report["over_import_numpy"].items():
        print(f"{k:>36}: {v}x its install's import of numpy")
    print(f"install sizes (MB): {report['install_size_mb']}; goals: {report['goals_s']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
