"""Tests for covidcxr.io: reading PNG/JPEG/TIFF/DICOM files and normalize().

Every test file is built in tmp_path from numpy, Pillow and pydicom, except
one real radiograph from the shared data folder.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import covidcxr.io as cio
from covidcxr.io import (
    MAX_PIXELS,
    MIN_SIDE,
    NORMALIZATION,
    ImageReadError,
    is_supported_file,
    normalize,
    read_image,
)

RAMP12 = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # holds 0 and 4095


# ---------------------------------------------------------------------------
# Builders


def _save(img: Image.Image, path: Path, **kwargs: Any) -> Path:
    img.save(path, **kwargs)
    return path


def _noise(h: int = 128, w: int = 128, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height but carries almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    idat = zlib.compress(b"\x00" * 64)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _dataset(arr: np.ndarray | None = None, bits_stored: int = 12, **attrs: Any) -> Dataset:
    """A single-frame DX data set holding `arr` as unsigned 16-bit pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "anon"
    if arr is not None:
        ds.Rows, ds.Columns = arr.shape[:2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = arr.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _dicom(path: Path, arr: np.ndarray | None = None, bits_stored: int = 12, **attrs: Any) -> Path:
    ds = _dataset(arr, bits_stored, **attrs)
    pydicom.dataset.validate_file_meta(ds.file_meta)
    ds.save_as(path, enforce_file_format=True)
    return path


def _encapsulated_dicom(path: Path, syntax: str, payload: bytes) -> Path:
    ds = _dataset(RAMP12)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([payload])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------
# Good files


def test_png_8bit_gray(tmp_path: Path) -> None:
    arr = _noise(40, 50)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g.png"))
    assert out.dtype == np.float32 and out.shape == (40, 50)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)


def test_png_16bit_keeps_full_range_and_precision(tmp_path: Path) -> None:
    arr = np.full((40, 40), 1000, dtype=np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2], arr[0, 3] = 65535, 0, 32767, 32768
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g16.png"))
    assert out[0, 0] == 1.0 and out[0, 1] == 0.0
    assert out[0, 2] != out[0, 3]
    assert out[0, 3] - out[0, 2] == pytest.approx(1 / 65535, rel=1e-3)
    assert out[1, 1] == pytest.approx(1000 / 65535)


def test_tiff_16bit_and_bmp(tmp_path: Path) -> None:
    arr = (np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g16.tif"))
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-6)
    gray = _noise(48, 64)
    np.testing.assert_allclose(read_image(_save(Image.fromarray(gray), tmp_path / "g.bmp")), gray / 255.0, atol=1e-6)


def test_rgb_rgba_palette_png(tmp_path: Path) -> None:
    gray = _noise(48, 48)
    expected = gray / 255.0
    rgb = Image.fromarray(np.stack([gray] * 3, axis=-1))
    np.testing.assert_allclose(read_image(_save(rgb, tmp_path / "rgb.png")), expected, atol=1e-5)
    opaque = rgb.copy()
    opaque.putalpha(255)
    np.testing.assert_allclose(read_image(_save(opaque, tmp_path / "rgba.png")), expected, atol=1e-5)
    half = rgb.copy()
    alpha = np.full((48, 48), 255, dtype=np.uint8)
    alpha[:, :24] = 0
    half.putalpha(Image.fromarray(alpha))
    out = read_image(_save(half, tmp_path / "rgba_half.png"))
    assert np.all(out[:, :24] == 0.0)  # transparent -> composited over black
    np.testing.assert_allclose(out[:, 24:], expected[:, 24:], atol=1e-5)
    palette = Image.fromarray(gray).convert("P")
    pal_expected = np.asarray(palette.convert("L")) / 255.0
    np.testing.assert_allclose(read_image(_save(palette, tmp_path / "p.png")), pal_expected, atol=1e-5)
    colour = np.zeros((48, 48, 3), dtype=np.uint8)
    colour[..., 1] = 200
    colour[0, 0] = 255
    out = read_image(_save(Image.fromarray(colour), tmp_path / "green.png"))
    assert out[1, 1] == pytest.approx(0.587 * 200 / 255, abs=1e-5)


