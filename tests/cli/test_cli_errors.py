"""``covidcxr`` errors: a user's mistake is one sentence and exit 2; a bug shows its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidcxr.cli import UserError, main
from covidcxr.io import ImageReadError

SRC = Path(__file__).resolve().parents[2] / "src"


def _cli(*args: str, inject: str = "") -> subprocess.CompletedProcess:
    """``covidcxr ARGS`` in a child process, after ``inject`` (Python) ran; its stderr is what a user sees."""
    code = f"import sys\n{inject}\nfrom covidcxr.cli import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def _raiser(err: BaseException):
    def command(args):
        raise err

    return command


def test_a_user_error_is_one_line_without_traceback(tmp_path, capsys):
    assert main(["predict", "--out", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["error: need --batch-size >= 1 and --workers >= 0, got 0 and 0"]


@pytest.mark.parametrize(
    "error",
    [
        UserError("--out x: pass a folder"),
        ImageReadError("scan.png", "not an image; pass a PNG, JPEG or DICOM file"),
        ValueError("unknown config key 'x'"),
        FileNotFoundError("weights.json: not found"),
        FileExistsError("runs/x exists; pass --resume"),
        RuntimeError("the onnxruntime backend needs the infer extra: pip install 'covidcxr[infer]'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_user_errors_and_missing_extras_are_one_sentence(monkeypatch, capsys, error):
    monkeypatch.setattr("covidcxr.cli.parser.cmd_splits", _raiser(error))
    assert main(["splits"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {error}"] and "Traceback" not in err


@pytest.mark.parametrize(
    "error", [KeyError("state_dict"), RuntimeError("shapes do not match")], ids=["KeyError", "RuntimeError"]
)
def test_a_bug_propagates(monkeypatch, error):
    monkeypatch.setattr("covidcxr.cli.parser.cmd_splits", _raiser(error))
    with pytest.raises(type(error)):
        main(["splits"])


def test_an_injected_bug_shows_its_traceback():
    inject = (
        "import covidcxr.cli.parser as parser\n"
        "def cmd_splits(args):\n"
        "    raise KeyError('injected bug')\n"
        "parser.cmd_splits = cmd_splits"
    )
    run = _cli("splits", inject=inject)
    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr and "KeyError: 'injected bug'" in run.stderr
    assert "error: " not in run.stderr


def test_verbose_adds_the_traceback_of_a_user_error(tmp_path):
    quiet = _cli("predict", "--out", str(tmp_path / "o"), "--batch-size", "0")
    assert quiet.returncode == 2 and quiet.stderr.strip().splitlines() == [
        "error: need --batch-size >= 1 and --workers >= 0, got 0 and 0"
    ]
    loud = _cli("-v", "predict", "--out", str(tmp_path / "o"), "--batch-size", "0")
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "UserError" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == "error: need --batch-size >= 1 and --workers >= 0, got 0 and 0"
