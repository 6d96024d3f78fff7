"""NIH ChestX-ray8 frontal images (adults), No Finding / Pneumonia.

Source: Wang et al. ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks.
CVPR 2017. Licence: NIH Clinical Center, no restrictions on use. Labels were text-mined
from reports and carry some noise.

Layout: ``labels.csv`` (filename, finding, patient_id, source) and ``images/``.
"""

from __future__ import annotations

import csv
from pathlib import Path

DATASET = "nih-chestxray8"


def load_records(root: str | Path) -> list[dict]:
    """Records with keys ``path, filename, dataset, patient_id, finding, view, modality, masks``."""
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; expected nih-chestxray8/labels.csv")
    with open(table, newline="") as fh:
        return [
            {
                "path": str(root / "images" / row["filename"]),
                "filename": row["filename"],
                "dataset": DATASET,
                "patient_id": f"{DATASET}:{row['patient_id']}",
                "finding": row["finding"],
                "view": "PA",
                "modality": "X-ray",
                "masks": {},
            }
            for row in csv.DictReader(fh)
        ]
