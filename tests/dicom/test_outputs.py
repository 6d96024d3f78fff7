"""DICOM results of a reading (SEG, SR, SC) on a made-up reading of a DX made from a fixture: no models, seconds."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_files import radiograph, write
from fakes import FakePredictor, fake_result
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import uid

from covidcxr.dicom.outputs import RESEARCH_USE, SCHEME, dicom_results, dicom_row, read_header
from covidcxr.io import png_bytes, rgb_png
from covidcxr.web import create_app

SEG, SR, SC = uid.SegmentationStorage, uid.ComprehensiveSRStorage, uid.SecondaryCaptureImageStorage


@pytest.fixture()
def source(tmp_path):
    path = write(radiograph(max_side=256), tmp_path / "scan.dcm")
    return path, read_header(path)


def _report_png() -> bytes:
    return png_bytes(rgb_png, np.full((60, 100, 3), 200, np.uint8))


def _content(ds, kind: str) -> dict[str, object]:
    """Every SR content item of a value type (NUM -> float, CODE -> code value, TEXT -> text), by concept code."""
    out: dict[str, list] = {}

    def walk(items) -> None:
        for item in items:
            if item.ValueType == kind:
                name = item.ConceptNameCodeSequence[0].CodeValue
                if kind == "NUM":
                    value = float(item.MeasuredValueSequence[0].NumericValue)
                elif kind == "CODE":
                    value = item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeMeaning
                else:
                    value = str(item.get("TextValue", ""))
                out.setdefault(name, []).append(value)
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return out


def test_seg_sr_and_sc_are_new_series_in_the_sources_study(source):
    path, header = source
    result = fake_result((header.Rows, header.Columns))
    results = dicom_results(header, result, result.to_dict(), _report_png())
    kinds = dict(results.items())
    assert {k: ds.SOPClassUID for k, ds in kinds.items()} == {"seg": SEG, "sr": SR, "sc": SC}
    series = {ds.SeriesInstanceUID for ds in kinds.values()}
    assert len(series) == 3 and header.SeriesInstanceUID not in series
    for ds in kinds.values():
        assert ds.StudyInstanceUID == header.StudyInstanceUID
        assert (ds.PatientID, str(ds.PatientName), ds.AccessionNumber) == ("CXR-TEST-1", "Test^Chest", "ACC1")
        assert ds.SOPInstanceUID != header.SOPInstanceUID
        assert RESEARCH_USE in ds.SeriesDescription


def test_segmentation_codes_lungs_and_lesions_and_references_the_source(source):
    _, header = source
    result = fake_result((header.Rows, header.Columns))
    seg = dicom_results(header, result, result.to_dict()).seg
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Lungs", "Ground glass opacity", "Lung consolidation"]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SNOMED CT lung
    assert segments[1].AnatomicRegionSequence[0].CodeValue == "39607008"
    assert segments[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "a" * 64
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
    masks = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        [header.SOPInstanceUID], combine_segments=False
    )[0]
    assert np.array_equal(masks[..., 0].astype(bool), result.lung_mask)
    assert masks[..., 1].any() and not (masks[..., 1].astype(bool) & ~result.lung_mask).any()  # lesions in the lungs
    assert not masks[..., 2].any()


def test_sr_holds_the_rows_probabilities_findings_severity_and_models(source):
    _, header = source
    result = fake_result((header.Rows, header.Columns))
    row = result.to_dict()
    sr = dicom_results(header, result, row).sr
    numbers, codes, texts = _content(sr, "NUM"), _content(sr, "CODE"), _content(sr, "TEXT")
    probabilities = {"COVID-19": "P-COVID-19", "Other pneumonia": "P-OTHER-PNA", "No finding": "P-NO-FINDING"}
    for label, code in probabilities.items():
        assert numbers[code] == [pytest.approx(row["probabilities"][label])]
    assert numbers["BRIXIA-GLOBAL"] == [7.5] and numbers["GEO-EXTENT"] == [3.1]
    assert ("COVID-19", "COVID-19 pneumonia") in codes["PREDICTION"]
    assert codes["AIRSPACE-OPACITY"] == [("52101004", "Present")]
    assert "CATEGORY" not in codes  # no category in the row: none in the SR
    assert "b" * 64 in texts["111003"] and "d" * 64 in texts["111003"]  # Algorithm Version: the sha256
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME


def test_a_reporting_category_in_the_row_is_a_coded_finding(source):
    _, header = source
    result = fake_result((header.Rows, header.Columns))
    sr = dicom_results(header, result, result.to_dict() | {"category": "Typical appearance"}).sr
    assert _content(sr, "CODE")["CATEGORY"] == [("TYPICAL-APPEARAN", "Typical appearance")]
    # The row's category object (covidcxr.infer.categories) is coded by its label.
    category = {"code": "typical", "label": "Typical appearance", "reasons": [], "cannot_see": ""}
    sr = dicom_results(header, result, result.to_dict() | {"category": category}).sr
    assert _content(sr, "CODE")["CATEGORY"] == [("TYPICAL-APPEARAN", "Typical appearance")]


def test_every_object_reads_back_with_pydicom_and_passes_dciodvfy(source, tmp_path):
    _, header = source
    result = fake_result((header.Rows, header.Columns))
    files = dicom_results(header, result, result.to_dict(), _report_png()).save(tmp_path, "scan")
    assert set(files) == {"seg", "sr", "sc"}
    for kind, path in files.items():
        ds = pydicom.dcmread(path)
        if kind != "sr":
            assert ds.pixel_array.size > 0
        if kind == "sc":
            assert ds.pixel_array.shape == (60, 100, 3) and (ds.pixel_array == 200).all()  # lossless
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    for path in files.values():
        out = subprocess.run(["dciodvfy", path], capture_output=True, text=True).stderr
        assert not [line for line in out.splitlines() if line.startswith("Error")], out


def test_non_dicom_inputs_get_a_note_and_refused_readings_no_results(source, fixtures):
    _, header = source
    png = (fixtures / "nih_00000710_003.png").read_bytes()
    note = dicom_row(png, "x.png", fake_result((10, 10)), {}, None)
    assert set(note) == {"dicom_note"} and "x.png is not a DICOM file" in note["dicom_note"]
    no_study = radiograph(max_side=64)
    del no_study.StudyInstanceUID
    buf = io.BytesIO()
    no_study.save_as(buf, enforce_file_format=True)
    note = dicom_row(buf.getvalue(), "old.dcm", fake_result((no_study.Rows, no_study.Columns)), {}, None)
    assert "old.dcm is a DICOM file without StudyInstanceUID" in note["dicom_note"]
    refused = fake_result((header.Rows, header.Columns))
    refused.error = "scan.dcm: not recognised as a frontal chest X-ray"
    with pytest.raises(ValueError, match="refused reading"):
        dicom_results(header, refused, {})
    with pytest.raises(ValueError, match="lung mask is"):
        dicom_results(header, fake_result((10, 10)), {})


def test_serve_answers_dicom_results_on_request(source, fixtures):
    path, header = source
    with TestClient(create_app(FakePredictor(), allowed_hosts=["testserver"])) as client:
        answer = client.post("/v1/predict", files={"file": ("scan.dcm", path.read_bytes())}, data={"dicom": "1"})
        assert answer.status_code == 200, answer.text
        parts = answer.json()["dicom"]
        read = {k: pydicom.dcmread(io.BytesIO(base64.b64decode(v["dicom_base64"]))) for k, v in parts.items()}
        assert {k: ds.SOPClassUID for k, ds in read.items()} == {"seg": SEG, "sr": SR, "sc": SC}
        assert all(ds.StudyInstanceUID == header.StudyInstanceUID for ds in read.values())
        png = (fixtures / "nih_00000710_003.png").read_bytes()
        answer = client.post("/v1/predict", files={"file": ("x.png", png)}, data={"dicom": "1"}).json()
        assert "dicom" not in answer and "not a DICOM file" in answer["dicom_note"]
        plain = client.post("/v1/predict", files={"file": ("scan.dcm", path.read_bytes())}).json()
        assert "dicom" not in plain and "dicom_note" not in plain
    assert Image.open(io.BytesIO(base64.b64decode(plain["report"]["png_base64"]))).format == "PNG"


def test_without_severity_the_seg_has_the_lungs_only_and_the_sr_no_scores(source):
    _, header = source
    result = fake_result((header.Rows, header.Columns))
    result.lesions = result.severity = result.findings = None
    results = dicom_results(header, result, result.to_dict())
    assert [s.SegmentLabel for s in results.seg.SegmentSequence] == ["Lungs"]
    numbers = _content(results.sr, "NUM")
    assert set(numbers) == {"P-COVID-19", "P-OTHER-PNA", "P-NO-FINDING"} and results.sc is None
