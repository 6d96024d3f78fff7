"""A DICOM node a PACS sends chest X-rays to: C-STORE and C-ECHO SCP, one model thread, results sent back.

``covidcxr dicom-node`` runs a :class:`DicomNode`. For every object stored to it:

1. **On receipt** (in the association's thread) the header is screened: only CR and DX images
   (for presentation or processing), one frame, a chest (or no ``BodyPartExamined``), not a lateral
   ``ViewPosition``, a transfer syntax an installed decoder reads and a pixel count under the limit.
   Anything else gets a failure status (0xC000) whose ErrorComment says why, and a log line.
2. An accepted object waits, as its encoded bytes, in a **bounded queue**. When the queue is full the
   C-STORE answer waits too: a burst of studies slows the sender instead of filling memory.
3. **One worker thread** decodes it with :func:`covidcxr.io.read_image`, runs the
   :class:`~covidcxr.infer.Predictor` (the input gate refuses what is not a frontal chest X-ray: the
   refusal is logged with its reason), and builds the SEG, SR and report secondary capture
   (:mod:`covidcxr.dicom.outputs`).
4. With ``forward``, those are C-STOREd to the archive named ``HOST:PORT:AET``; with ``out``, they are
   written there with one ``predictions.jsonl`` row per image.

Nothing an object holds can stop the node: every failure is logged with its reason and the next
object is read. :meth:`DicomNode.stop` closes the port, then reads what is already queued (those
objects were acknowledged to their sender) unless told to drop it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from ..batch import trim_heap
from ..infer import Predictor
from ..io import MAX_PIXELS, ImageReadError, png_bytes, read_image
from ..predict import write_report
from .outputs import DicomResults, dicom_results, read_header

__all__ = ["RADIOGRAPHS", "Destination", "DicomNode", "screen"]

log = logging.getLogger(__name__)

#: The SOP classes read: CR, DX for presentation, DX for processing.
RADIOGRAPHS = {
    uid.ComputedRadiographyImageStorage: "CR",
    uid.DigitalXRayImageStorageForPresentation: "DX",
    uid.DigitalXRayImageStorageForProcessing: "DX for processing",
}
CHEST_PARTS = {"CHEST", "THORAX", "LUNG", "CHEST_LUNG"}
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "XTABLE"}
#: C-STORE statuses: stored; refused (ErrorComment says why); the node is stopping.
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
_RESULT_SYNTAXES = {
    SegmentationStorage: [uid.ExplicitVRLittleEndian],
    ComprehensiveSRStorage: [uid.ExplicitVRLittleEndian],
    SecondaryCaptureImageStorage: [uid.JPEGLSLossless, uid.ExplicitVRLittleEndian],
}


@dataclass(frozen=True)
class Destination:
    """Where results are C-STOREd: ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``HOST:PORT:AET`` (e.g. ``127.0.0.1:4242:ORTHANC``) as a destination.

        Raises:
            ValueError: not three parts, a port that is not a number from 1 to 65535, or an AE title
                longer than 16 characters (one sentence).
        """
        parts = text.rsplit(":", 2)
        fix = "write it as HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC"
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"--forward {text!r} is not HOST:PORT:AET; {fix}")
        host, port, aet = parts
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--forward {text!r}: port {port!r} is not a number from 1 to 65535; {fix}")
        if len(aet) > 16:
            raise ValueError(f"--forward {text!r}: AE title {aet!r} is longer than 16 characters; {fix}")
        return cls(host.strip("[]"), int(port), aet)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.ae_title}"


@dataclass
class _Job:
    data: bytes
    sop_instance_uid: str
    sender: str
    received: float = field(default_factory=time.perf_counter)


def screen(ds: Dataset, transfer_syntax: str, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why an object stored to the node is not read, from its header; None when it is a radiograph to read.

    Args:
        ds: the object's data set (pixel data is not decoded).
        transfer_syntax: the transfer syntax it came in.
        max_pixels: the most pixels an image may have.
    """
    sop_class = uid.UID(str(ds.get("SOPClassUID", "")))
    if sop_class not in RADIOGRAPHS:
        name = sop_class.name if sop_class.is_valid else (str(sop_class) or "no SOP class")
        return f"{name} is not a radiograph; this node reads CR and DX chest X-rays"
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    except (TypeError, ValueError):
        return "NumberOfFrames, Rows or Columns is not a number"
    if frames > 1:
        return f"multi-frame object ({frames} frames); this node reads single-frame radiographs"
    part = str(ds.get("BodyPartExamined") or "").strip().upper()
    if part and part not in CHEST_PARTS:
        return f"BodyPartExamined is {part}, not a chest"
    view = str(ds.get("ViewPosition") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return f"lateral view (ViewPosition {view}); the models read frontal (PA or AP) chest X-rays"
    if rows * cols > max_pixels:
        return f"{cols}x{rows} px exceeds the node's limit of {max_pixels:,} pixels"
    if "PixelData" not in ds:
        return "no pixel data"
    syntax = uid.UID(transfer_syntax)
    try:
        readable = get_decoder(syntax).is_available
    except NotImplementedError:
        readable = False
    if not readable:
        return f"pixel data compressed as {syntax.name}, which no installed decoder reads; send it uncompressed"
    return None


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


class DicomNode:
    """A C-STORE / C-ECHO SCP that reads chest X-rays with a :class:`Predictor` and sends the results on.

    Args:
        predictor: the models.
        ae_title: this node's AE title; associations calling another title are rejected.
        port, host: where it listens (default: loopback only; ``0.0.0.0`` for every interface).
        forward: where the SEG, SR and SC of each reading are C-STOREd (None: nowhere).
        out: a folder for the DICOM results and a ``predictions.jsonl`` row per image (None: none).
        max_queue: objects received and waiting for the models, at most.
        report: send the report picture as a secondary capture (rendering it takes most of a second).
        max_pixels: larger images are refused from their header.
    """

    def __init__(
        self,
        predictor: Predictor,
        ae_title: str = "COVIDCXR",
        port: int = 11112,
        host: str = "127.0.0.1",
        forward: Destination | None = None,
        out: str | Path | None = None,
        max_queue: int = 4,
        report: bool = True,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if not 0 < len(ae_title) <= 16:
            raise ValueError(f"AE title {ae_title!r} must have 1 to 16 characters")
        if max_queue < 1:
            raise ValueError(f"the queue must hold at least one object, got max_queue={max_queue}")
        self.predictor, self.ae_title, self.port, self.host = predictor, ae_title, port, host
        self.forward, self.report, self.max_pixels = forward, report, max_pixels
        self.out = Path(out) if out is not None else None
        self.counts: Counter[str] = Counter()
        self.peak_waiting = 0  # the most objects seen waiting at once (never above max_queue)
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self._drop = threading.Event()
        self._worker: threading.Thread | None = None
        self._sentinel_sent = False
        self._server = None
        self._lock = threading.Lock()  # counts, and the predictions.jsonl of --out

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the port and start the model thread; returns at once."""
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            # Every syntax is taken, so that an unreadable one is refused with its reason, not at negotiation.
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        self._worker = threading.Thread(target=self._work, name="covidcxr-dicom-models", daemon=True)
        self._worker.start()
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]  # the port given, or the one chosen for port 0
        where = f"forwarding results to {self.forward}" if self.forward else "not forwarding (no --forward)"
        log.info("DICOM node %s listening on %s:%d; %s", self.ae_title, self.host, self.port, where)

    def stop(self, drop_queued: bool = False, timeout: float | None = None) -> None:
        """Close the port, then read what is queued (or drop it) and stop the model thread.

        Args:
            drop_queued: drop the objects still waiting instead of reading them.
            timeout: seconds to wait for the model thread (None: until it is done).
        """
        if drop_queued:
            self._drop.set()
        if not self._stopping.is_set():
            self._stopping.set()  # a C-STORE waiting for room is now answered 0xA700
            if self._server is not None:
                for assoc in self._server.active_associations:
                    assoc.abort()
                self._server.shutdown()  # no new associations
                self._server = None
        if self._worker is not None:
            if not self._sentinel_sent:  # a second call (a second Ctrl-C during the put) tries again
                self.queue.put(None)  # after the queued objects: the worker reads them first
                self._sentinel_sent = True
            self._worker.join(timeout)
            if self._worker.is_alive():
                return
            self._worker = None
        log.info("DICOM node %s stopped: %s", self.ae_title, self.summary())

    def drop_queued(self) -> None:
        """Drop the objects still waiting (a second Ctrl-C): the one being read is finished."""
        self._drop.set()

    def summary(self) -> str:
        """Counts so far, e.g. ``3 received, 2 read, 1 refused, 0 failed, 6 results forwarded`` (and ``N dropped``)."""
        c = self.counts
        dropped = f", {c['dropped']} dropped" if c["dropped"] else ""
        return (
            f"{c['received']} received, {c['read']} read, {c['refused']} refused, {c['failed']} failed{dropped}, "
            f"{c['forwarded']} results forwarded"
        )

    def join(self) -> None:
        """Wait until every object received so far has been read (tests and benchmarks)."""
        self.queue.join()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    # -- the SCP's handlers (one thread per association) --------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        log.info("C-ECHO from %s", _sender(event))
        return SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset | int:
        sender = _sender(event)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            sop_uid = str(ds.get("SOPInstanceUID", "?"))
            reason = screen(ds, event.context.transfer_syntax, self.max_pixels)
        except Exception as err:  # a data set pydicom cannot parse
            reason, sop_uid = f"the data set could not be parsed ({type(err).__name__}: {err})", "?"
        self._count("received")
        if reason is not None:
            self._count("refused")
            log.warning("refused %s from %s: %s", sop_uid, sender, reason)
            return _status(CANNOT_UNDERSTAND, reason)
        job = _Job(event.encoded_dataset(include_meta=True), sop_uid, sender)
        del ds
        while not self._stopping.is_set():
            try:
                self.queue.put(job, timeout=0.5)  # a full queue holds the sender's C-STORE: back-pressure
            except queue.Full:
                continue
            waiting = self.queue.qsize()
            with self._lock:
                self.peak_waiting = max(self.peak_waiting, waiting)
            log.info("received %s from %s (%d waiting)", sop_uid, sender, waiting)
            return SUCCESS
        self._count("refused")
        log.warning("refused %s from %s: the node is stopping", sop_uid, sender)
        return _status(OUT_OF_RESOURCES, "the node is stopping; send it again later")

    # -- the model thread ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            try:
                if job is None:
                    return
                if self._drop.is_set():
                    log.warning("dropped %s from %s: the node stopped before reading it", job.sop_instance_uid, job.sender)  # fmt: skip
                    self._count("dropped")
                    continue
                self._read(job)
            except Exception as err:  # nothing one object holds may stop the node
                self._count("failed")
                log.error("%s from %s: reading failed (%s: %s); the node goes on", job.sop_instance_uid, job.sender, type(err).__name__, err)  # fmt: skip
                log.debug("details", exc_info=True)
            finally:
                job = None
                self.queue.task_done()
                trim_heap()  # the image's pages go back: memory stays flat over a burst

    def _read(self, job: _Job) -> None:
        label = job.sop_instance_uid
        try:
            image = read_image(job.data, name=label, max_pixels=self.max_pixels)
        except ImageReadError as err:
            self._count("refused")
            log.warning("refused %s from %s: %s", label, job.sender, err.problem)
            return
        result = self.predictor.run([image])[0]
        result.path = label
        if not result.ok:
            self._count("refused")
            log.warning("refused %s from %s (%s): %s", label, job.sender, result.refusal_reason, result.error)
            return
        row = result.to_dict()
        report = png_bytes(write_report, result, image) if self.report else None
        results = dicom_results(read_header(job.data), result, row, report)
        del image, report
        if self.out is not None:
            row["dicom"] = results.save(self.out, label)
            with self._lock, open(self.out / "predictions.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
        sent = self._send(results, label) if self.forward is not None else 0
        self._count("read")
        probability = result.probabilities[result.prediction]
        log.info(
            "read %s from %s: %s (%.0f%%)%s; %d results sent in %.2f s",
            label,
            job.sender,
            result.prediction,
            100 * probability,
            ", uncertain" if result.uncertain else "",
            sent,
            time.perf_counter() - job.received,
        )

    def _send(self, results: DicomResults, label: str) -> int:
        """C-STORE the results to :attr:`forward`; returns how many were stored (failures are logged)."""
        dest = self.forward
        ae = AE(ae_title=self.ae_title)
        for sop_class, syntaxes in _RESULT_SYNTAXES.items():
            for syntax in syntaxes:  # one context each: an archive that takes JPEG-LS gets the SC compressed
                ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            self._count("failed")
            log.error("%s: could not send its results to %s (association rejected or no answer)", label, dest)
            return 0
        sent = 0
        try:
            for kind, ds in results.items():
                ds = _sendable(ds, assoc)
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code in (0x0000, 0xB000, 0xB006, 0xB007):  # success, or stored with a warning
                    sent += 1
                else:
                    code_text = "no answer" if code is None else f"status 0x{code:04X}"
                    log.error("%s: %s sent to %s was not stored (%s)", label, kind.upper(), dest, code_text)
        finally:
            assoc.release()
        self._count("forwarded", sent)
        return sent


def _sendable(ds: Dataset, assoc) -> Dataset:
    """``ds`` in a transfer syntax the peer accepted for its SOP class (decompressed if need be)."""
    accepted = {str(c.transfer_syntax[0]) for c in assoc.accepted_contexts if c.abstract_syntax == str(ds.SOPClassUID)}
    if str(ds.file_meta.TransferSyntaxUID) in accepted or not ds.file_meta.TransferSyntaxUID.is_compressed:
        return ds
    ds.decompress()
    return ds


def _sender(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title.strip()}@{requestor.address}"
