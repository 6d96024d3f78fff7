"""Stage-1 lung masks of many images, computed once and kept on disk for stage 2.

Masks are PNGs (0/255, each image's own pixel size) under
``<cache>/<first 12 hex of the lung weights' sha256>/<dataset>/<filename>.png``, so masks of
another lung model are never reused. The cache folder is ``$COVIDCXR_CACHE/lungs`` or
``~/.cache/covidcxr/lungs``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..batch import read_batches
from ..io import mask_png

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("COVIDCXR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "covidcxr") / "lungs"


def mask_path(record: dict, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Where the lung mask of ``record`` made by the weights ``sha256`` is kept."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / sha256[:12] / record["dataset"] / f"{record['filename']}.png"


def cached_lung_masks(
    records: list[dict], segmenter, cache_dir: str | Path | None = None, batch_size: int = 8, progress: bool = True
) -> dict[str, Path]:
    """Lung-mask PNG of every record, segmenting only those not cached yet.

    Args:
        records: dataset records (``path``, ``dataset``, ``filename``).
        segmenter: a :class:`covidcxr.infer.LungSegmenter`.

    Returns:
        record path -> mask PNG path; unreadable images are left out (logged).
    """
    out: dict[str, Path] = {}
    todo: list[tuple[dict, Path]] = []
    for rec in records:
        p = mask_path(rec, segmenter.spec.sha256, cache_dir)
        if p.is_file():
            out[rec["path"]] = p
        else:
            todo.append((rec, p))
    batches = read_batches([Path(rec["path"]) for rec, _ in todo], batch_size)
    for batch in tqdm(
        batches, total=-(-len(todo) // batch_size), desc="lung masks", disable=not progress or not todo, unit="batch"
    ):
        for err in (e for _, im, e in batch if im is None):
            log.warning("skipping %s", err)
        good = [(i, im) for i, im, _ in batch if im is not None]
        for (i, _), mask in zip(good, segmenter.segment([im for _, im in good])):
            rec, p = todo[i]
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp.png")
            mask_png(mask, tmp)
            os.replace(tmp, p)  # a killed run never leaves a half-written mask behind
            out[rec["path"]] = p
    return out


def load_cached_mask(path: str | Path) -> np.ndarray:
    """A cached mask as a boolean array."""
    with Image.open(path) as im:
        return np.asarray(im) > 127
