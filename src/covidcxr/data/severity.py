"""Severity labels of covid-chestxray: expert scores, Brixia zones and radiologists' lesion masks.

Sources (all in ``covid-chestxray/annotations/``, upstream names):

- ``covid-severity-scores.csv``: geographic extent (0-8) and opacity (0-6), mean of three
  expert raters. Cohen J.P. et al., Predicting COVID-19 Pneumonia Severity on Chest X-ray
  with Deep Learning, Cureus 2020 (arXiv:2005.11856). CC BY-SA.
- ``brixia-scores.csv``: Brixia score, six zones A-F scored 0-3 (global 0-18) by a senior
  (``S-*``) and a junior (``J-*``) radiologist. Signoroni A. et al., BS-Net, Medical Image
  Analysis 2021 (BrixIA/Brixia-score-COVID-19). CC BY-NC-SA.
- ``generalblockchain.csv`` + ``generalblockchain/{ground-glass,consolidation}/``:
  radiologists' lesion masks (0/255); an absent file means none was marked on that image.
  GeneralBlockchain/covid-19-chest-xray-segmentations-dataset. CC BY 4.0.

Every sample keeps the image record's ``path, filename, dataset, patient_id, split``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from .paths import resolve_data_root
from .sources import ieee8023

log = logging.getLogger(__name__)

#: Brixia zones: right lung (image left) upper/middle/lower, then left lung.
ZONES = ("A", "B", "C", "D", "E", "F")
#: Lesion classes of the GeneralBlockchain masks, in model output order.
LESIONS = ("ground-glass", "consolidation")
#: Ranges of the scores: geographic extent 0-8, opacity 0-6, Brixia zone 0-3 (predictions are clipped to them).
RANGES = {"geographic_extent": (0.0, 8.0), "opacity": (0.0, 6.0), "zone": (0.0, 3.0)}


def _annotations(root: str | Path | None) -> Path:
    return resolve_data_root(root) / ieee8023.DATASET / "annotations"


def _join(rows: list[dict], records: list[dict], table: Path) -> list[dict]:
    by_name = {r["filename"]: r for r in records if r["dataset"] == ieee8023.DATASET}
    out, missing = [], 0
    for row in rows:
        rec = by_name.get(row["filename"])
        if rec is None:
            missing += 1
            continue
        out.append({**{k: rec[k] for k in ("path", "filename", "dataset", "patient_id", "split", "view")}, **row})
    if missing:
        log.info("%s: %d rows name images that are not present", table.name, missing)
    return out


def _read_table(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found; severity labels come from covid-chestxray/annotations (see README, 'Data')"
        )
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def expert_scores(records: list[dict], root: str | Path | None = None) -> list[dict]:
    """Images with Cohen et al.'s ``geographic_extent`` (0-8) and ``opacity`` (0-6) means."""
    table = _annotations(root) / "covid-severity-scores.csv"
    rows = [
        {
            "filename": r["filename"],
            "geographic_extent": float(r["geographic_mean"]),
            "opacity": float(r["opacity_mean"]),
        }
        for r in _read_table(table)
    ]
    return _join(rows, records, table)


def brixia_scores(records: list[dict], root: str | Path | None = None) -> list[dict]:
    """Images with Brixia zones: ``senior`` and ``junior`` (6,) int arrays in zone order A-F."""
    table = _annotations(root) / "brixia-scores.csv"
    rows = []
    for r in _read_table(table):
        senior = np.array([int(r[f"S-{z}"]) for z in ZONES])
        junior = np.array([int(r[f"J-{z}"]) for z in ZONES])
        if senior.sum() != int(r["S-Global"]) or junior.sum() != int(r["J-Global"]):
            raise ValueError(f"{table}: {r['filename']}: zone scores do not add up to the global score")
        rows.append({"filename": r["filename"], "senior": senior, "junior": junior})
    return _join(rows, records, table)


def lesion_samples(records: list[dict], root: str | Path | None = None) -> list[dict]:
    """Images the GeneralBlockchain radiologists annotated, with their lesion mask paths.

    Returns:
        samples with ``lesion_masks``: lesion class -> mask path, or None where that lesion
        was not marked (an empty mask).
    """
    base = _annotations(root)
    table = base / "generalblockchain.csv"
    marked: dict[str, dict[str, str]] = {}
    for r in _read_table(table):
        marked.setdefault(r["filename"], {})[r["structure"]] = str(base.parent / r["mask"])
    rows = [{"filename": f, "lesion_masks": {c: m.get(c) for c in LESIONS}} for f, m in sorted(marked.items())]
    return _join(rows, records, table)


def read_lesions(sample: dict, shape: tuple[int, int]) -> np.ndarray:
    """Lesion masks of a sample as bool (len(LESIONS), H, W); unmarked classes are empty."""
    out = np.zeros((len(LESIONS), *shape), bool)
    for k, c in enumerate(LESIONS):
        path = sample["lesion_masks"].get(c)
        if path is None:
            continue
        with Image.open(path) as im:
            m = np.asarray(im.convert("L")) > 127
        if m.shape != tuple(shape):
            raise ValueError(f"{path}: mask {m.shape} does not match image {tuple(shape)} of {sample['path']}")
        out[k] = m
    return out
