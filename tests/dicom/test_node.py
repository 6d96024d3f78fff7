"""The DICOM node in this process, with a stand-in for the models: screening, forwarding, the bounded queue, stopping."""

from __future__ import annotations

import threading
import time

import pytest
from dicom_files import radiograph, undecodable
from fakes import FakePredictor
from orthanc import free_port
from pydicom import uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from covidcxr.cli import main
from covidcxr.dicom.node import CANNOT_UNDERSTAND, Destination, DicomNode, screen


class Archive:
    """A C-STORE SCP on loopback that keeps what it is sent: the archive results are forwarded to."""

    def __init__(self, syntaxes: tuple[str, ...] = (uid.ExplicitVRLittleEndian, uid.JPEGLSLossless)) -> None:
        self.received: list = []
        self.port = free_port()
        ae = AE(ae_title="ARCHIVE")
        for sop_class in (uid.SegmentationStorage, uid.ComprehensiveSRStorage, uid.SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class, list(syntaxes))
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def wait_for(self, n: int, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received


@pytest.fixture()
def archive():
    a = Archive()
    yield a
    a.server.shutdown()


def _node(predictor, **kwargs) -> DicomNode:
    node = DicomNode(predictor, port=0, **kwargs)
    node.start()
    return node


def _send(node: DicomNode, *datasets) -> list:
    """C-STORE the data sets to the node on one association; returns each answer's status data set."""
    ae = AE(ae_title="SENDER")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def test_screen_says_why_an_object_is_not_read():
    assert screen(radiograph(max_side=64), uid.ExplicitVRLittleEndian) is None
    assert screen(radiograph(modality="CR", max_side=64), uid.ExplicitVRLittleEndian) is None
    assert "CT Image Storage is not a radiograph" in screen(radiograph(modality="CT", max_side=64), uid.ExplicitVRLittleEndian)  # fmt: skip
    assert "multi-frame object (3 frames)" in screen(radiograph(frames=3, max_side=64), uid.ExplicitVRLittleEndian)
    assert "HAND, not a chest" in screen(radiograph(body_part="HAND", max_side=64), uid.ExplicitVRLittleEndian)
    lateral = radiograph(max_side=64)
    lateral.ViewPosition = "LL"
    assert "lateral view" in screen(lateral, uid.ExplicitVRLittleEndian)
    assert "MPEG-4 AVC/H.264" in screen(undecodable(), uid.MPEG4HP41)
    assert "exceeds the node's limit" in screen(radiograph(max_side=64), uid.ExplicitVRLittleEndian, max_pixels=100)


def test_destination_is_host_port_aet():
    assert Destination.parse("127.0.0.1:4242:ORTHANC") == Destination("127.0.0.1", 4242, "ORTHANC")
    assert Destination.parse("[::1]:104:PACS").host == "::1"
    for bad, words in (("pacs:104", "HOST:PORT:AET"), ("pacs:x:PACS", "not a number"), ("p:1:" + "A" * 17, "longer")):
        with pytest.raises(ValueError, match=words):
            Destination.parse(bad)


def test_node_answers_echo_reads_a_radiograph_and_forwards_seg_sr_sc(archive, tmp_path):
    node = _node(FakePredictor(), forward=Destination("127.0.0.1", archive.port, "ARCHIVE"), out=tmp_path)
    try:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="COVIDCXR")
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        source = radiograph(max_side=256)
        ct = radiograph(modality="CT", max_side=64)
        statuses = _send(node, source, ct)
        assert statuses[0].Status == 0x0000
        assert statuses[1].Status == CANNOT_UNDERSTAND and "not a radiograph" in statuses[1].ErrorComment
        node.join()
        got = archive.wait_for(3)
    finally:
        node.stop()
    assert sorted(ds.SOPClassUID.name for ds in got) == [
        "Comprehensive SR Storage",
        "Secondary Capture Image Storage",
        "Segmentation Storage",
    ]
    assert all(ds.StudyInstanceUID == source.StudyInstanceUID for ds in got)
    sc = next(ds for ds in got if ds.SOPClassUID == uid.SecondaryCaptureImageStorage)
    assert sc.file_meta.TransferSyntaxUID == uid.JPEGLSLossless  # an archive that takes JPEG-LS gets it
    assert (tmp_path / "predictions.jsonl").read_text().count("\n") == 1
    assert (node.counts["received"], node.counts["read"], node.counts["refused"]) == (2, 1, 1)
    assert node.counts["forwarded"] == 3


def test_an_archive_without_jpeg_ls_gets_the_sc_uncompressed():
    archive = Archive(syntaxes=(uid.ExplicitVRLittleEndian,))
    node = _node(FakePredictor(), forward=Destination("127.0.0.1", archive.port, "ARCHIVE"))
    try:
        _send(node, radiograph(max_side=128))
        node.join()
        got = archive.wait_for(3)
    finally:
        node.stop()
        archive.server.shutdown()
    sc = next(ds for ds in got if ds.SOPClassUID == uid.SecondaryCaptureImageStorage)
    assert sc.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian and sc.pixel_array.ndim == 3


def test_a_wrong_called_ae_title_is_rejected():
    node = _node(FakePredictor())
    try:
        ae = AE(ae_title="SENDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SOMEONE")
        assert assoc.is_rejected
    finally:
        node.stop()


def test_a_burst_waits_in_the_senders_c_store_instead_of_piling_up(caplog):
    delay = 0.3
    predictor = FakePredictor(delay=delay)
    node = _node(predictor, max_queue=1, report=False)
    try:
        start = time.perf_counter()
        statuses = _send(node, *[radiograph(max_side=128) for _ in range(5)])
        sending = time.perf_counter() - start
        node.join()
    finally:
        node.stop()
    assert [s.Status for s in statuses] == [0] * 5
    assert node.peak_waiting == 1 and node.counts["read"] == 5
    assert sending >= 2 * delay  # the last C-STOREs waited for a reading to finish


def test_a_failing_reading_is_logged_and_the_node_goes_on(caplog):
    class Flaky(FakePredictor):
        def run(self, images):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("the model ran out of memory")
            return super().run(images)

    node = _node(Flaky(), report=False)
    try:
        with caplog.at_level("ERROR", logger="covidcxr.dicom"):
            _send(node, radiograph(max_side=128), radiograph(max_side=128))
            node.join()
    finally:
        node.stop()
    assert node.counts["failed"] == 1 and node.counts["read"] == 1
    assert "reading failed (RuntimeError: the model ran out of memory); the node goes on" in caplog.text


def test_stop_reads_what_was_acknowledged_unless_told_to_drop_it():
    node = _node(FakePredictor(delay=0.2), max_queue=4, report=False)
    _send(node, *[radiograph(max_side=128) for _ in range(3)])
    node.stop()
    assert node.counts["read"] == 3
    node = _node(FakePredictor(delay=0.3), max_queue=4, report=False)
    _send(node, *[radiograph(max_side=128) for _ in range(3)])
    threading.Timer(0.05, node.drop_queued).start()
    node.stop()
    assert node.counts["read"] + node.counts["dropped"] == 3 and node.counts["dropped"] >= 1


def test_cli_refuses_a_bad_forward_before_loading_models(capsys):
    assert main(["dicom-node", "--forward", "pacs:104"]) == 2
    assert "is not HOST:PORT:AET" in capsys.readouterr().err
