"""COVID-19 Radiography Database subset: hospital COVID-19 radiographs and adult RSNA normals, 224 px.

Source: Chowdhury et al. Can AI help in screening viral and COVID-19 pneumonia? IEEE Access
2020; Rahman et al. Exploring the effect of image enhancement techniques on COVID-19
detection using chest X-ray images. Comput Biol Med 2021 (Qatar University, University of
Dhaka). Licence: **research use**; the COVID-19 images are mostly BIMCV-COVID19+ (Valencia),
under the BIMCV research use agreement. Weights trained on this folder are for research use only.

The copy holds no patient ids: ``group_id`` joins near-identical images and stands in for a
patient (a weaker guard). Its normals come from the RSNA challenge, which drew them from the
NIH archive; an image that duplicates an NIH ChestX-ray8 image (``duplicate_of``) is put with
that NIH patient. No view is recorded; every image is a frontal radiograph.

Layout: ``labels.csv`` (filename, finding, group_id, upstream, source, duplicate_of), ``images/``.
"""

from __future__ import annotations

from pathlib import Path

from ..tables import label_rows
from .nih import patient_of_filename

DATASET = "covid19-radiography"


def _patient_id(row: dict) -> str:
    dup = row.get("duplicate_of", "").strip()
    if dup.startswith("nih-chestxray8/"):
        return patient_of_filename(Path(dup).name)
    return f"{DATASET}:{row['group_id']}"


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
            "view": "Frontal",
            "modality": "X-ray",
            "masks": {},
        }
        for row in label_rows(root, DATASET)
    ]
