"""The notebooks: committed without outputs, thin over the public API, and run end to end.

The execution tests run each notebook in quick mode (``COVIDCXR_NOTEBOOK_QUICK=1``) in a fresh
kernel with nbclient, in a temporary working folder, and check the outputs a reader relies on.
They are marked ``notebooks`` (CI: ``python -m pytest -q -m notebooks``): a few minutes on 2
cores, more on a machine whose stage-1 lung-mask cache is still empty.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COMMITTED = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
#: Per cell; a fresh machine computes every stage-1 lung mask in the diagnosis training cell once.
CELL_TIMEOUT_S = 900
#: What a notebook may import: the package, NumPy, matplotlib, IPython's display and the standard library glue.
ALLOWED_IMPORTS = {"covidcxr", "numpy", "matplotlib", "IPython", "os", "json", "time", "collections", "pathlib"}
NUMBER = r"(-?\d+(?:\.\d+)?|nan)"


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _cell(nb, tag: str):
    cells = [c for c in _code_cells(nb) if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one code cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _n_images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _floats(pattern: str, text: str) -> list[float]:
    return [float(m) for m in re.findall(pattern, text)]


# ---------------------------------------------------------------------------
# The committed files (default run)


def test_notebooks_are_committed():
    assert sorted(QUICK_CHECKS) == COMMITTED, (
        "every notebook needs an execution check below, and every check a notebook"
    )


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_notebook_has_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, (
        f"{name}: cells {dirty} hold outputs or execution counts; clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)"
    )
    params = [c for c in _code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "COVIDCXR_NOTEBOOK_QUICK" in params[0].source, (
        f"{name}: one cell tagged 'parameters' must read COVIDCXR_NOTEBOOK_QUICK"
    )


@pytest.mark.parametrize("name", COMMITTED)
def test_notebook_calls_only_the_public_api(name):
    """No model code in a notebook: no class or function definitions, no torch, no private names of the package."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                problems.append(f"cell {i}: defines {type(node).__name__} (put it in the package, with a test)")
            elif isinstance(node, ast.Import):
                problems += [
                    f"cell {i}: imports {a.name}" for a in node.names if a.name.split(".")[0] not in ALLOWED_IMPORTS
                ]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module.split(".")[0] not in ALLOWED_IMPORTS or any(
                    part.startswith("_") for part in module.split(".")
                ):
                    problems.append(f"cell {i}: imports from {module}")
                problems += [
                    f"cell {i}: imports private {module}.{a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert not problems, f"{name}:\n" + "\n".join(problems)


def _backend_after_package_plot(tmp_path: Path, env_backend: str | None, preset: str | None) -> str:
    script = "\n".join(
        [
            "import sys, matplotlib",
            *([f"matplotlib.use({preset!r})", "import matplotlib.pyplot"] if preset else []),
            "from covidcxr.plots import learning_curve",
            "learning_curve([{'epoch': 1, 'train_loss': 1.0, 'val_loss': 1.0, 'val_dice': 0.5}], sys.argv[1])",
            "print(matplotlib.get_backend().lower())",
        ]
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if env_backend:
        env["MPLBACKEND"] = env_backend
    png = tmp_path / "curve.png"
    out = subprocess.run(
        [sys.executable, "-c", script, str(png)], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert png.stat().st_size > 0
    return out.stdout.strip()


def test_package_plots_keep_the_session_backend(tmp_path):
    """A package figure must not switch Jupyter's inline backend to Agg: the notebooks' own figures would vanish."""
    assert _backend_after_package_plot(tmp_path, None, None) == "agg"  # headless by default
    assert _backend_after_package_plot(tmp_path, None, "svg") == "svg"  # pyplot already in use (a notebook)
    assert _backend_after_package_plot(tmp_path, "svg", None) == "svg"  # MPLBACKEND (what ipykernel sets)


# ---------------------------------------------------------------------------
# Quick-mode execution (marker ``notebooks``)


def _check_segmentation(nb, cwd: Path) -> None:
    assert _n_images(_cell(nb, "example")) == 1
    train = _stdout(_cell(nb, "train"))
    val = _floats(rf"best validation Dice {NUMBER}", train)
    assert len(val) == 1 and 0 < val[0] <= 1, train
    assert len(list(cwd.glob("runs/notebooks/01_segmentation-*/train/export/unet_mobilenetv2_lungs.json"))) == 1
    rows = re.findall(rf"(shipped|small) model, +(\S+): Dice {NUMBER}", _stdout(_cell(nb, "evaluate")))
    dices = {(model, source): float(d) for model, source, d in rows}
    assert {("shipped", "all_manual"), ("small", "all_manual")} <= set(dices), rows
    assert all(0 < d <= 1 for d in dices.values()), dices
    assert dices[("shipped", "all_manual")] > 0.85, "the shipped model scores Dice ~0.95 on the test split"
    assert _n_images(_cell(nb, "overlays")) == 1


def _check_diagnosis(nb, cwd: Path) -> None:
    counts = "".join(o["data"].get("text/markdown", "") for o in _cell(nb, "counts").outputs if "data" in o)
    assert "| covid-chestxray | COVID-19 |" in counts
    assert _n_images(_cell(nb, "views")) == 1
    train = _stdout(_cell(nb, "train"))
    assert re.search(rf"best validation macro AUROC {NUMBER} at epoch 1", train), train
    assert len(list(cwd.glob("runs/notebooks/02_diagnosis-*/train/export/mobilenet_v2_diagnosis.json"))) == 1
    pooled = _floats(rf"all sources: macro AUROC {NUMBER}", _stdout(_cell(nb, "evaluate")))
    # The CNN trained in quick mode (24 images, one epoch, 96 px) is evaluated: a number in range, not a good one.
    assert len(pooled) == 1 and 0 <= pooled[0] <= 1, pooled
    assert "shipped source-blind stage 2" in _stdout(_cell(nb, "evaluate"))
    assert _n_images(_cell(nb, "roc")) == 2  # ROC curves, confusion matrices
    audit = _floats(rf"COVID-19 AUROC {NUMBER}", _stdout(_cell(nb, "audit")))
    assert len(audit) == 3 and all(0 <= a <= 1 for a in audit), audit
    cam = _cell(nb, "gradcam")
    shares = re.findall(r"saliency inside the lungs (\d+|nan)%", _stdout(cam))  # nan: no lesion evidence on that X-ray
    assert shares and all(s == "nan" or 0 <= float(s) <= 100 for s in shares), _stdout(cam)
    assert _n_images(cam) == len(shares) >= 1  # one report per X-ray read


QUICK_CHECKS = {"01_segmentation.ipynb": _check_segmentation, "02_diagnosis.ipynb": _check_diagnosis}


@pytest.mark.notebooks
@pytest.mark.parametrize("name", sorted(QUICK_CHECKS))
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("COVIDCXR_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("COVIDCXR_DATA", str(data_root))
    # What Jupyter sets: with CI's MPLBACKEND=Agg the kernel would show no figure at all.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    t0 = time.perf_counter()
    # A failing cell raises CellExecutionError with its traceback.
    NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    print(f"{name}: {time.perf_counter() - t0:.0f} s in quick mode")
    code = _code_cells(nb)
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    QUICK_CHECKS[name](nb, tmp_path)
