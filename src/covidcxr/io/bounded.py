"""Bounded decoding: what a file's header says is checked before its bulk is read.

Every reader of images (``covidcxr predict``, the Python API, the server) goes through
:func:`covidcxr.io.read_image`, and :func:`read_image` through the checks here, so the limits
are the same everywhere:

- **File size.** A file is opened, not read: its format is sniffed from the first bytes, its
  pixel size from its header, and a file larger than an image of that size can need
  (:data:`MAX_BYTES_PER_PIXEL` a pixel plus :data:`FILE_SLACK_BYTES`) is refused before its
  bulk is read. A 3 GB file of something else costs its first kilobyte.
- **Frames.** Multi-frame files are refused from their first frame's header: Pillow's
  ``is_animated`` looks for a second frame only, where ``n_frames`` walks all of them (a TIFF
  with 200,000 IFDs took minutes).
- **DICOM.** The header is read before the pixel data, and the declared length of native
  (uncompressed) pixel data must match Rows x Columns x frames x samples x bits (at least that,
  and less than a frame more: padding passes, surplus frames do not) before a byte of it is read.
  A deflated data set is inflated incrementally: at most :data:`DICOM_HEADER_MAX_BYTES`
  for the header and then exactly the pixel data it declares, so a small file that inflates to
  gigabytes costs no more than the image it claims to hold.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from .errors import ImageReadError, ImageTooLargeError

MAX_PIXELS: int = 100_000_000
"""Images with more pixels are refused before decoding (decompression bombs)."""

MIN_SIDE: int = 32
"""Images with a side shorter than this are refused."""

MAX_BYTES_PER_PIXEL: int = 16
"""Most bytes a pixel can take in any file this reader takes (RGBA at 16 bits is 8, float DICOM 4 a sample)."""

FILE_SLACK_BYTES: int = 64 * 2**20
"""Room for everything in a file besides its pixels (metadata, thumbnails, ICC profiles, private DICOM tags)."""

DICOM_HEADER_MAX_BYTES: int = 16 * 2**20
"""Most bytes a deflated DICOM data set may inflate to before its pixel data begins."""

HEAD_BYTES = 1024
"""Bytes sniffed at the start of a file to tell what it is."""

_FIX_EXPORT = "re-export or re-download the file"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # PixelData, DoubleFloat-, FloatPixelData
# Explicit VRs whose length field has 4 bytes (after 2 reserved ones); the others have 2.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_UNDEFINED = 0xFFFFFFFF


@contextmanager
def open_source(source: str | os.PathLike[str] | bytes, name: str | None) -> Iterator[tuple[BinaryIO, int, str]]:
    """Open a path or raw bytes for reading, without reading them: ``(file object, size in bytes, label)``.

    Raises:
        ImageReadError: the path does not exist, is a folder or cannot be opened.
        TypeError: ``source`` is neither a path nor bytes.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        yield io.BytesIO(data), len(data), name or "<bytes>"
        return
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"read_image expects a path or bytes, got {type(source).__name__}")
    path = Path(source)
    label = name or str(source)
    if not path.exists():
        raise ImageReadError(label, "file not found; check the path")
    if path.is_dir():
        raise ImageReadError(label, "is a directory, not an image file; pass one file or walk the folder")
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the caller is done with it
        size = os.fstat(fh.fileno()).st_size
    except OSError as err:
        raise ImageReadError(label, f"could not read the file ({err.strerror or err})") from err
    with fh:
        yield fh, size, label


