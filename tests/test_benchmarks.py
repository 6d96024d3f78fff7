"""Every script in benchmarks/ runs end to end at a tiny size, so none can rot unnoticed.

The numbers are not checked here (benchmarks are measured on a quiet machine, as ratios
within one run); only that each script finishes and writes its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Tiny arguments for each script (a script missing here fails the coverage test below).
TINY = {
    "backends.py": ["--per-source", "1", "--single", "1", "--reps", "1", "--batch-size", "2"],
    "bf16_convergence.py": ["--limit", "8", "--epochs", "1"],
    "predict.py": ["--per-source", "1", "--single", "1", "--reps", "1", "--batch-size", "2"],
    "predict_memory.py": ["--small", "9", "--large", "12"],  # --small must exceed the batch size (8)
    "segment.py": ["--n", "1", "--warmup", "0", "--batch-size", "2", "--per-source", "1"],
    "segment_memory.py": ["--small", "2", "--large", "4"],
    "serve.py": ["--requests", "2"],
    "serve_load.py": ["--per-source", "1", "--huge", "1", "--timeout", "120"],
    "startup.py": ["--rounds", "1"],  # + --light-python: a light install built for the test (below)
    "hostile_inputs.py": ["--skip", "server", "kill9"],  # the bombs through covidcxr predict (about a minute)
    "dicom_node.py": ["--n", "1", "--warmup", "0", "--small", "1", "--large", "2", "--side", "512"],
    "predict_ray.py": ["--n", "4", "--reps", "1", "--workers", "1", "--batch-size", "2"],
}


def _light_install(venv: Path) -> str:
    """The light install (``pip install .``: no PyTorch) in a new venv, as the README's first command makes it."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(BENCHMARKS.parent)], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        pytest.skip(f"the light install could not be built here: {done.stderr[-500:]}")
    return python


def test_every_benchmark_has_a_tiny_run():
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(TINY)


@pytest.mark.integration
@pytest.mark.data
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_at_a_tiny_size(script, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    extra = ["--light-python", _light_install(tmp_path / "light")] if script == "startup.py" else []
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *TINY[script], *extra, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    # Exit 1 is a benchmark's verdict that an aim was missed (a tiny run on a busy machine may miss
    # one); a crash is a traceback, and no JSON.
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text())
