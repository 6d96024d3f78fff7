"""Deterministic patient-level train/val/test splits, versioned in files.

A new patient's split is decided by a hash of its identifier, so the rule is stable and needs
no random state. The assignment of every image in the development data is written to a
versioned file that every command reads (``splits/v2.csv``; ``v1.csv`` is kept for the
weights trained on it). A later version never moves an image: every image of the previous
file keeps its split, and a new image of a patient already in the file goes where that
patient is (also when the patient's id changed form, as NIH's did in v2). Images not in the
file (a user's larger copy of the upstream data) follow their patient's split in the file,
else the hash rule.

v2 added hannover/, nih-chestxray14/ and covid19-radiography/ (whose ``group_id`` stands in
for a patient id) and names NIH patients ``nih:<id>`` across both NIH folders.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

SPLITS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_VERSION = "v2"
SPLIT_DIR = Path(__file__).with_name("splits")
SPLIT_FILE = SPLIT_DIR / f"{SPLIT_VERSION}.csv"
#: The hash rule's salt stays that of v1, so the rule gives every version the same answer.
_SALT = "v1"


def assign_split(patient_id: str, fractions: tuple[float, float, float] = FRACTIONS) -> str:
    """Split of a patient: sha256 of its id mapped to [0, 1) and cut at the fractions."""
    digest = hashlib.sha256(f"{_SALT}:{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def write_split_file(
    records: Iterable[dict], path: str | Path = SPLIT_FILE, previous: str | Path | None = None
) -> Path:
    """Write ``dataset,filename,patient_id,split`` for every record, sorted.

    Args:
        records: every image, with ``dataset, filename, patient_id``.
        path: the file to write.
        previous: an earlier split file: its images keep their split, and their patients'
            new images (by the records' current patient ids) go with them.

    Raises:
        ValueError: the previous file puts one patient's images in two splits under the
            records' patient ids (the new ids would merge patients the old file kept apart).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted({(r["dataset"], r["filename"], r["patient_id"]) for r in records})
    kept = _load_table(str(previous))[0] if previous is not None else {}
    by_patient: dict[str, str] = {}
    for dataset, filename, patient in rows:
        old = kept.get((dataset, filename))
        if old is None:
            continue
        if by_patient.setdefault(patient, old) != old:
            raise ValueError(f"{previous}: patient {patient} has images in {by_patient[patient]} and {old}")
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["dataset", "filename", "patient_id", "split"])
        for dataset, filename, patient in rows:
            split = kept.get((dataset, filename)) or by_patient.get(patient) or assign_split(patient)
            writer.writerow([dataset, filename, patient, split])
    _load_table.cache_clear()
    return path


@lru_cache(maxsize=4)
def _load_table(path: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """(dataset, filename) -> split and patient_id -> split of a split file (empty if absent)."""
    if not Path(path).is_file():
        return {}, {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {(r["dataset"], r["filename"]): r["split"] for r in rows}, {r["patient_id"]: r["split"] for r in rows}


def split_of(record: dict, path: str | Path = SPLIT_FILE) -> str:
    """The record's split: from the split file, else its patient's split there, else :func:`assign_split`."""
    images, patients = _load_table(str(path))
    return (
        images.get((record["dataset"], record["filename"]))
        or patients.get(record["patient_id"])
        or assign_split(record["patient_id"])
    )


def fold_of(patient_key: str, folds: int) -> int:
    """Fold of a patient: sha256 of ``dataset:patient_id`` mod ``folds`` (stable, stateless)."""
    return int.from_bytes(hashlib.sha256(patient_key.encode()).digest()[:8], "big") % folds
