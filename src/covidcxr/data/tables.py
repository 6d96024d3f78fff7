"""The ``labels.csv`` every hospital-archive folder carries: one reader of its rows."""

from __future__ import annotations

import csv
from pathlib import Path


def label_rows(root: str | Path, dataset: str) -> list[dict]:
    """Rows of ``root/labels.csv`` as dicts.

    Raises:
        FileNotFoundError: naming the file the folder should hold.
    """
    table = Path(root) / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; expected {dataset}/labels.csv")
    with open(table, newline="") as fh:
        return list(csv.DictReader(fh))
