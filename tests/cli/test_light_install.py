"""The light install (no PyTorch, simulated by blocking its import): predict reads on onnxruntime, training says what to add."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Blocks PyTorch and the rest of the train extra in a fresh interpreter.
_LIGHT = """
import sys
class _Block:
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "timm", "segmentation_models_pytorch", "captum", "cv2", "yaml"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
from covidcxr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _light(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _LIGHT, *args], capture_output=True, text=True, timeout=300, env=env)


def test_predict_without_torch_writes_a_full_row_on_onnxruntime(tmp_path):
    run = _light("predict", "--out", str(tmp_path), "-q")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "on onnxruntime" in run.stderr.splitlines()[-1]
    row = json.loads((tmp_path / "predictions.jsonl").read_text())
    assert row["backend"] == "onnxruntime" and row["prediction"] in row["probabilities"]
    assert row["findings"] and row["severity"] and row["uncertain"] is not None
    assert all(Path(row[k]).is_file() for k in ("lung_mask", "heatmap", "report"))


def test_training_without_torch_says_which_extra_to_install(tmp_path):
    run = _light("train", "diagnosis", "--quick", "--out", str(tmp_path / "run"))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: covidcxr train diagnosis needs the train extra")
    assert "pip install 'covidcxr[train]'" in run.stderr
