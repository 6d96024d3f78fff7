"""``covidcxr --help`` and ``--version`` answer at once: they import neither model backend (nor NumPy's heavy friends)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
HEAVY = ("torch", "onnxruntime", "torchvision", "scipy", "matplotlib", "cv2")

_CODE = """
import contextlib, io, sys
from covidcxr.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main({argv!r})
print(",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["predict", "--help"], ["serve", "--help"]])
def test_help_and_version_import_no_backend(argv):
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = _CODE.format(argv=argv, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"covidcxr {' '.join(argv)} imported {proc.stdout.strip()}"
