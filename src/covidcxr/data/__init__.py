"""Dataset readers (one module per source), mask reading and patient-level splits.

Every reader returns records: dicts with ``path, filename, dataset, patient_id, finding,
view, modality, masks``; :func:`load_records` adds ``split``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .paths import resolve_data_root
from .sources import hannover, ieee8023, kermany, nih, radiography
from .splits import split_of

log = logging.getLogger(__name__)

READERS = {
    ieee8023.DATASET: ieee8023.load_records,
    nih.DATASET: nih.load_records,
    kermany.DATASET: kermany.load_records,
    hannover.DATASET: hannover.load_records,
    nih.DATASET14: nih.load_records_14,
    radiography.DATASET: radiography.load_records,
}


def load_records(root: str | Path | None = None, datasets: tuple[str, ...] | None = None) -> list[dict]:
    """Records of every dataset found under the data root, each with its ``split``.

    Args:
        root: data root (see :func:`resolve_data_root`); ``None`` for the default.
        datasets: restrict to these dataset folder names; a missing folder is skipped
            unless named here explicitly.
    """
    base = resolve_data_root(root)
    out: list[dict] = []
    for name, reader in READERS.items():
        if datasets is not None and name not in datasets:
            continue
        folder = base / name
        if not folder.is_dir():
            if datasets is not None:
                raise FileNotFoundError(f"{folder}: dataset folder not found")
            log.info("skipping %s: not found under %s", name, base)
            continue
        out.extend(reader(folder))
    for rec in out:
        rec["split"] = split_of(rec)
    return out


__all__ = ["load_records", "resolve_data_root", "READERS"]