def test_jpeg_and_bilevel(tmp_path: Path) -> None:
    arr = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    out = read_image(_save(Image.fromarray(arr), tmp_path / "g.jpg", quality=95))
    assert out.shape == (48, 64)
    np.testing.assert_allclose(out, arr / 255.0, atol=0.03)
    bilevel = Image.fromarray(arr > 128).convert("1")
    out = read_image(_save(bilevel, tmp_path / "b.png"))
    assert set(np.unique(out)) == {0.0, 1.0}


def test_camera_mpo_jpeg_reads_its_first_frame(tmp_path: Path) -> None:
    first, second = Image.fromarray(_noise(48, 64)), Image.fromarray(_noise(48, 64, seed=1))
    path = _save(first, tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[second], quality=95)
    with Image.open(path) as img:
        assert img.format == "MPO" and img.n_frames == 2
    np.testing.assert_allclose(read_image(path), read_image(_save(first, tmp_path / "f.jpg", quality=95)), atol=1e-6)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((48, 80), dtype=np.uint8)  # stored 80 wide, 48 high
    arr[:16, :16] = 255  # bright block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    out = read_image(_save(Image.fromarray(arr), tmp_path / "rot.jpg", exif=exif, quality=95))
    assert out.shape == (80, 48)
    assert out[:16, -16:].mean() > 0.9  # top-left moved to top-right
    assert out[:16, :16].mean() < 0.1


def test_dicom_monochrome2_and_monochrome1(tmp_path: Path) -> None:
    m2 = read_image(_dicom(tmp_path / "m2.dcm", RAMP12))
    assert m2.dtype == np.float32 and m2.shape == (64, 64)
    np.testing.assert_allclose(m2, RAMP12 / 4095.0, atol=1e-6)  # no window: min-max
    m1 = read_image(_dicom(tmp_path / "m1.dcm", RAMP12, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


@pytest.mark.parametrize("bits", [10, 16])
def test_dicom_bits_stored(tmp_path: Path, bits: int) -> None:
    top = 2**bits - 1
    arr = np.linspace(0, top, 64 * 64).round().reshape(64, 64).astype(np.uint16)
    out = read_image(_dicom(tmp_path / f"b{bits}.dcm", arr, bits_stored=bits))
    np.testing.assert_allclose(out, arr / top, atol=1e-6)
    windowed = read_image(
        _dicom(tmp_path / f"w{bits}.dcm", arr, bits_stored=bits, WindowCenter=top / 2, WindowWidth=top)
    )
    assert windowed.min() == 0.0 and windowed.max() == 1.0


def test_dicom_window_clips_outside_values(tmp_path: Path) -> None:
    out = read_image(_dicom(tmp_path / "w.dcm", RAMP12, WindowCenter=2048, WindowWidth=1024))
    assert np.all(out[RAMP12 <= 1536] == 0.0)
    assert np.all(out[RAMP12 > 2560] == 1.0)
    inside = (RAMP12 > 1600) & (RAMP12 < 2500)
    assert np.all((out[inside] > 0) & (out[inside] < 1))
    assert out[RAMP12 == 2048][0] == pytest.approx(0.5, abs=1e-2)


def test_dicom_rescale_then_window(tmp_path: Path) -> None:
    # Stored 0..4095 -> HU -1024..3071; a [-500, 500] HU window.
    out = read_image(
        _dicom(tmp_path / "ct.dcm", RAMP12, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1000)
    )
    hu = RAMP12.astype(float) - 1024
    assert np.all(out[hu <= -500] == 0.0) and np.all(out[hu > 500] == 1.0)
    assert out[hu == 0][0] == pytest.approx(0.5, abs=1e-2)
    doubled = read_image(_dicom(tmp_path / "s.dcm", RAMP12, RescaleSlope=2, RescaleIntercept=100))
    np.testing.assert_allclose(doubled, RAMP12 / 4095.0, atol=1e-6)  # linear: min-max unchanged


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "US", list(range(4095, -1, -1)))  # LUTData: inverting LUT
    out = read_image(_dicom(tmp_path / "lut.dcm", RAMP12, VOILUTSequence=Sequence([item])))
    np.testing.assert_allclose(out, 1.0 - RAMP12 / 4095.0, atol=1e-6)


def test_dicom_rgb_rle_and_bare(tmp_path: Path) -> None:
    rgb = np.stack([RAMP12 >> 4] * 3, axis=-1).astype(np.uint8)
    ds = _dataset(
        None,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        Rows=64,
        Columns=64,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
    )
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.dcm"), rgb[..., 0] / 255.0, atol=1e-5)

    plain = read_image(_dicom(tmp_path / "plain.dcm", RAMP12))
    ds = _dataset(RAMP12)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm"), plain)

    bare = DicomBytesIO()  # no preamble, no file meta: found by content, not extension
    bare.is_little_endian, bare.is_implicit_VR = True, False
    write_dataset(bare, _dataset(RAMP12))
    np.testing.assert_array_equal(read_image(bare.getvalue(), name="bare"), plain)
    np.testing.assert_array_equal(read_image((tmp_path / "plain.dcm").rename(tmp_path / "dicom.png")), plain)


def test_bytes_input_matches_path(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_noise(40, 40)), tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(path.read_bytes()), read_image(path))
    np.testing.assert_array_equal(read_image(str(path)), read_image(path))
    with pytest.raises(ImageReadError, match=r"^upload\.png: file is empty"):
        read_image(b"", name="upload.png")
    with pytest.raises(ImageReadError, match=r"^<bytes>: "):
        read_image(b"not an image at all")


