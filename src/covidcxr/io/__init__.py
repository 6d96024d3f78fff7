"""Read chest X-ray files into float32 arrays, and the one normalization.

This is the first step of the pipeline: bytes on disk -> image. Every image
that reaches a model goes through :func:`read_image` (PNG, JPEG, TIFF, BMP or
DICOM -> float32 ``(H, W)`` in ``[0, 1]``, bright = dense bone) and then
:func:`normalize` (``per_image_zscore``). Anything that cannot be turned into
such an image raises :class:`ImageReadError` with a one-line message that
names the file and says what to do about it.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .bounded import (
    MAX_PIXELS,
    MIN_SIDE,
    check_file_size,
    check_single_frame,
    check_size,
    dicom_dataset,
    head,
    open_source,
)
from .errors import ImageReadError, ImageTooLargeError
from .pixels import image_from, luminance, minmax, pil_pixels
from .writers import heatmap_png, mask_png, png_bytes, rgb_png

__all__ = [
    "MAX_PIXELS", "NORMALIZATION", "SERVE_MAX_PIXELS", "SUPPORTED_EXTENSIONS", "ImageReadError",
    "ImageTooLargeError", "heatmap_png", "image_from", "is_supported_file", "mask_png", "normalize",
    "png_bytes", "read_image", "rgb_png",
]  # fmt: skip

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
_ArrayT = TypeVar("_ArrayT", np.ndarray, "torch.Tensor")

__all__ = [
    "MAX_PIXELS",
    "MIN_SIDE",
    "NORMALIZATION",
    "SERVE_MAX_PIXELS",
    "SUPPORTED_EXTENSIONS",
    "ImageReadError",
    "ImageTooLargeError",
    "is_supported_file",
    "normalize",
    "read_image",
]

SERVE_MAX_PIXELS: int = 36_000_000
"""The server's limit (``covidcxr serve --max-pixels``): 6000x6000, above any chest X-ray
detector yet well below :data:`MAX_PIXELS`. Reading an image through the whole pipeline holds
about 25 bytes per pixel, so a 9999x9999 upload of 100 kB would cost some 2.5 GB; such an
image is refused from its header, before any pixel is decoded."""

NORMALIZATION = "per_image_zscore"
"""Name of the normalization done by :func:`normalize`; weights specs record it."""

SUPPORTED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"})

_EPS = 1e-6
_DICOM_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"
_FIX_EXPORT = "re-export or re-download the file"
# 16-bit single-channel modes that Pillow gives for 16-bit PNG and TIFF.


def is_supported_file(path: str | os.PathLike[str]) -> bool:
    """Return whether a file name has an image extension this module reads.

    Used when walking folders. Only the extension is looked at (case-insensitive):
    .png .jpg .jpeg .dcm .dicom .tif .tiff .bmp. Files without an extension are
    not included, even though some DICOM files have none.

    Args:
        path: A file path or name.

    Returns:
        True if the extension is one of the supported ones.
    """
    return Path(path).suffix.lower() in SUPPORTED_EXTENSIONS


def read_image(
    source: str | os.PathLike[str] | bytes,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/BMP or DICOM chest X-ray as a radiologist would view it.

    The format is detected from the content (DICOM: ``'DICM'`` at offset 128, or
    a bare DICOM data set when Pillow cannot identify the file), never from the
    extension. PIL images have their EXIF orientation applied; colour is
    converted to luminance; transparent pixels are composited over black.
    DICOM goes through the Modality LUT (rescale slope/intercept), then the VOI
    LUT or window centre/width (min-max when neither is present), and
    MONOCHROME1 is inverted so that bone is bright.

    Args:
        source: A file path, or the raw bytes of a file.
        name: Name used in error messages; defaults to the path, or
            ``'<bytes>'`` for raw bytes.
        max_pixels: Images with more pixels are refused from their header,
            before any pixel data is decoded. Pillow keeps its own limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) on top of this one.

    Returns:
        float32 array with the displayed image's pixel size, values in [0, 1].

    Shape:
        Output: ``(H, W)``.

    Raises:
        ImageReadError: The file is missing, empty, not an image, truncated,
            too small or too large (also a file far larger than the image its
            header declares), multi-frame, CMYK, blank, a DICOM whose pixel data
            length disagrees with its header or that inflates past its header's
            promise, or its pixel data cannot be decoded. No other exception
            escapes for bad content. The checks are those of
            :mod:`covidcxr.io.bounded`, made before the file's bulk is read.
        TypeError: ``source`` is neither a path nor bytes.
    """
    with open_source(source, name) as (fh, size, label):
        if not size:
            raise ImageReadError(label, f"file is empty (0 bytes); {_FIX_EXPORT}")
        try:
            if head(fh, 132)[128:132] == b"DICM":
                image = _read_dicom(fh, size, label, max_pixels)
            else:
                image = _read_pil_or_bare_dicom(fh, size, label, max_pixels)
        except ImageReadError:
            raise
        except Exception as err:  # a decoder failed in a way we did not foresee
            raise ImageReadError(label, f"could not read the image ({type(err).__name__}: {err})") from err
    if not np.isfinite(image).all():
        raise ImageReadError(label, "image contains NaN or infinite values; re-export it")
    if image.min() == image.max():
        raise ImageReadError(label, "image is blank (every pixel has the same value); it holds no X-ray")
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def normalize(image: _ArrayT) -> _ArrayT:
    """Normalize images with ``per_image_zscore``: zero mean, unit std per image.

    This is THE normalization contract shared by training and inference:
    ``(x - mean) / max(std, 1e-6)`` with mean and (population) std computed
    over the last two axes. A constant image becomes all zeros, not NaN.

    Args:
        image: float array in [0, 1] as returned by :func:`read_image`, or a
            batch of them. A ``torch.Tensor`` is accepted too and a tensor is
            returned.

    Returns:
        float32 array (or tensor) of the same shape.

    Shape:
        Input: ``(..., H, W)``. Output: same as input.
    """
    if hasattr(image, "detach"):  # torch.Tensor, without importing torch here
        x = image.float()
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, correction=0).clamp_min(_EPS)
        return (x - mean) / std
    x = np.asarray(image, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"normalize expects an array of shape (..., H, W); got shape {x.shape}")
    mean = x.mean(axis=(-2, -1), dtype=np.float64, keepdims=True)
    std = x.std(axis=(-2, -1), dtype=np.float64, keepdims=True)
    return ((x - mean) / np.maximum(std, _EPS)).astype(np.float32)


