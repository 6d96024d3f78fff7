"""Against a real PACS: Orthanc sends chest X-rays to ``covidcxr dicom-node`` and gets SEG, SR and SC back.

Orthanc (Debian's package) and the node (the real command, shipped models) run on loopback with
temporary folders; the test reads the results back through Orthanc's REST API. Also
``covidcxr predict --dicom-out`` on a DICOM file and a PNG. Run with ``-m integration``.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import radiograph, undecodable, write
from orthanc import ORTHANC, Orthanc, free_port
from PIL import Image
from pydicom import uid

from covidcxr.cli import main

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(ORTHANC).exists(), reason="Orthanc is not installed (apt-get install orthanc)"),
]
RESULT_CLASSES = {uid.SegmentationStorage, uid.ComprehensiveSRStorage, uid.SecondaryCaptureImageStorage}


class Node:
    """``covidcxr dicom-node`` as a subprocess, its log in a file."""

    def __init__(self, root: Path, port: int, forward: str) -> None:
        self.log, self.out = root / "node.log", root / "node-out"
        command = [sys.executable, "-m", "covidcxr.cli", "dicom-node", "--port", str(port)]
        command += ["--forward", forward, "--out", str(self.out)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in self.text():
            assert self.process.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_line(self, *words: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [line for line in self.text().splitlines() if all(w in line for w in words)]
            if lines:
                return lines[-1]
            time.sleep(0.1)
        raise AssertionError(f"no log line with {words} within {timeout:.0f} s:\n{self.text()}")

    def rows(self) -> list[dict]:
        path = self.out / "predictions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc with the node as modality ``covidcxr``, and the node forwarding to Orthanc; Ctrl-C at the end."""
    root = tmp_path_factory.mktemp("pacs")
    port = free_port()
    with Orthanc(root / "orthanc", {"covidcxr": ("COVIDCXR", "127.0.0.1", port)}) as orthanc:
        node = Node(root, port, f"127.0.0.1:{orthanc.dicom_port}:ORTHANC")
        try:
            yield orthanc, node
        finally:
            node.process.send_signal(signal.SIGINT)
            code = node.process.wait(60)
    assert code == 0, node.text()
    assert "DICOM node COVIDCXR stopped" in node.text()


def _send(orthanc: Orthanc, ds) -> tuple[str, bool, str]:
    """Store ``ds`` in Orthanc, then have Orthanc C-STORE it to the node: (instance id, stored, answer)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    instance = orthanc.upload(buf.getvalue())
    return instance, *orthanc.send("covidcxr", [instance])


def _results(orthanc: Orthanc, before: set[str]) -> dict[str, pydicom.Dataset]:
    new = orthanc.wait_for(3, timeout=90, exclude=before)
    read = [pydicom.dcmread(io.BytesIO(orthanc.file(i))) for i in new]
    return {ds.SOPClassUID: ds for ds in read}


def _sr_numbers(sr) -> dict[str, float]:
    out = {}

    def walk(items) -> None:
        for item in items:
            if item.ValueType == "NUM":
                out[item.ConceptNameCodeSequence[0].CodeValue] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


def _dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True).stderr
    return [line for line in out.splitlines() if line.startswith("Error")]


def test_orthanc_sends_a_chest_xray_and_gets_seg_sr_and_sc_back(pacs, tmp_path):
    orthanc, node = pacs
    assert orthanc.request("POST", "/modalities/covidcxr/echo", {}) == {}  # C-ECHO answered
    source = radiograph(max_side=1024, patient_id="ORTHANC-1")
    before = set(orthanc.instances())
    instance, stored, answer = _send(orthanc, source)
    assert stored, answer
    results = _results(orthanc, before | {instance})
    assert set(results) == RESULT_CLASSES, node.text()
    for ds in results.values():
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == "ORTHANC-1"
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert "research use, not for clinical decisions" in ds.SeriesDescription
    seg, sr = results[uid.SegmentationStorage], results[uid.ComprehensiveSRStorage]
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID  # fmt: skip
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
    row = next(r for r in node.rows() if r["path"] == source.SOPInstanceUID)
    numbers = _sr_numbers(sr)
    codes = {"COVID-19": "P-COVID-19", "Other pneumonia": "P-OTHER-PNA", "No finding": "P-NO-FINDING"}
    for label, p in row["probabilities"].items():
        assert numbers[codes[label]] == pytest.approx(p, abs=1e-6)
    assert numbers["BRIXIA-GLOBAL"] == pytest.approx(row["severity"]["brixia"]["global"], abs=1e-6)
    assert seg.pixel_array.shape[-2:] == (source.Rows, source.Columns)
    assert np.asarray(seg.pixel_array[0]).mean() == pytest.approx(row["lung_area"], abs=2e-3)
    if shutil.which("dciodvfy"):
        for ds_uid in results:
            instance_id = next(i for i in orthanc.instances() if orthanc.get(f"/instances/{i}/simplified-tags").get("SOPClassUID") == ds_uid)  # fmt: skip
            errors = _dciodvfy_errors(orthanc.file(instance_id), tmp_path)
            assert not errors, (ds_uid.name, errors)


def test_refused_objects_are_logged_with_their_reason_and_the_node_goes_on(pacs, tmp_path):
    orthanc, node = pacs
    gradient = tmp_path / "gradient.png"
    y, x = np.mgrid[0:400, 0:400]
    Image.fromarray(((x * 0.4 + y * 0.2) % 256).astype(np.uint8)).save(gradient)
    cases = {
        "not a radiograph": radiograph(modality="CT", max_side=256),
        "multi-frame object (3 frames)": radiograph(frames=3, max_side=256),
        "MPEG-4 AVC/H.264": undecodable(),
    }
    for reason, ds in cases.items():
        _, stored, answer = _send(orthanc, ds)
        assert not stored, answer  # refused on receipt: a failure status to the sender
        assert reason in node.wait_for_line("refused", ds.SOPInstanceUID)
    not_chest = radiograph(gradient)  # a DX header on a picture that is no chest: the input gate refuses it
    _, stored, answer = _send(orthanc, not_chest)
    assert stored, answer
    assert "not recognised as a frontal chest X-ray" in node.wait_for_line("refused", not_chest.SOPInstanceUID)
    chest = radiograph(modality="CR", max_side=512)  # and the node still reads a chest X-ray
    before = set(orthanc.instances())
    instance, stored, answer = _send(orthanc, chest)
    assert stored, answer
    assert set(_results(orthanc, before | {instance})) == RESULT_CLASSES
    assert node.process.poll() is None


def test_predict_dicom_out_writes_valid_objects_and_notes_other_inputs(tmp_path, fixtures, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(radiograph(max_side=512), inputs / "chest.dcm")
    shutil.copy(fixtures / "nih_00000710_003.png", inputs / "chest.png")
    assert main(["predict", str(inputs), "--out", str(tmp_path / "out"), "--dicom-out", "-q"]) == 0
    assert "note: " in capsys.readouterr().err
    rows = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "out/predictions.jsonl").open())}
    assert "not a DICOM file" in rows["chest.png"]["dicom_note"] and "dicom" not in rows["chest.png"]
    files = rows["chest.dcm"]["dicom"]
    assert set(files) == {"seg", "sr", "sc"}
    for path in files.values():
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID in RESULT_CLASSES
        if shutil.which("dciodvfy"):
            assert not _dciodvfy_errors(Path(path).read_bytes(), tmp_path)
