"""Paediatric chest X-rays of Kermany et al. (Guangzhou Women and Children's Medical Center).

Source: Kermany, Zhang, Goldbaum. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray
Images for Classification. Mendeley Data v2, doi:10.17632/rscbjbr9sj.2. Licence CC BY 4.0.
Lung masks: V7 Labs (CC BY 4.0), values 0/127/255 as v7labs' ieee8023 masks.

Layout: ``labels.csv`` (filename, finding, patient_id, split), ``images/``,
``lungs-v7labs.csv`` + ``lungs-v7labs/``. Normal images carry no patient identifier in the
table; their file names (``IM-0115-0001.jpeg``, ``NORMAL2-IM-1427-0001.jpeg``) do: the part
before the last ``-NNNN`` groups one patient's images.
"""

from __future__ import annotations

import csv
from pathlib import Path

DATASET = "kermany-pediatric"


def _patient_id(filename: str, patient_id: str) -> str:
    if patient_id:
        return f"{DATASET}:{patient_id}"
    stem = Path(filename).stem
    return f"{DATASET}:{stem.rsplit('-', 1)[0]}"


def load_records(root: str | Path) -> list[dict]:
    """Records with keys ``path, filename, dataset, patient_id, finding, view, modality, masks``."""
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; expected kermany-pediatric/labels.csv")
    masks: dict[str, str] = {}
    mask_table = root / "lungs-v7labs.csv"
    if mask_table.is_file():
        with open(mask_table, newline="") as fh:
            masks = {r["filename"]: str(root / r["mask"]) for r in csv.DictReader(fh)}
    out = []
    with open(table, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["filename"]
            out.append(
                {
                    "path": str(root / "images" / name),
                    "filename": name,
                    "dataset": DATASET,
                    "patient_id": _patient_id(name, row.get("patient_id", "")),
                    "finding": row["finding"],
                    "view": "AP",
                    "modality": "X-ray",
                    "masks": {"kermany-v7labs": masks[name]} if name in masks else {},
                }
            )
    return out
