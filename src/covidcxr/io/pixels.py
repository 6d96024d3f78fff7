"""Pixel values of decoded images as float32 in [0, 1]: PIL images, NumPy arrays (the Python API's inputs)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from .errors import ImageReadError

_MODES_16BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def minmax(arr: np.ndarray, label: str) -> np.ndarray:
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo == hi:
        raise ImageReadError(label, "image is blank (every pixel has the same value); it holds no X-ray")
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, the weights Pillow uses for RGB -> L."""
    rgb = rgb.astype(np.float32, copy=False)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def pil_pixels(img: Image.Image, label: str) -> np.ndarray:
    """Pixels of a loaded PIL image as float32 in [0, 1]."""
    mode = img.mode
    if mode in _MODES_16BIT:
        return np.asarray(img).astype(np.float32) / 65535.0
    if mode == "I":
        arr = np.asarray(img)
        if arr.min() >= 0 and arr.max() <= 65535:  # 16-bit data held in 32-bit ints
            return arr.astype(np.float32) / 65535.0
        return minmax(arr.astype(np.float64), label)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageReadError(label, "floating-point image contains NaN or infinite values")
        return minmax(arr, label)
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        # Composite over black: fully opaque pixels are unchanged.
        return luminance(rgba[..., :3] * rgba[..., 3:])
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageReadError(label, f"unsupported pixel mode {mode!r}; save the image as grayscale PNG") from err
    return luminance(np.asarray(rgb)) / 255.0


def image_from(x: Any, name: str = "array") -> np.ndarray:
    """An X-ray given in Python as the (H, W) float32 image in [0, 1] the models read.

    Accepts a file path (``str`` or ``Path``, read by :func:`read_image`), raw file bytes, a PIL
    image, or a NumPy array: 2-D, or (H, W, 1|3|4) with RGB converted to luminance and RGBA
    composited over black; uint8 is divided by 255, uint16 (and other integers within 0-65535)
    by 65535, as for 16-bit PNGs; floats within [0, 1] are kept, other floats and integers
    min-max scaled; bool is 0 or 1.

    Raises:
        ImageReadError: the input is not an image of a kind above, or it is blank; the message
            says what was given and what is expected.
    """
    if isinstance(x, str | os.PathLike | bytes):
        from . import read_image  # the file reader; it imports this module

        return read_image(x, name=None if not isinstance(x, bytes) else name)
    if isinstance(x, Image.Image):
        return _checked(pil_pixels(x, name), name)
    if not isinstance(x, np.ndarray):
        raise ImageReadError(
            name, f"got a {type(x).__name__}; give a file path, a PIL image or a NumPy array (H, W) or (H, W, 3)"
        )
    arr = x[..., 0] if x.ndim == 3 and x.shape[-1] == 1 else x
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return _checked(_pixels(arr[..., :3], name, alpha=arr[..., 3] if arr.shape[-1] == 4 else None), name)
    if arr.ndim != 2:
        raise ImageReadError(
            name, f"array of shape {x.shape}: expected one image, (H, W) grey or (H, W, 3|4) RGB(A), channels last"
        )
    return _checked(_pixels(arr, name), name)


def _pixels(arr: np.ndarray, name: str, alpha: np.ndarray | None = None) -> np.ndarray:
    """Pixel values in [0, 1] by the array's dtype; luminance for (H, W, 3)."""
    if arr.dtype == bool:
        out = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
        out = arr.astype(np.float32) / 65535.0
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageReadError(name, "array contains NaN or infinite values")
        inside = np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1
        out = arr.astype(np.float32) if inside else minmax(arr.astype(np.float64), name)
    else:
        raise ImageReadError(name, f"array of dtype {arr.dtype}: expected integers, floats or bool")
    if out.ndim == 3:
        if alpha is not None:
            out = out * _pixels(alpha, name)[..., None]  # composited over black
        out = luminance(out)
    return out


def _checked(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim != 2 or min(image.shape) < 2:
        raise ImageReadError(name, f"image of shape {image.shape} is too small to be an X-ray")
    if image.min() == image.max():
        raise ImageReadError(name, "image is blank (every pixel has the same value); it holds no X-ray")
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)
