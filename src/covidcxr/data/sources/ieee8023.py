"""COVID-19 image data collection (ieee8023/covid-chestxray-dataset), upstream layout.

Source: Joseph Paul Cohen, Paul Morrison, Lan Dao. COVID-19 image data collection.
arXiv:2003.11597, 2020. https://github.com/ieee8023/covid-chestxray-dataset
Licence: per image (``license`` column of metadata.csv); metadata CC BY-NC-SA 4.0.

Layout read (the upstream repository's, plus lung-mask annotations):

    covid-chestxray/
      metadata.csv                  one row per image (upstream; a file can appear twice)
      images/<filename>
      annotations/lungs-v7labs.csv  filename,mask,...   v7labs manual lung masks (0/127/255)
      annotations/generalblockchain.csv  filename,structure,mask   radiologists' masks
      annotations/lungVAE-masks/<stem>_mask.png   model-generated (upstream ships these)

For a user's own full-resolution upstream clone without ``annotations/lungs-v7labs.csv``,
the v7labs lung masks bundled in the ``torchxrayvision`` package
(``semantic_masks_v7labs_lungs.zip``, named by image filename) are used when it is installed.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..masks import ZIP_PREFIX

log = logging.getLogger(__name__)

DATASET = "covid-chestxray"


def _torchxrayvision_v7labs_zip() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "semantic_masks_v7labs_lungs.zip"
    return path if path.is_file() else None


def _v7labs_masks(root: Path) -> dict[str, str]:
    table = root / "annotations" / "lungs-v7labs.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            return {r["filename"]: str(root / r["mask"]) for r in csv.DictReader(fh)}
    archive = _torchxrayvision_v7labs_zip()
    if archive is None:
        log.info("no v7labs lung masks found for %s", root)
        return {}
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.namelist() if not m.endswith("/")]
    return {Path(m).name: f"{ZIP_PREFIX}{archive}!{m}" for m in members}


def _generalblockchain_masks(root: Path, structure: str = "lungs") -> dict[str, str]:
    table = root / "annotations" / "generalblockchain.csv"
    if not table.is_file():
        return {}
    with open(table, newline="") as fh:
        return {r["filename"]: str(root / r["mask"]) for r in csv.DictReader(fh) if r["structure"] == structure}


def _lungvae_masks(root: Path) -> dict[str, str]:
    folder = root / "annotations" / "lungVAE-masks"
    if not folder.is_dir():
        return {}
    return {p.name[: -len("_mask.png")]: str(p) for p in folder.glob("*_mask.png")}


def load_records(root: str | Path) -> list[dict]:
    """One record per image file present under ``root/images`` (first metadata row wins).

    Returns:
        dicts with keys ``path, filename, dataset, patient_id, finding, view, modality, masks``;
        ``masks`` maps a mask source (see :mod:`covidcxr.data.masks`) to a mask reference.
    """
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; expected the ieee8023 upstream layout (metadata.csv + images/)")
    v7 = _v7labs_masks(root)
    gb = _generalblockchain_masks(root)
    vae = _lungvae_masks(root)
    records: dict[str, dict] = {}
    with open(meta, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = row["filename"]
            path = root / row.get("folder", "images") / name
            if name in records or not path.is_file():
                continue
            masks = {}
            if name in v7:
                masks["v7labs"] = v7[name]
            if name in gb:
                masks["generalblockchain"] = gb[name]
            if Path(name).stem in vae:
                masks["lungvae"] = vae[Path(name).stem]
            records[name] = {
                "path": str(path),
                "filename": name,
                "dataset": DATASET,
                "patient_id": f"{DATASET}:{row['patientid']}",
                "finding": row["finding"],
                "view": row["view"].strip(),
                "modality": row["modality"],
                "masks": masks,
            }
    return list(records.values())