def head(fh: BinaryIO, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of ``fh``; the file is left at its start."""
    fh.seek(0)
    data = fh.read(n)
    fh.seek(0)
    return data


def check_size(width: int, height: int, label: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, or a side under :data:`MIN_SIDE`."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label,
            f"image is too large: {width}x{height} px = {width * height:,} pixels exceeds "
            f"max_pixels={max_pixels:,} (possible decompression bomb); raise max_pixels only "
            "for files you trust",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageReadError(
            label, f"image is too small to be a chest X-ray: {width}x{height} px (minimum {MIN_SIDE} px a side)"
        )


def check_file_size(size: int, width: int, height: int, label: str) -> None:
    """Refuse a file far larger than the ``width`` x ``height`` image its header declares, before reading it.

    Args:
        size: the file's size in bytes.
        width, height: the image size its header declares.
        label: the file's name for the message.
    """
    most = width * height * MAX_BYTES_PER_PIXEL + FILE_SLACK_BYTES
    if size > most:
        raise ImageTooLargeError(
            label,
            f"file is {_mb(size)} but its header describes a {width}x{height} px image, which needs at most "
            f"{_mb(most)}; it holds something else besides the image (a broken or hostile file); {_FIX_EXPORT}",
        )


def check_single_frame(img: Image.Image, label: str) -> None:
    """Refuse an animated or multi-page image, looking for a second frame only (``n_frames`` would walk them all)."""
    fmt = img.format or "image"
    if fmt == "MPO" or not getattr(img, "is_animated", False):  # MPO: a camera JPEG whose first frame is the picture
        return
    kind = {"GIF": "animated GIF", "TIFF": "multi-page TIFF"}.get(fmt, f"multi-frame {fmt}")
    raise ImageReadError(label, f"{kind} with 2 or more frames is not supported; export the one frame you want as PNG")


# ---------------------------------------------------------------------------
# DICOM


def dicom_dataset(fh: BinaryIO, size: int, label: str, max_pixels: int) -> Dataset:
    """A DICOM data set whose header was checked before its pixel data was read.

    Checks, in order: the header parses; it has pixel data; one frame; Rows and Columns within
    ``max_pixels`` (:func:`check_size`); the file is not far larger than such an image
    (:func:`check_file_size`); the declared pixel data length matches the header and the file
    holds all of it. A deflated data set is inflated only as far as its header and the pixel
    data it declares (see :class:`_Inflated`).

    Args:
        fh: the file, seekable.
        size: its size in bytes.
        label: its name for messages.
        max_pixels: the largest image accepted.

    Returns:
        The data set with its pixel data; a deflated one comes back re-labelled as
        Explicit VR Little Endian, the encoding of its inflated bytes.

    Raises:
        ImageReadError: any check failed; the message says which.
    """
    if _is_deflated(fh):
        return _deflated_dataset(fh, size, label, max_pixels)
    fh.seek(0)
    try:  # large elements before the pixels are skipped, not read, until the checks pass
        header = pydicom.dcmread(fh, force=True, stop_before_pixels=True, defer_size=2**20)
    except Exception as err:
        raise ImageReadError(label, f"DICOM header is truncated or corrupt ({err}); {_FIX_EXPORT}") from err
    implicit, little = header.original_encoding
    at = fh.tell()
    element = _pixel_element(fh.read(12), implicit, little)
    _check_dicom_header(header, element, label, max_pixels)
    rows, cols = int(header.Rows), int(header.Columns)
    check_file_size(size, cols, rows, label)
    _, vr, length, offset = element  # type: ignore[misc]
    if length != _UNDEFINED and _native(header) and at + offset + length > size:
        raise ImageReadError(
            label,
            f"DICOM pixel data is truncated: the header declares {length:,} bytes, the file holds "
            f"{max(size - at - offset, 0):,}; {_FIX_EXPORT}",
        )
    fh.seek(0)
    try:
        return pydicom.dcmread(fh, force=True)
    except Exception as err:
        raise ImageReadError(label, f"DICOM file is truncated or corrupt ({err}); {_FIX_EXPORT}") from err


def _is_deflated(fh: BinaryIO) -> bool:
    """Whether the file meta names the deflated transfer syntax; only a file with a preamble has file meta to say so."""
    if head(fh, 132)[128:132] != b"DICM":
        return False
    try:
        read_preamble(fh, True)
        meta = read_dataset(fh, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
        return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    except Exception:  # a broken meta group: the ordinary reader says what is wrong
        return False


def _deflated_dataset(fh: BinaryIO, size: int, label: str, max_pixels: int) -> Dataset:
    fh.seek(0)
    read_preamble(fh, True)
    meta = FileMetaDataset(read_dataset(fh, False, True, stop_when=lambda tag, vr, length: tag.group != 2))
    body = _Inflated(fh, label)
    try:
        header = read_dataset(body, False, True, stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(label, f"deflated DICOM data set is truncated or corrupt ({err}); {_FIX_EXPORT}") from err
    at = body.tell()
    element = _pixel_element(body.read(12), False, True)
    _check_dicom_header(header, element, label, max_pixels)
    tag, vr, length, offset = element  # type: ignore[misc]
    if length == _UNDEFINED:
        raise ImageReadError(label, "deflated DICOM holds encapsulated pixel data, which the standard does not allow")
    rows, cols = int(header.Rows), int(header.Columns)
    check_file_size(size, cols, rows, label)
    body.limit = at + offset + length  # exactly the pixels the header declares; nothing after them is inflated
    body.seek(at + offset)
    pixels = body.read(length)
    if len(pixels) < length:
        raise ImageReadError(
            label,
            f"deflated DICOM pixel data is truncated: the header declares {length:,} bytes, the data set holds "
            f"{len(pixels):,}; {_FIX_EXPORT}",
        )
    header.add_new(tag, vr, pixels)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
    header.file_meta = meta
    return header


def _pixel_element(raw: bytes, implicit: bool, little: bool) -> tuple[int, str, int, int] | None:
    """``(tag, VR, declared length, offset of the value)`` of the element header in ``raw``; None if not pixel data."""
    if len(raw) < 8:
        return None
    end = "<" if little else ">"
    group, elem = struct.unpack(f"{end}HH", raw[:4])
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        return None
    if implicit:
        return (
            tag,
            "OW" if tag == 0x7FE00010 else "OF" if tag == 0x7FE00008 else "OD",
            struct.unpack(f"{end}I", raw[4:8])[0],
            8,
        )
    vr = raw[4:6].decode("latin-1")
    if vr in _LONG_VRS:
        if len(raw) < 12:
            return None
        return tag, vr, struct.unpack(f"{end}I", raw[8:12])[0], 12
    return tag, vr, struct.unpack(f"{end}H", raw[6:8])[0], 8


def _check_dicom_header(header: Dataset, element: tuple | None, label: str, max_pixels: int) -> None:
    """Pixel data present, one frame, a size within limits and a declared length that matches the header."""
    if element is None:
        raise ImageReadError(label, "DICOM file has no pixel data (is it a structured report or presentation state?)")
    try:
        n_frames = int(header.get("NumberOfFrames") or 1)
        rows, cols = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
        samples = int(header.get("SamplesPerPixel") or 1)
        bits = int(header.get("BitsAllocated") or 0)
    except (TypeError, ValueError) as err:
        raise ImageReadError(
            label, f"DICOM header has invalid NumberOfFrames/Rows/Columns/SamplesPerPixel/BitsAllocated ({err})"
        ) from err
    if n_frames > 1:
        raise ImageReadError(label, f"multi-frame DICOM is not supported ({n_frames} frames); export a single frame")
    if rows <= 0 or cols <= 0:
        raise ImageReadError(label, "DICOM header lacks Rows/Columns, so the pixel data cannot be laid out")
    check_size(cols, rows, label, max_pixels)
    length = element[2]
    if length == _UNDEFINED or not _native(header):
        return  # encapsulated: the decoder checks each frame against the header
    if samples not in (1, 3, 4) or bits not in (1, 8, 16, 32, 64):
        raise ImageReadError(
            label,
            f"DICOM header has SamplesPerPixel={samples}, BitsAllocated={bits}; expected 1 or 3 samples of 8-64 bits",
        )
    expected = get_expected_length(header, unit="bytes")  # YBR_FULL_422 and 1-bit data taken into account
    # Padding to even length, and a little more (some writers pad further), is let through; a
    # frame's worth too many would be read as another frame (a 64x64 image as 16x64), too few is a cut file.
    if not expected <= length < 2 * expected:
        raise ImageReadError(
            label,
            f"DICOM pixel data length disagrees with its header: {length:,} bytes where Rows x Columns x frames x "
            f"samples x bits ({rows} x {cols} x {n_frames} x {samples} x {bits}) needs {expected:,} (a broken or "
            f"hostile file); {_FIX_EXPORT}",
        )


def _native(header: Dataset) -> bool:
    """Whether the pixel data is stored uncompressed (a bare data set without file meta is)."""
    syntax = (header.get("file_meta") or {}).get("TransferSyntaxUID")
    return syntax is None or not syntax.is_compressed


class _Inflated(io.RawIOBase):
    """The inflated bytes of a deflated DICOM data set, inflated as far as they are read, never past ``limit``.

    pydicom would ``zlib.decompress`` the whole data set first: 0.5 MB of zeros deflated
    inflate to gigabytes. Here ``zlib.decompressobj`` with ``max_length`` inflates no further
    than the reader asks, and asking past ``limit`` refuses the file.

    Args:
        raw: the file, positioned at the deflated data set.
        label: the file's name for messages.
        limit: most bytes inflated (default :data:`DICOM_HEADER_MAX_BYTES`; set to the end of the
            pixel data once its length is known).
    """

    def __init__(self, raw: BinaryIO, label: str, limit: int | None = None) -> None:
        self.raw, self.label = raw, label
        self.limit = DICOM_HEADER_MAX_BYTES if limit is None else limit
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = bytearray()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            offset += self.pos if whence == io.SEEK_CUR else self._fill(self.limit + 1)
        self.pos = max(0, offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.limit + 1 if n is None or n < 0 else self.pos + n
        self._fill(end)
        out = bytes(self.buffer[self.pos : end])
        self.pos += len(out)
        return out

    def _fill(self, end: int) -> int:
        """Inflate until ``end`` bytes are there or the stream ends; refuse the file past the limit."""
        if end > self.limit and len(self.buffer) < end:
            end = self.limit + 1  # one byte past the limit tells a stream that goes on from one that ends there
        while len(self.buffer) < end and not self.inflater.eof:
            want = end - len(self.buffer)
            chunk = self.inflater.unconsumed_tail or self.raw.read(2**16)
            if not chunk:
                break
            self.buffer += self.inflater.decompress(chunk, want)
        if len(self.buffer) > self.limit:
            raise ImageReadError(
                self.label,
                f"deflated DICOM data set inflates to more than {_mb(self.limit)} before its pixel data begins "
                "(a decompression bomb?); it was not inflated further",
            )
        return len(self.buffer)


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
