"""Many files in, one output set per file out: input discovery, unique output names, batching."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .io import ImageReadError, is_supported_file, read_image

log = logging.getLogger(__name__)


def collect_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Expand folders (recursively, supported extensions only) and keep files as given.

    Returns:
        (files in a stable order, one error message per input that does not exist).
    """
    files: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_supported_file(f))
            if not found:
                errors.append(f"{p}: folder holds no PNG, JPEG, TIFF, BMP or DICOM (.dcm) files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append(f"{p}: file not found")
    return files, errors


def unique_stems(files: list[Path]) -> list[str]:
    """Output stems, one per file: the file stem, suffixed ``-2``, ``-3``… where stems repeat."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        out.append(f.stem if n == 1 else f"{f.stem}-{n}")
    return out


def read_batches(files: list[Path], batch_size: int) -> Iterator[list[tuple[int, np.ndarray | None, str | None]]]:
    """Yield batches of ``(index, image or None, error or None)``; bad files become errors, not exceptions."""
    batch = []
    for i, f in enumerate(files):
        try:
            batch.append((i, read_image(f), None))
        except ImageReadError as err:
            batch.append((i, None, str(err)))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def save_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """A boolean mask as an 8-bit PNG with values 0 and 255, at the mask's own size."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path, compress_level=1)


def save_rgb_png(rgb: np.ndarray, path: str | Path, max_side: int = 1024) -> None:
    """An RGB preview, shrunk so its longer side is at most ``max_side``."""
    img = Image.fromarray(rgb)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img.save(path, compress_level=1)
