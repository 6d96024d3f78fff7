"""ONNX export and the onnxruntime backend: parity with PyTorch, and no PyTorch at inference."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from covidcxr.cli import SAMPLE, main
from covidcxr.infer import Predictor
from covidcxr.io import read_image

FIXTURES = ("ieee8023_2cd63b76.jpg", "kermany_IM-0117-0001.jpeg", "nih_00000710_003.png")

# Blocks `import torch` (and torchvision, timm, smp, captum) in a fresh interpreter.
_NO_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "timm", "segmentation_models_pytorch", "captum"}:
            raise ImportError(f"{name} is blocked: the onnxruntime backend must not need it")
sys.meta_path.insert(0, _Block())
"""


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(onnx_dir):
    from pathlib import Path

    fixtures = Path(__file__).parents[1] / "fixtures"
    images = [read_image(fixtures / n) for n in FIXTURES] + [read_image(SAMPLE)]
    torch_res = Predictor.load().run(images)
    ort_res = Predictor.load(backend="onnxruntime", onnx_dir=str(onnx_dir)).run(images)
    return torch_res, ort_res


def test_export_writes_every_model_with_a_verified_spec(onnx_dir):
    from covidcxr.specs import SHIPPED, sha256_file

    for name in SHIPPED.values():
        spec = json.loads((onnx_dir / f"{name}.json").read_text())
        assert spec["file"] == f"{name}.onnx" and sha256_file(onnx_dir / spec["file"]) == spec["sha256"]
        assert spec["training"]["exported_from"]["sha256"]


def test_onnxruntime_matches_pytorch_within_1e_4(runs):
    torch_res, ort_res = runs
    for a, b in zip(torch_res, ort_res):
        assert a.error is None and b.error is None
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) < 1e-4
        assert abs(a.gate_probability - b.gate_probability) < 1e-4
        assert (a.lung_mask != b.lung_mask).mean() < 1e-4
        assert np.abs(a.heatmap - b.heatmap).max() < 1e-3  # Grad-CAM from the graph vs captum
        for z, v in a.severity["brixia"].items():
            assert abs(v - b.severity["brixia"][z]) <= 0.011  # rounded to 0.01
        assert abs(a.severity["geographic_extent"] - b.severity["geographic_extent"]) <= 0.011


def test_onnx_backend_needs_no_torch(onnx_dir, tmp_path):
    code = (
        _NO_TORCH
        + f"""
from covidcxr.cli import main
raise SystemExit(main(["predict", "--backend", "onnxruntime", "--onnx-dir", {str(onnx_dir)!r}, "--out", {str(tmp_path / "out")!r}, "-q"]))
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-5 and row["severity"]["brixia"]["global"] >= 0
    assert row["heatmap"] and row["report"]


def test_missing_onnx_dir_says_how_to_export(tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                "--backend",
                "onnxruntime",
                "--onnx-dir",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "o"),
                "-q",
            ]
        )
        == 2
    )
    assert "covidcxr export onnx" in capsys.readouterr().err


def test_sessions_do_not_spin_wait(onnx_dir):
    """Five sessions with spinning thread pools starve each other and the NumPy steps on 2 cores."""
    from covidcxr.infer import OrtRunner
    from covidcxr.specs import SHIPPED

    model = OrtRunner(onnx_dir / f"{SHIPPED['diagnosis']}.json")
    assert model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
