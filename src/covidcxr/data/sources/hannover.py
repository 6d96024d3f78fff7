"""Hannover Medical School COVID-19 radiographs: hospital films, many portable AP from intensive care.

Source: Winther et al. COVID-19 Image Repository (ml-workgroup/covid-19-image-repository),
Hannover Medical School, doi:10.6084/m9.figshare.12275009. Licence CC BY 3.0.
Every image is COVID-19 positive (no negatives in this source).

Layout: ``labels.csv`` (filename, finding, patient_id, view, modality, sex, admission_offset,
source, ieee8023_patientid, duplicate_of) and ``images/``. ieee8023 took some Hannover images
in; a patient who also has images there (``ieee8023_patientid``) is that ieee8023 patient, so
both folders put the patient in one split.
"""

from __future__ import annotations

from pathlib import Path

from ..tables import label_rows
from .ieee8023 import DATASET as IEEE8023

DATASET = "hannover"


def _patient_id(row: dict) -> str:
    if row.get("ieee8023_patientid", "").strip():
        return f"{IEEE8023}:{row['ieee8023_patientid'].strip()}"
    return f"{DATASET}:{row['patient_id']}"


def load_records(root: str | Path) -> list[dict]:
    """Records with keys ``path, filename, dataset, patient_id, finding, view, modality, masks``."""
    root = Path(root)
    return [
        {
            "path": str(root / "images" / row["filename"]),
            "filename": row["filename"],
            "dataset": DATASET,
            "patient_id": _patient_id(row),
            "finding": row["finding"],
            "view": row.get("view", "") or "",
            # CR and DX are both projection radiography.
            "modality": "X-ray" if row.get("modality", "") in ("CR", "DX", "X-ray") else row.get("modality", ""),
            "masks": {},
        }
        for row in label_rows(root, DATASET)
    ]
