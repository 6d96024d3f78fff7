"""``covidcxr evaluate uncertainty``: one command fits the operating point and the uncertain flag into a spec."""

from __future__ import annotations

import json
import shutil

import pytest

from covidcxr.cli import main
from covidcxr.specs import WeightSpec, sha256_file, shipped_spec_path


@pytest.mark.integration
def test_the_command_writes_both_into_the_spec_and_leaves_the_weights_alone(tmp_path, capsys):
    shipped = shipped_spec_path("diagnosis")
    spec = tmp_path / shipped.name
    shutil.copy(shipped, spec)
    shutil.copy(shipped.parent / WeightSpec.from_json(shipped).file, tmp_path)
    out = tmp_path / "out"
    args = ["evaluate", "uncertainty", "--limit", "4", "--no-loso", "--out", str(out), "--spec", str(spec)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "operating point: disease when P(abnormal) >=" in printed and "near chance" in printed
    fitted = WeightSpec.from_json(spec)
    report = json.loads((out / "headline.json").read_text())
    assert fitted.operating_point["p_abnormal"] == report["operating_point"]["p_abnormal"]
    assert report["operating_point"]["validation"]["sensitivity"] >= 0.85
    assert fitted.uncertainty["operating_margin"] >= 0 and fitted.uncertainty["min_side"] == 224
    assert sha256_file(tmp_path / fitted.file) == fitted.sha256  # the weights are not touched
    assert (out / "calibration_abnormal.png").stat().st_size > 0
    assert len(list(out.glob("validation_readings_*.npz"))) == 1  # a second run reads them back
