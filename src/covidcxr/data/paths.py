"""Where the data lives: one rule used by every command."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "COVIDCXR_DATA"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Find the folder that holds ``covid-chestxray/``, ``nih-chestxray8/``, ``kermany-pediatric/``.

    Order: the ``root`` argument, the ``COVIDCXR_DATA`` environment variable, then
    ``../shared/data`` relative to the working directory and to this checkout.

    Raises:
        FileNotFoundError: with a message saying how to point the tool at the data.
    """
    candidates: list[Path] = []
    if root is not None:
        candidates.append(Path(root))
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    else:
        candidates.append(Path.cwd() / ".." / "shared" / "data")
        candidates.append(Path(__file__).resolve().parents[3] / ".." / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"data folder not found (tried {tried}); pass --data-root DIR or set {ENV_VAR}=DIR "
        "to a folder holding covid-chestxray/ (upstream ieee8023 layout), nih-chestxray8/, kermany-pediatric/"
    )
