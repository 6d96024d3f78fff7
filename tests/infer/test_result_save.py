"""``Result.save(folder)`` writes what ``covidcxr predict`` writes for the same image (onnxruntime: fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covidcxr import Predictor
from covidcxr.cli import SAMPLE, main


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(backend="onnxruntime")


def test_save_writes_the_files_and_row_of_the_command_line(predictor, tmp_path):
    row = predictor.predict(str(SAMPLE)).save(tmp_path / "py")
    assert main(["predict", str(SAMPLE), "--out", str(tmp_path / "cli"), "-q", "--backend", "onnxruntime"]) == 0
    names = {p.name for p in (tmp_path / "cli").iterdir() if not p.name.startswith(".")}
    assert {p.name for p in (tmp_path / "py").iterdir() if not p.name.startswith(".")} >= names
    assert names >= {"sample_cxr_lungs.png", "sample_cxr_heatmap.png", "sample_cxr_report.png", "predictions.jsonl"}
    cli_row = json.loads((tmp_path / "cli" / "predictions.jsonl").read_text())
    py_row = json.loads((tmp_path / "py" / "predictions.jsonl").read_text())
    assert py_row == row
    files = ("lung_mask", "heatmap", "report")
    assert {k: v for k, v in py_row.items() if k not in files} == {k: v for k, v in cli_row.items() if k not in files}
    for key in files:
        a, b = Image.open(py_row[key]), Image.open(cli_row[key])
        assert a.size == b.size
        if key != "report":  # the report's pixels carry its title's font rendering; the maps are equal
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_save_of_an_array_without_report_and_of_a_refusal(predictor, tmp_path):
    image = np.asarray(Image.open(SAMPLE).convert("L"))
    res = predictor.run([image.astype(np.float32) / 255])[0]  # run() keeps no image
    with pytest.raises(ValueError, match="report=False"):
        res.save(tmp_path)
    row = res.save(tmp_path, stem="scan", report=False)
    assert (tmp_path / "scan_lungs.png").is_file() and row["report"] is None
    refused = predictor.predict(np.zeros((300, 300), np.uint8))
    assert refused.save(tmp_path) == refused.to_dict() and "error" in refused.to_dict()
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2