def test_real_radiograph(data_root) -> None:
    images = data_root / "covid-chestxray" / "images"
    path = sorted(p for p in images.iterdir() if is_supported_file(p))[0]
    out = read_image(path)
    with Image.open(path) as img:
        width, height = ImageOps.exif_transpose(img).size
    assert out.shape == (height, width)
    assert out.dtype == np.float32
    assert 0.0 <= out.min() < out.max() <= 1.0


# ---------------------------------------------------------------------------
# Bad files: each must raise ImageReadError naming the file and the problem


def _text(content: bytes) -> Callable[[Path], bytes]:
    return lambda _: content


def _truncated_png(tmp: Path) -> bytes:
    data = _save(Image.fromarray(_noise()), tmp / "src.png").read_bytes()
    return data[: len(data) // 2]


def _truncated_jpeg(tmp: Path) -> bytes:
    data = _save(Image.fromarray(_noise()), tmp / "src.jpg").read_bytes()
    return data[: len(data) // 2]


def _truncated_dicom(tmp: Path) -> bytes:
    data = _dicom(tmp / "src.dcm", RAMP12).read_bytes()
    return data[: len(data) - 3000]  # cut in the middle of the pixel data


def _img_bytes(img: Image.Image | list[Image.Image], fmt: str, **kwargs: Any) -> Callable[[Path], bytes]:
    def build(_: Path) -> bytes:
        buf = BytesIO()
        if isinstance(img, list):
            img[0].save(buf, fmt, save_all=True, append_images=img[1:], **kwargs)
        else:
            img.save(buf, fmt, **kwargs)
        return buf.getvalue()

    return build


def _dicom_bytes(arr: np.ndarray | None = None, **attrs: Any) -> Callable[[Path], bytes]:
    return lambda tmp: _dicom(tmp / "src.dcm", arr, **attrs).read_bytes()


def _frames(n: int) -> list[Image.Image]:
    return [Image.fromarray(_noise(64, 64, seed=i)) for i in range(n)]


def _zip_bytes(_: Path) -> bytes:
    import zipfile

    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("scan.png", b"x" * 100)
    return buf.getvalue()


# name -> (file name, builder returning bytes, or None for special paths, keyword)
BAD_FILES: dict[str, tuple[str, Callable[[Path], bytes] | None, str]] = {
    "empty_png": ("empty.png", _text(b""), "empty"),
    "empty_dcm": ("empty.dcm", _text(b""), "empty"),
    "truncated_png": ("cut.png", _truncated_png, "truncated"),
    "truncated_png_header": ("cut_header.png", lambda t: _truncated_png(t)[:20], "truncated"),
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, "truncated"),
    "text_as_png": ("notes.png", _text(b"patient notes: cough, fever\n" * 20), "not an image"),
    "html_as_jpg": ("page.jpg", _text(b"<!DOCTYPE html><html><body>403 Forbidden</body></html>"), "HTML"),
    "pdf_as_jpg": ("report.jpg", _text(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"), "PDF"),
    "zip_as_png": ("archive.png", _zip_bytes, "archive"),
    "garbage_dcm": ("noise.dcm", lambda _: b"\x00\x01" + np.random.default_rng(1).bytes(4096), "not an image"),
    "one_pixel": ("dot.png", _img_bytes(Image.new("L", (1, 1), 7), "PNG"), "too small"),
    "thin_10x2000": ("thin.png", _img_bytes(Image.fromarray(_noise(2000, 10)), "PNG"), "too small"),
    "png_bomb_100000": (
        "bomb.png",
        lambda t: _png_header_only(t / "b.png", 100_000, 100_000).read_bytes(),
        "too large",
    ),
    "png_bomb_12000": (
        "bomb12k.png",
        lambda t: _png_header_only(t / "b.png", 12_000, 12_000).read_bytes(),
        "too large",
    ),
    "constant_png": ("gray.png", _img_bytes(Image.new("L", (64, 64), 128), "PNG"), "blank"),
    "cmyk_jpeg": ("print.jpg", _img_bytes(Image.new("CMYK", (64, 64), (10, 20, 30, 40)), "JPEG"), "CMYK"),
    "animated_gif": ("anim.gif", _img_bytes(_frames(3), "GIF"), "frames"),
    "multipage_tiff": ("pages.tif", _img_bytes(_frames(3), "TIFF"), "frames"),
    "nan_tiff": ("nan.tif", _img_bytes(Image.fromarray(np.full((40, 40), np.nan, np.float32)), "TIFF"), "NaN"),
    "dicom_no_pixels": ("sr.dcm", _dicom_bytes(None), "pixel data"),
    "dicom_multiframe": (
        "cine.dcm",
        _dicom_bytes(np.concatenate([RAMP12] * 3), NumberOfFrames=3, Rows=64),
        "multi-frame",
    ),
    "dicom_huge_rows": ("huge.dcm", _dicom_bytes(RAMP12, Rows=65535, Columns=65535), "too large"),
    "dicom_tiny": ("tiny.dcm", _dicom_bytes(RAMP12[:4, :4]), "too small"),
    "dicom_constant": ("flat.dcm", _dicom_bytes(np.full((64, 64), 300)), "blank"),
    "dicom_truncated": ("cut.dcm", _truncated_dicom, "truncated"),
    "dicom_j2k_garbage": (
        "j2k.dcm",
        lambda t: _encapsulated_dicom(t / "s.dcm", JPEG2000Lossless, b"\xff\x4f" + b"junk" * 50).read_bytes(),
        "JPEG 2000",
    ),
    "dicom_jpeg_lossless_garbage": (
        "ljpeg.dcm",
        lambda t: _encapsulated_dicom(t / "s.dcm", JPEGLosslessSV1, b"junk" * 50).read_bytes(),
        "JPEG Lossless",
    ),
    "missing": ("missing.png", None, "not found"),
    "directory": ("folder.png", None, "directory"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused(tmp_path: Path, case: str) -> None:
    file_name, build, keyword = BAD_FILES[case]
    path = tmp_path / file_name
    if case == "directory":
        path.mkdir()
    elif build is not None:
        path.write_bytes(build(tmp_path))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert file_name in message and keyword.lower() in message.lower(), message
    assert "\n" not in message and info.value.path == str(path)


def test_bad_corpus_is_large_enough() -> None:
    assert len(BAD_FILES) >= 18


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_size_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self) or original(self))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(_png_header_only(tmp_path / "b.png", 12_000, 12_000))
    good = _save(Image.fromarray(_noise(64, 64)), tmp_path / "g.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(good, max_pixels=64 * 63)
    assert loads == []
    assert read_image(good, max_pixels=64 * 64).shape == (64, 64)
    assert MAX_PIXELS == 100_000_000 and MIN_SIDE == 32


def test_missing_dicom_decoder_suggests_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPlugins:
        is_available = False

    monkeypatch.setattr(cio, "get_decoder", lambda uid: NoPlugins())
    path = _encapsulated_dicom(tmp_path / "j2k.dcm", JPEG2000Lossless, b"junk")
    with pytest.raises(ImageReadError, match=r"JPEG 2000.*pip install pylibjpeg pylibjpeg-libjpeg"):
        read_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values it reads
def test_corrupted_files_raise_only_image_read_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sources = [
        _save(Image.fromarray(_noise(48, 48)), tmp_path / "n.png").read_bytes(),
        _save(Image.fromarray(_noise(48, 48)), tmp_path / "n.jpg").read_bytes(),
        _dicom(tmp_path / "n.dcm", RAMP12, WindowCenter=2000, WindowWidth=800).read_bytes(),
    ]
    for data in sources:
        for _ in range(25):
            mutated = bytearray(data)
            for pos in rng.integers(0, min(len(data), 600), 4):
                mutated[pos] = int(rng.integers(0, 256))
            try:
                out = read_image(bytes(mutated), name="fuzz")
            except ImageReadError:
                continue
            assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


# ---------------------------------------------------------------------------
# Error type, extensions, normalize


def test_image_read_error_format() -> None:
    err = ImageReadError("scan.png", "image is blank\n(second line)")
    assert isinstance(err, ValueError)
    assert str(err) == "scan.png: image is blank (second line)"
    assert (err.path, err.problem) == ("scan.png", "image is blank (second line)")
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err) and clone.path == "scan.png"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", True),
        ("a.JPG", True),
        ("a.jpeg", True),
        ("a.DCM", True),
        ("a.dicom", True),
        ("a.tif", True),
        ("a.TIFF", True),
        ("a.bmp", True),
        ("IM0001", False),
        ("a.txt", False),
        ("a.gif", False),
        (".png", False),
    ],
)
def test_is_supported_file(name: str, expected: bool) -> None:
    assert is_supported_file(name) is expected
    assert is_supported_file(Path("dir") / name) is expected


def test_normalize_batch_is_per_image_zscore() -> None:
    rng = np.random.default_rng(0)
    batch = (rng.random((4, 40, 50)) * np.array([0.1, 0.5, 1.0, 2.0])[:, None, None] + 0.3).astype(np.float32)
    out = normalize(batch)
    assert out.dtype == np.float32 and out.shape == batch.shape
    np.testing.assert_allclose(out.mean(axis=(-2, -1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(-2, -1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(out[2], normalize(batch[2]), atol=1e-6)
    assert NORMALIZATION == "per_image_zscore" and NORMALIZATION in (normalize.__doc__ or "")


def test_normalize_constant_gives_zeros() -> None:
    batch = np.stack([np.full((32, 32), 0.7, np.float32), np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)])
    out = normalize(batch)
    assert np.all(out[0] == 0.0) and np.isfinite(out).all()
    assert out[1].std() == pytest.approx(1.0, abs=1e-4)


def test_normalize_tensor_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    batch = np.random.default_rng(1).random((2, 1, 33, 35)).astype(np.float32)
    out = normalize(torch.from_numpy(batch))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), normalize(batch), atol=1e-5)
    assert torch.equal(normalize(torch.zeros(1, 8, 8)), torch.zeros(1, 8, 8))
