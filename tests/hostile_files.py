"""Hostile files for the tests of issue 29 and ``benchmarks/hostile_inputs.py``, built at any scale.

Nothing large is committed: each file is generated where it is needed, and a deflated bomb is
deflated as it is written, so it never exists inflated, not even in the memory of its builder.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

RAMP = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)


def dicom_header(rows: int = 64, cols: int = 64, syntax: str = DeflatedExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def deflated_dicom(path: Path, pixel_bytes: int, junk_bytes: int = 0, rows: int = 64, cols: int = 64) -> Path:
    """A deflated DICOM of a rows x cols 16-bit image whose pixel data (and a private element before it) are zeros.

    The data set is deflated as it is written, so a bomb that inflates to gigabytes never exists
    in memory here either.
    """
    ds = dicom_header(rows, cols)
    body = DicomFileLike(io.BytesIO())
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as raw:
        out = DicomFileLike(raw)
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta)
        raw.write(deflate.compress(body.parent.getvalue()))
        if junk_bytes:  # a private OB element before the pixel data: (0009,1001)
            raw.write(deflate.compress(struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"ACME"))
            raw.write(deflate.compress(struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, junk_bytes)))
            _zeros(raw, deflate, junk_bytes)
        raw.write(deflate.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)))
        _zeros(raw, deflate, pixel_bytes, pattern=RAMP.tobytes() if pixel_bytes == RAMP.nbytes else None)
        raw.write(deflate.flush())
    return path


def _zeros(raw, deflate, n: int, pattern: bytes | None = None) -> None:
    if pattern is not None:
        raw.write(deflate.compress(pattern))
        return
    block = bytes(2**20)
    for start in range(0, n, len(block)):
        raw.write(deflate.compress(block[: min(len(block), n - start)]))


def many_ifd_tiff(path: Path, n_ifds: int, side: int = 64) -> Path:
    """A TIFF of ``n_ifds`` pages, each a side x side 8-bit image sharing one strip of pixels."""
    strip = np.random.default_rng(0).integers(0, 256, side * side, dtype=np.uint8).tobytes()
    entries = 8
    ifd_size = 2 + 12 * entries + 4
    first = 8 + len(strip)
    with open(path, "wb") as fh:
        fh.write(b"II*\x00" + struct.pack("<I", first) + strip)
        for i in range(n_ifds):
            nxt = first + (i + 1) * ifd_size if i + 1 < n_ifds else 0
            tags = [
                (256, 3, 1, side),  # ImageWidth
                (257, 3, 1, side),  # ImageLength
                (258, 3, 1, 8),  # BitsPerSample
                (259, 3, 1, 1),  # Compression: none
                (262, 3, 1, 1),  # Photometric: black is zero
                (273, 4, 1, 8),  # StripOffsets
                (278, 3, 1, side),  # RowsPerStrip
                (279, 4, 1, len(strip)),  # StripByteCounts
            ]
            fh.write(struct.pack("<H", entries))
            for tag, kind, count, value in tags:
                fh.write(struct.pack("<HHII", tag, kind, count, value))
            fh.write(struct.pack("<I", nxt))
    return path
