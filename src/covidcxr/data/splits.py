"""Deterministic patient-level train/val/test splits.

A patient's split is decided by a hash of its identifier, so the rule is stable, needs no
random state and assigns a new image of a known patient to that patient's split. The
assignment of every image in the development data is written to a versioned file
(``splits/v1.csv``) that every command reads; images not in the file (a user's larger
copy of the upstream data) fall back to the same rule.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_VERSION = "v1"
SPLIT_FILE = Path(__file__).with_name("splits") / f"{SPLIT_VERSION}.csv"


def assign_split(patient_id: str, fractions: tuple[float, float, float] = FRACTIONS) -> str:
    """Split of a patient: sha256 of its id mapped to [0, 1) and cut at the fractions."""
    digest = hashlib.sha256(f"{SPLIT_VERSION}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def write_split_file(records: Iterable[dict], path: str | Path = SPLIT_FILE) -> Path:
    """Write ``dataset,filename,patient_id,split`` for every record, sorted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted({(r["dataset"], r["filename"], r["patient_id"]) for r in records})
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["dataset", "filename", "patient_id", "split"])
        for dataset, filename, patient in rows:
            writer.writerow([dataset, filename, patient, assign_split(patient)])
    _load_table.cache_clear()
    return path


@lru_cache(maxsize=2)
def _load_table(path: str) -> dict[tuple[str, str], str]:
    if not Path(path).is_file():
        return {}
    with open(path, newline="") as fh:
        return {(r["dataset"], r["filename"]): r["split"] for r in csv.DictReader(fh)}


def split_of(record: dict, path: str | Path = SPLIT_FILE) -> str:
    """The record's split: from the split file, else from :func:`assign_split`."""
    table = _load_table(str(path))
    return table.get((record["dataset"], record["filename"])) or assign_split(record["patient_id"])
