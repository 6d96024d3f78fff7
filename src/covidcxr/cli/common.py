"""What the command modules share: the bundled sample, ``--out`` checks and the user-error type."""

from __future__ import annotations

import tempfile
from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "samples" / "sample_cxr.jpg"


class UserError(ValueError):
    """A mistake in how a command was called; its message is one sentence that says how to fix it.

    :func:`covidcxr.cli.main` prints it as ``error: <sentence>`` and exits 2, without a traceback
    (with ``-v`` the traceback is logged too). A ``ValueError``, so callers that catch those still do.
    """


def writable_out(out: str | Path) -> Path:
    """``--out`` as a folder this process can write to, created if missing: checked before any model loads.

    Args:
        out: the folder, as typed.

    Returns:
        The folder.

    Raises:
        UserError: ``out`` is empty, is a file, lies under a file, or cannot be created or written
            to (read-only, another user's, a system folder such as /sys); one sentence.
    """
    fix = "pass a folder you can write to as --out (it is created if missing)"
    if not str(out).strip():
        raise UserError(f"--out is empty; {fix}, e.g. --out results/ (--out . for the current folder)")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # what counts is whether a file can be made there
            pass
        jsonl = path / "predictions.jsonl"
        if jsonl.exists():
            with open(jsonl, "ab"):
                pass
    except OSError as err:
        why = (
            "a part of the path is a file, not a folder"
            if isinstance(err, NotADirectoryError)
            else (err.strerror or str(err)).lower()
        )
        raise UserError(f"--out {out}: cannot write there ({why}); {fix}") from None
    return path
