"""The ``covidcxr segment`` command as a user runs it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from covidcxr.cli import main


def _dicom_from(png_path, out_path, monochrome1=False):
    arr = (np.asarray(Image.open(png_path).convert("L"), np.uint16) * 16).astype(np.uint16)  # 12-bit
    if monochrome1:
        arr = 4095 - arr
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(out_path, enforce_file_format=True)


def test_segment_files_folder_dicom_and_bad_input(tmp_path, fixtures, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("ieee8023_2cd63b76.jpg", "kermany_IM-0117-0001.jpeg", "nih_00000710_003.png"):
        shutil.copy(fixtures / name, inputs / name)
    _dicom_from(fixtures / "nih_00000710_003.png", inputs / "nih_as_dicom.dcm", monochrome1=True)
    (inputs / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    code = main(["segment", str(inputs), str(tmp_path / "missing.jpg"), "--out", str(out), "--batch-size", "2", "-q"])
    captured = capsys.readouterr()
    assert code == 2
    assert "broken.png" in captured.err and "missing.jpg" in captured.err
    assert "Traceback" not in captured.err
    lines = [line for line in captured.out.splitlines() if "lung area" in line]
    assert len(lines) == 4
    for src in ("ieee8023_2cd63b76.jpg", "kermany_IM-0117-0001.jpeg", "nih_00000710_003.png"):
        stem = src.rsplit(".", 1)[0]
        mask = np.asarray(Image.open(out / f"{stem}_lungs.png"))
        assert mask.shape == np.asarray(Image.open(fixtures / src)).shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert (out / f"{stem}_overlay.png").is_file()
    # the DICOM copy (MONOCHROME1, 12 bit) segments like its PNG source
    a = np.asarray(Image.open(out / "nih_as_dicom_lungs.png")) > 0
    b = np.asarray(Image.open(out / "nih_00000710_003_lungs.png")) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
    assert not (out / "broken_lungs.png").exists()


def test_full_resolution_input_keeps_its_pixel_size(tmp_path, fixtures):
    big = Image.open(fixtures / "kermany_IM-0117-0001.jpeg").resize((2301, 1803), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.png")
    assert main(["segment", str(tmp_path / "big.png"), "--out", str(tmp_path / "o"), "-q"]) == 0
    mask = Image.open(tmp_path / "o" / "big_lungs.png")
    assert mask.size == (2301, 1803)
    assert 0.1 < (np.asarray(mask) > 0).mean() < 0.6


def test_repeated_stems_do_not_overwrite(tmp_path, fixtures):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(fixtures / "nih_00000710_003.png", tmp_path / d / "x.png")
    assert main(["segment", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o"), "-q"]) == 0
    assert (tmp_path / "o" / "x_lungs.png").is_file() and (tmp_path / "o" / "x-2_lungs.png").is_file()


def test_console_script_on_the_bundled_sample(tmp_path):
    exe = shutil.which("covidcxr") or f"{sys.executable} -m covidcxr.cli"
    r = subprocess.run([*exe.split(), "segment", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "sample_cxr.jpg" in r.stdout and "lung area" in r.stdout
    assert (tmp_path / "sample_cxr_lungs.png").is_file()


def test_bad_arguments_exit_cleanly(tmp_path, capsys):
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "holds no" in capsys.readouterr().err
    assert main(["segment", "--out", str(tmp_path / "o"), "--lung-weights", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["predict", "--out", str(tmp_path / "p"), "--workers", "-1"]) == 2  # said before any model loads
    err = capsys.readouterr().err
    assert err.startswith("error: need --batch-size >= 1") and "Traceback" not in err


@pytest.mark.integration
def test_train_resume_reuses_the_runs_config_and_evaluate_and_splits_run(tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        "segmentation",
        "--out",
        str(run),
        "--set",
        "limit=4",
        "--set",
        "epochs=1",
        "--set",
        "input_size=64",
        "--set",
        "batch_size=2",
    ]
    assert main(args) == 0
    assert main(args) == 2  # the folder exists: refused, with a hint
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "segmentation", "--out", str(run), "--resume"]) == 0  # config.yaml of the run is reused
    spec = run / "export" / "unet_mobilenetv2_lungs.json"
    assert (
        main(
            [
                "evaluate",
                "segmentation",
                "--lung-weights",
                str(spec),
                "--split",
                "val",
                "--limit",
                "1",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "all_manual: Dice" in out and "human ceiling" in out
    assert (tmp_path / "ev" / "segmentation_eval.md").is_file()
    assert main(["splits"]) == 0
    assert "patients in more than one split: 0" in capsys.readouterr().out