# ---------------------------------------------------------------------------
# Source, sniffing and checks shared by both readers


def _describe_non_image(data: bytes) -> str:
    """Say what a file Pillow and pydicom could not identify seems to be."""
    head = data[:1024].lstrip().lower()
    signatures = {b"\x89png\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"gif8": "GIF", b"ii*\x00": "TIFF"}
    for magic, fmt in signatures.items():
        if data[: len(magic)].lower() == magic:
            return f"starts like a {fmt} file but its header is truncated or corrupt; {_FIX_EXPORT}"
    if head.startswith(b"%pdf"):
        return "not an image but a PDF document; export the radiograph as PNG or DICOM"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "not an image but an HTML page (a failed download or login page?); download the file again"
    if head.startswith((b"pk\x03\x04", b"\x1f\x8b")):
        return "not an image but a compressed archive (zip/gzip); extract it first"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in data[:1024]):
        return "not an image but a text file"
    return "not an image: content is not a recognised PNG, JPEG, TIFF, BMP or DICOM file"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set without the 128-byte preamble starts with group 0002 or 0008."""
    return len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00")


@functools.lru_cache(maxsize=1)
def _warn_truncated_allowed() -> None:
    logger.warning(
        "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some other code): truncated "
        "PNG/JPEG files will load with missing rows instead of being refused"
    )


# ---------------------------------------------------------------------------
# PNG / JPEG / TIFF / BMP via Pillow


def _read_pil_or_bare_dicom(fh: BinaryIO, size: int, label: str, max_pixels: int) -> np.ndarray:
    try:
        img = Image.open(fh)  # lazy: reads the header only
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(label, f"image is too large (possible decompression bomb): {err}") from err
    except UnidentifiedImageError:
        start = head(fh)
        if _looks_like_bare_dicom(start):
            return _read_dicom(fh, size, label, max_pixels)
        raise ImageReadError(label, _describe_non_image(start)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(label, f"image header is truncated or corrupt ({err}); {_FIX_EXPORT}") from err
    with img:
        return _pil_to_array(img, size, label, max_pixels)


def _pil_to_array(img: Image.Image, size: int, label: str, max_pixels: int) -> np.ndarray:
    fmt = img.format or "image"
    check_single_frame(img, label)
    if img.mode == "CMYK":
        raise ImageReadError(
            label, f"CMYK {fmt} is a print-colour image, not a radiograph export; save it as grayscale PNG"
        )
    check_size(*img.size, label, max_pixels)
    check_file_size(size, *img.size, label)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        _warn_truncated_allowed()
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(label, f"image is too large (possible decompression bomb): {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(label, f"image data is truncated or corrupt ({err}); {_FIX_EXPORT}") from err
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as err:  # a broken EXIF block should not cost a readable image
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", label, err)
    return pil_pixels(img, label)


# ---------------------------------------------------------------------------
# DICOM via pydicom


def _read_dicom(fh: BinaryIO, size: int, label: str, max_pixels: int) -> np.ndarray:
    ds = dicom_dataset(fh, size, label, max_pixels)  # header, frames, size and pixel length checked first
    arr = _decode_dicom(ds, label)
    return _dicom_display(arr, ds, label)


def _decode_dicom(ds: Dataset, label: str) -> np.ndarray:
    meta = ds.get("file_meta") or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        # Bare data set without file meta: pydicom detected the encoding while reading.
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        ds.file_meta = meta
    tsyntax = meta.TransferSyntaxUID
    syntax = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(label, f"DICOM transfer syntax {syntax} is not supported") from None
    if not decoder.is_available:
        raise ImageReadError(
            label, f"DICOM pixel data is compressed as {syntax} and no installed decoder handles it; {_DICOM_HINT}"
        )
    try:
        return ds.pixel_array
    except Exception as err:
        raise ImageReadError(
            label, f"DICOM pixel data ({syntax}) is truncated or corrupt and could not be decoded: {err}"
        ) from err


def _dicom_display(arr: np.ndarray, ds: Dataset, label: str) -> np.ndarray:
    """Stored DICOM pixel values -> displayed gray levels in [0, 1]."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3:  # colour; pydicom has already converted YBR to RGB
        bits = int(ds.get("BitsStored") or 8)
        return np.clip(luminance(arr) / (2**bits - 1), 0.0, 1.0)
    if arr.ndim != 2:
        raise ImageReadError(label, f"DICOM pixel data has unexpected shape {arr.shape}")
    if not photometric.startswith("MONOCHROME"):
        logger.warning("%s: PhotometricInterpretation %s treated as MONOCHROME2", label, photometric)
    arr = apply_modality_lut(arr, ds)
    image = _apply_voi_scaled(arr, ds, label)
    if image is None:  # no usable VOI LUT or window: show the full range
        image = minmax(arr.astype(np.float64), label)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _apply_voi_scaled(arr: np.ndarray, ds: Dataset, label: str) -> np.ndarray | None:
    """Apply the VOI LUT or window and scale its output range to [0, 1].

    Returns None when the data set has no VOI LUT or window, or when it is
    unusable (then a warning is logged and the caller shows the full range).
    """
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    try:
        if has_lut:  # pydicom prefers the LUT over the window too
            descriptor = lut[0].LUTDescriptor
            entries = np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 2**16))
            out_range = apply_voi(entries, ds)
            stored = np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr
            out = apply_voi(stored, ds)
        else:
            # Windowing clips to an output range that depends on BitsStored and
            # rescale; the infinite probes land exactly on its ends.
            out_range = apply_windowing(np.array([-np.inf, np.inf]), ds)
            out = apply_windowing(arr, ds)
    except Exception as err:
        logger.warning("%s: ignoring unusable DICOM VOI LUT/window (%s); using min-max", label, err)
        return None
    lo, hi = float(np.min(out_range)), float(np.max(out_range))
    if hi <= lo:
        logger.warning("%s: DICOM VOI LUT has a flat output range; using min-max", label)
        return None
    return ((out.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
