"""Lung-mask files of every source, read into one label convention.

Every mask comes back as ``uint8`` (H, W) with 0 = background, 1 = lung, 2 = ignore
(v7labs paints pacemakers, markup and instruments over the lung 127: such pixels are
left out of losses and metrics).
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND, LUNG, IGNORE = 0, 1, 2

#: Mask sources, and whether a human drew them. Model-generated masks are never ground truth.
MASK_SOURCES = {
    "v7labs": "manual",  # ieee8023 images, v7labs/covid-19-xray-dataset (0/127/255)
    "generalblockchain": "manual",  # ieee8023 images, radiologists (0/255)
    "kermany-v7labs": "manual",  # Kermany paediatric images, V7 (0/127/255)
    "lungvae": "generated",  # lungVAE (Selvan et al. 2020): agreement only
}

ZIP_PREFIX = "zip://"


def _open_bytes(ref: str) -> bytes:
    if ref.startswith(ZIP_PREFIX):
        archive, member = ref[len(ZIP_PREFIX) :].split("!", 1)
        with _zip(archive).open(member) as fh:
            return fh.read()
    return Path(ref).read_bytes()


@lru_cache(maxsize=4)
def _zip(archive: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(archive)


def read_mask(ref: str, source: str) -> np.ndarray:
    """Read a mask file (or ``zip://archive!member``) of ``source`` into 0/1/2 labels.

    Args:
        ref: path of a PNG mask, or ``zip://<archive>!<member>``.
        source: one of :data:`MASK_SOURCES`.

    Returns:
        ``uint8`` array (H, W): 0 background, 1 lung, 2 ignore.
    """
    if source not in MASK_SOURCES:
        raise ValueError(f"unknown mask source {source!r}; known: {', '.join(MASK_SOURCES)}")
    with Image.open(io.BytesIO(_open_bytes(ref))) as img:
        arr = np.asarray(img.convert("L"))
    out = np.zeros(arr.shape, np.uint8)
    if source in ("v7labs", "kermany-v7labs"):
        out[arr >= 192] = LUNG
        out[(arr >= 64) & (arr < 192)] = IGNORE
    else:
        out[arr > 127] = LUNG
    return out
