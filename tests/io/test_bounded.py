"""Hostile files meet the header checks of covidcxr.io.bounded before their bulk is read.

Each hostile file is generated here at a small scale (megabytes, not the gigabytes of the real
attacks; ``benchmarks/hostile_inputs.py`` builds those) and the test shows the guard works: the
file is refused with a sentence, and the memory or the frames walked stay far below what the
file would cost without the guard.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, TiffImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import covidcxr.io.bounded as bounded
from covidcxr.io import ImageReadError, read_image

RAMP = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)


def _header(rows: int = 64, cols: int = 64, syntax: str = DeflatedExplicitVRLittleEndian) -> Dataset:
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
    ds = _header(rows, cols)
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


def _refused(source: Path | bytes) -> tuple[str, int]:
    """The refusal of ``read_image(source)`` and the most memory Python held meanwhile, in bytes."""
    tracemalloc.start()
    try:
        read_image(source, name=None if isinstance(source, Path) else "upload")
    except ImageReadError as err:
        return str(err), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    raise AssertionError(f"{source} was read")


# ---------------------------------------------------------------------------
# DICOM


def test_good_deflated_dicom_reads_like_the_plain_one(tmp_path: Path) -> None:
    ds = _header()
    ds.PixelData = RAMP.tobytes()
    ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
    deflated = deflated_dicom(tmp_path / "deflated.dcm", RAMP.nbytes)
    np.testing.assert_array_equal(read_image(deflated), read_image(tmp_path / "plain.dcm"))
    assert read_image(deflated.read_bytes()).shape == (64, 64)


def test_deflated_bomb_is_refused_before_its_pixels_inflate(tmp_path: Path) -> None:
    inflated = 64 * 2**20  # the bomb inflates to 512 MB; the guard is the same at 64
    bomb = deflated_dicom(tmp_path / "bomb.dcm", inflated)
    assert bomb.stat().st_size < inflated / 500
    message, peak = _refused(bomb)
    assert "bomb.dcm" in message and "pixel data length disagrees with its header" in message, message
    assert "needs 8,192" in message
    assert peak < 2 * 2**20, peak  # pydicom alone would hold the 64 MB
    message, peak = _refused(bomb.read_bytes())  # the server's way in
    assert message.startswith("upload: ") and peak < 2 * 2**20, (message, peak)


def test_deflated_header_bomb_stops_at_the_header_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bounded, "DICOM_HEADER_MAX_BYTES", 2**20)
    bomb = deflated_dicom(tmp_path / "junk.dcm", RAMP.nbytes, junk_bytes=32 * 2**20)
    message, peak = _refused(bomb)
    assert "inflates to more than 1.0 MB before its pixel data" in message, message
    assert peak < 8 * 2**20, peak


def test_surplus_pixel_data_is_not_read_as_more_frames(tmp_path: Path) -> None:
    ds = _header(syntax=pydicom.uid.ExplicitVRLittleEndian)
    ds.PixelData = np.concatenate([RAMP] * 16).tobytes()  # 16 frames' worth, no NumberOfFrames
    ds.save_as(tmp_path / "surplus.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"131,072 bytes where .*64 x 64 x 1 x 1 x 16.* needs 8,192"):
        read_image(tmp_path / "surplus.dcm")


# ---------------------------------------------------------------------------
# TIFF and the file size


def test_many_ifd_tiff_is_refused_without_walking_its_pages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def walked(self):  # noqa: ANN001, ANN202
        raise AssertionError("n_frames walks every IFD")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(walked))
    seeks: list[int] = []
    original = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_seek", lambda self, f: seeks.append(f) or original(self, f))
    path = many_ifd_tiff(tmp_path / "pages.tif", 4000)
    with Image.open(path) as img:  # the file is what it claims: 4000 readable pages
        assert img.size == (64, 64)
    with pytest.raises(ImageReadError, match="multi-page TIFF with 2 or more frames"):
        read_image(path)
    assert max(seeks) <= 1
    assert read_image(many_ifd_tiff(tmp_path / "one.tif", 1)).shape == (64, 64)


def test_large_file_costs_its_header_only(tmp_path: Path) -> None:
    junk = tmp_path / "backup.png"
    with open(junk, "wb") as fh:  # 3 GB, sparse: no disk space used
        fh.write(b"\x00\x01not an image")
        fh.truncate(3 * 2**30)
    message, peak = _refused(junk)
    assert "not an image" in message and peak < 16 * 2**20, (message, peak)

    png = tmp_path / "padded.png"
    Image.fromarray(RAMP.astype(np.uint8)).save(png)
    with open(png, "r+b") as fh:
        fh.truncate(3 * 2**30)
    message, peak = _refused(png)
    assert "file is 3.0 GB but its header describes a 64x64 px image" in message and peak < 16 * 2**20, (message, peak)


def test_file_size_limit_scales_with_the_declared_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = tmp_path / "g.png"
    Image.fromarray(RAMP.astype(np.uint8)).save(png)
    assert read_image(png).shape == (64, 64)
    monkeypatch.setattr(bounded, "FILE_SLACK_BYTES", 0)
    with open(png, "ab") as fh:
        fh.write(b"\x00" * (64 * 64 * bounded.MAX_BYTES_PER_PIXEL))
    with pytest.raises(ImageReadError, match="holds something else besides the image"):
        read_image(png)
