"""Hostile files meet the header checks of covidcxr.io.bounded before their bulk is read.

Each hostile file is generated here at a small scale (megabytes, not the gigabytes of the real
attacks; ``benchmarks/hostile_inputs.py`` builds those) and the test shows the guard works: the
file is refused with a sentence, and the memory or the frames walked stay far below what the
file would cost without the guard.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, TiffImagePlugin

import covidcxr.io.bounded as bounded
from covidcxr.io import ImageReadError, read_image
from hostile_files import RAMP, deflated_dicom, dicom_header, many_ifd_tiff


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
    ds = dicom_header()
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


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")
def test_surplus_pixel_data_is_not_read_as_more_frames(tmp_path: Path) -> None:
    ds = dicom_header(syntax=pydicom.uid.ExplicitVRLittleEndian)
    ds.PixelData = np.concatenate([RAMP] * 16).tobytes()  # 16 frames' worth, no NumberOfFrames
    ds.save_as(tmp_path / "surplus.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"131,072 bytes where .*64 x 64 x 1 x 1 x 16.* needs 8,192"):
        read_image(tmp_path / "surplus.dcm")
    ds.PixelData = RAMP.tobytes() + bytes(128)  # padding some writers add: read as before
    ds.save_as(tmp_path / "padded.dcm", enforce_file_format=True)
    np.testing.assert_allclose(read_image(tmp_path / "padded.dcm"), RAMP / 4095, atol=1e-6)


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
