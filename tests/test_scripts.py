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


@pytest.mark.integration
def test_resegmented_blackout_script_runs_on_a_few_films(tmp_path):
    script = ROOT / "docs" / "results" / "audit-resegmented" / "run.py"
    done = subprocess.run(
        [sys.executable, str(script), "--limit", "3", "--n-resamples", "20", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads((tmp_path / "resegmented.json").read_text())
    for row in res["per_archive"].values():
        assert row["n"] > 0 and 0 <= row["mask_dice_median"] <= 1 and 0 <= row["headline_changed"] <= 1
    modes = {m for a in res["archive_checks"].values() for m in a["modes"]}
    assert modes == {"intact", "all but the lungs blacked out, lungs segmented again"}
    assert "| archive |" in (tmp_path / "resegmented.md").read_text()
