"""The PNGs of a reading, written to a file or into memory (the web page's answers)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image


def mask_png(mask: np.ndarray, path: str | Path | BinaryIO) -> None:
    """A boolean mask as an 8-bit PNG with values 0 and 255, at the mask's own size."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path, format="PNG", compress_level=1)


def heatmap_png(heat: np.ndarray, path: str | Path | BinaryIO) -> None:
    """A heat map in [0, 1] as an 8-bit grey PNG, at its own size."""
    Image.fromarray((np.clip(heat, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path, format="PNG", compress_level=1)


def rgb_png(rgb: np.ndarray, path: str | Path | BinaryIO, max_side: int = 1024) -> None:
    """An RGB preview, shrunk so its longer side is at most ``max_side``."""
    img = Image.fromarray(rgb)
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img.save(path, format="PNG", compress_level=1)


def png_bytes(write, *args, **kwargs) -> bytes:
    """What a writer (``mask_png``, ``heatmap_png``, ``rgb_png``, a report) would write, as bytes."""
    buf = BytesIO()
    write(*args, buf, **kwargs)
    return buf.getvalue()
