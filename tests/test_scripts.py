"""Scripts under docs/results/ that measure a shipped number still run against the current package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_gate_latency_script_runs_and_reports_the_overhead(tmp_path):
    out = tmp_path / "latency.json"
    script = ROOT / "docs" / "results" / "gate-hospital" / "gate_latency.py"
    args = ["--per-source", "1", "--single", "2", "--reps", "1", "--json", str(out)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(out.read_text())
    assert len(res["times"]["gate"]) == len(res["times"]["no_gate"]) == 2
    assert res["median_s"]["gate"] > 0 and res["median_s"]["no_gate"] > 0
    assert "gate adds" in done.stdout
