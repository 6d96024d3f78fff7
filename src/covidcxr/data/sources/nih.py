"""NIH ChestX-ray8 / ChestX-ray14 frontal images (adults): two folders of one archive.

Source: Wang et al. ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
Weakly-Supervised Classification and Localization of Common Thorax Diseases. CVPR 2017.
Licence: NIH Clinical Center, no restrictions on use.

Labels were text-mined from the radiology reports (NLP, not read from the images): the
authors report about 90% precision for the mined labels, and later re-reading of samples
found "Pneumonia" and "Consolidation" among the least reliable. Treat them as noisy.

- ``nih-chestxray8/``: No Finding / Pneumonia (``labels.csv``: filename, finding, patient_id, source).
- ``nih-chestxray14/``: No Finding / Pneumonia / Consolidation at 240 px (``labels.csv``:
  filename, finding, labels, patient_id, source).

A patient is one patient across both folders: patient ids are ``nih:<8 digits>``.
"""

from __future__ import annotations

from pathlib import Path

from ..tables import label_rows

DATASET = "nih-chestxray8"
DATASET14 = "nih-chestxray14"
PATIENT_PREFIX = "nih"


def patient_of_filename(filename: str) -> str:
    """Patient id of an NIH file name (``00001568_004.png`` -> ``nih:00001568``)."""
    return f"{PATIENT_PREFIX}:{Path(filename).name[:8]}"


def _read(root: str | Path, dataset: str) -> list[dict]:
    root = Path(root)
    return [
        {
            "path": str(root / "images" / row["filename"]),
            "filename": row["filename"],
            "dataset": dataset,
            "patient_id": f"{PATIENT_PREFIX}:{row['patient_id']}",
            "finding": row["finding"],
            "view": "PA",
            "modality": "X-ray",
            "masks": {},
        }
        for row in label_rows(root, dataset)
    ]


def load_records(root: str | Path) -> list[dict]:
    """ChestX-ray8 records with keys ``path, filename, dataset, patient_id, finding, view, modality, masks``."""
    return _read(root, DATASET)


def load_records_14(root: str | Path) -> list[dict]:
    """ChestX-ray14 records, same keys; patients shared with :func:`load_records`."""
    return _read(root, DATASET14)
