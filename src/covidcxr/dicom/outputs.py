"""A reading as DICOM objects a viewer shows beside the source image: SEG, SR and secondary capture.

For a DICOM source image, :func:`dicom_results` builds, with highdicom:

- a **Segmentation** (SOP class 1.2.840.10008.5.1.4.1.1.66.4, binary): segment 1 the lungs, then one
  segment per lesion type (ground-glass opacity, consolidation) when the reading has them, each with
  SNOMED CT / DICOM codes for what it is and where (the lung), referencing the source image;
- a **Comprehensive SR** holding a TID 1500 Measurement Report: the diagnosis probabilities, the
  prediction, the findings and the severity scores of the ``predictions.jsonl`` row, each measurement
  naming the model that made it (name, and its sha256 as the version), the group referencing the
  source image; a reporting ``category``, when the row has one, is a coded finding beside them;
- a **Secondary Capture** of the report picture (RGB).

All three go into the source's study (patient and study attributes copied by highdicom), each in a
new series with new UIDs, and each series description says "research use, not for clinical decisions".
Concepts that no public terminology names (the probability of a class, the Brixia zone scores) use the
local coding scheme :data:`SCHEME`, declared in each object's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__
from ..infer import Result

__all__ = ["RESEARCH_USE", "SCHEME", "DicomResults", "dicom_results", "dicom_row", "read_header", "source_note"]

log = logging.getLogger(__name__)

RESEARCH_USE = "research use, not for clinical decisions"
MANUFACTURER = "covidcxr"
#: The local coding scheme of the concepts without a public code.
SCHEME = "99COVIDCXR"
#: What the results copy or reference from the source's header.
REFERENCED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
#: Series numbers of the three result series (a viewer sorts them after the source's).
SERIES_NUMBERS = {"seg": 9701, "sr": 9702, "sc": 9703}
DESCRIPTIONS = {
    "seg": f"covidcxr lungs SEG; {RESEARCH_USE}",
    "sr": f"covidcxr reading SR; {RESEARCH_USE}",
    "sc": f"covidcxr report; {RESEARCH_USE}",
}

_UNIT = Code("1", "UCUM", "no units")
_SCORE = Code("{score}", "UCUM", "score")
_PRESENT, _ABSENT = Code("52101004", "SCT", "Present"), Code("2667000", "SCT", "Absent")
_YES, _NO = Code("373066001", "SCT", "Yes"), Code("373067005", "SCT", "No")
_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
_LUNG_CATEGORY = codes.SCT.AnatomicalStructure
_LESION_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
#: What each lesion map is, by the name :data:`covidcxr.data.severity.LESIONS` gives it.
LESION_CODES = {
    "ground-glass": Code("112120", "DCM", "Ground glass opacity"),
    "consolidation": Code("95436008", "SCT", "Lung consolidation"),
}
#: The diagnosis classes as codes of the local scheme (their meanings are the model's own labels).
CLASS_CODES = {
    "COVID-19": Code("COVID-19", SCHEME, "COVID-19 pneumonia"),
    "Other pneumonia": Code("OTHER-PNEUMONIA", SCHEME, "Other pneumonia"),
    "No finding": Code("NO-FINDING", SCHEME, "No finding"),
}
#: The concept names of the class probabilities.
PROBABILITY_CODES = {"COVID-19": "P-COVID-19", "Other pneumonia": "P-OTHER-PNA", "No finding": "P-NO-FINDING"}


def _local(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


PREDICTION = _local("PREDICTION", "Most probable class")
UNCERTAIN = _local("UNCERTAIN", "Reading marked uncertain")
CATEGORY = _local("CATEGORY", "Reporting category")
AIRSPACE = _local("AIRSPACE-OPACITY", "Airspace opacity")


@dataclass
class DicomResults:
    """The three objects of one reading (``sc`` is None without a report picture)."""

    seg: Dataset
    sr: Dataset
    sc: Dataset | None

    def items(self) -> list[tuple[str, Dataset]]:
        """``(kind, dataset)`` for each object built, kind one of ``seg``, ``sr``, ``sc``."""
        return [(k, ds) for k, ds in (("seg", self.seg), ("sr", self.sr), ("sc", self.sc)) if ds is not None]

    def save(self, out: Path, stem: str) -> dict[str, str]:
        """Write ``<stem>_seg.dcm``, ``_sr.dcm``, ``_sc.dcm`` into ``out``; returns their paths by kind."""
        files = {}
        for kind, ds in self.items():
            path = out / f"{stem}_{kind}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files[kind] = str(path)
        return files


def read_header(source: str | Path | bytes) -> Dataset | None:
    """The DICOM header of a file (no pixel data), or None when the file is not DICOM.

    Args:
        source: a path, or the bytes of a file.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    is_part10 = data[128:132] == b"DICM"
    if not is_part10 and data[:2] not in (b"\x02\x00", b"\x08\x00"):  # a bare data set starts with group 2 or 8
        return None
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=not is_part10)
    except (InvalidDicomError, ValueError, EOFError, OSError):
        return None
    return ds


def source_note(name: str) -> str:
    """The note for an input that is not DICOM: its PNGs and row were written, DICOM objects cannot be."""
    return (
        f"{name} is not a DICOM file, so no DICOM results were written for it (SEG, SR and secondary capture "
        "need the source's patient, study and image UIDs); send the DICOM original to get them"
    )


def dicom_results(source: Dataset, result: Result, row: dict, report_png: bytes | None = None) -> DicomResults:
    """The SEG, SR and (with a report picture) SC of a reading of ``source``.

    Args:
        source: the source image's data set (its header is enough: no pixel data is read).
        result: the reading (read, not refused), its masks at the source's Rows x Columns.
        row: its ``predictions.jsonl`` row (what the SR records, ``category`` included when present).
        report_png: the report picture, PNG bytes; None leaves out the secondary capture.

    Raises:
        ValueError: the reading was refused, or its masks do not match the source's size (one sentence).
    """
    if not result.ok:
        raise ValueError(f"{result.path}: a refused reading has no DICOM results ({result.error})")
    shape = (int(source.Rows), int(source.Columns))
    if result.lung_mask is None or result.lung_mask.shape != shape:
        raise ValueError(
            f"{result.path}: the lung mask is {None if result.lung_mask is None else result.lung_mask.shape}, "
            f"the DICOM image {shape}; DICOM results need the reading of this very image"
        )
    seg = segmentation(source, result)
    sr = report(source, row)
    sc = None if report_png is None else capture(source, report_png)
    return DicomResults(seg, sr, sc)


def _declare_scheme(ds: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "covidcxr local codes"
    item.CodingSchemeResponsibleOrganization = "covidcxr project"
    ds.CodingSchemeIdentificationSequence = [item]


def _finish(ds: Dataset, kind: str) -> Dataset:
    ds.SeriesDescription = DESCRIPTIONS[kind]
    return ds


def _algorithm(model: dict, family: Code = codes.cid7162.ArtificialIntelligence) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name=model["name"], family=family, version=model["sha256"][:64])


def lesion_masks(result: Result) -> dict[str, np.ndarray]:
    """The lesion maps at the image's size, inside the lungs, by lesion name (empty without severity)."""
    if result.lesions is None:
        return {}
    from ..data.severity import LESIONS

    return {name: _grow(m, result.lung_mask.shape) & result.lung_mask for name, m in zip(LESIONS, result.lesions)}


def _grow(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask on the model's grid at the image's size: Pillow's bilinear resize of the 0/255 map, cut half way."""
    grey = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    return np.asarray(grey.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)) > 127


def segmentation(source: Dataset, result: Result) -> Dataset:
    """The binary SEG: segment 1 the lungs, then the lesion types, each coded and linked to its model."""
    lungs_model = result.model.get("lungs", {"name": "lungs", "sha256": "unknown"})
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Lungs",
            segmented_property_category=_LUNG_CATEGORY,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm(lungs_model),
            tracking_uid=hd.UID(),
            tracking_id="lungs",
        )
    ]
    masks = [result.lung_mask]
    lesion_model = result.model.get("lesions", {"name": "lesions", "sha256": "unknown"})
    for name, mask in lesion_masks(result).items():
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=len(descriptions) + 1,
                segment_label=LESION_CODES[name].meaning,
                segmented_property_category=_LESION_CATEGORY,
                segmented_property_type=LESION_CODES[name],
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm(lesion_model),
                anatomic_regions=[codes.SCT.Lung],
                tracking_uid=hd.UID(),
                tracking_id=name,
            )
        )
        masks.append(mask)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(masks, axis=-1)[None],  # (frames=1, H, W, segments), bool
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=lungs_model["name"][:64],
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,  # a segment with nothing found is still a statement
        content_label="LUNGS",
        content_description="Lung and lesion masks (" + RESEARCH_USE + ")",
    )
    seg.PatientOrientation = source.get("PatientOrientation") or ""  # type 2C: the source's, or empty
    _declare_scheme(seg)
    return _finish(seg, "seg")


def _measure(name: Code, value: float, model: dict, unit: Code = _UNIT) -> hd.sr.Measurement:
    algorithm = hd.sr.AlgorithmIdentification(name=model["name"], version=model["sha256"][:64])
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)


def _code_value(text: str) -> str:
    """A code value (SH, 16 characters at most) from a label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").upper()[:16] or "UNNAMED"


def _measurements(row: dict) -> list[hd.sr.Measurement]:
    models = row.get("model") or {}
    unknown = {"name": "unknown", "sha256": "unknown"}
    diagnosis = models.get("diagnosis", unknown)
    out = [
        _measure(_local(PROBABILITY_CODES[c], f"Probability of {c}"), p, diagnosis)
        for c, p in row["probabilities"].items()
        if c in PROBABILITY_CODES
    ]
    findings = row.get("findings")
    if findings:
        pattern = findings["covid_pattern"]
        out.append(_measure(_local("P-OPACITY", "Probability of airspace opacity"), findings["airspace_opacity"]["probability"], diagnosis))  # fmt: skip
        out.append(_measure(_local("COVID-PATTERN", "COVID-19 pattern score"), pattern["score"], diagnosis))
        for key in ("bilateral", "peripheral", "lower_zone"):
            out.append(_measure(_local(f"LESION-{_code_value(key)}"[:16], f"Lesions {key.replace('_', ' ')}"), pattern[key], diagnosis))  # fmt: skip
        out.append(_measure(_local("LESION-SHARE", "Share of the lungs with lesions"), findings["lesion_share"], diagnosis))  # fmt: skip
    severity = row.get("severity")
    if severity:
        head = models.get("severity", unknown)
        out.append(_measure(_local("GEO-EXTENT", "Geographic extent score (0-8)"), severity["geographic_extent"], head, _SCORE))  # fmt: skip
        out.append(_measure(_local("OPACITY-SCORE", "Opacity score (0-6)"), severity["opacity"], head, _SCORE))
        for zone, value in severity["brixia"].items():
            label = "Brixia score (0-18)" if zone == "global" else f"Brixia zone {zone} score (0-3)"
            out.append(_measure(_local(f"BRIXIA-{zone.upper()}"[:16], label), value, head, _SCORE))
        lesions = models.get("lesions", unknown)
        for lesion, sides in severity.get("lesions", {}).items():
            for side, share in sides.items():
                meaning = f"Share of the {side.replace('_', ' ')} with {lesion}"
                out.append(_measure(_local(f"{_code_value(lesion)[:8]}-{_code_value(side)[:7]}", meaning), share, lesions))  # fmt: skip
    return out


def _evaluations(row: dict) -> list[hd.sr.QualitativeEvaluation]:
    out = []
    if row.get("prediction") in CLASS_CODES:
        out.append(hd.sr.QualitativeEvaluation(PREDICTION, CLASS_CODES[row["prediction"]]))
    if row.get("uncertain") is not None:
        out.append(hd.sr.QualitativeEvaluation(UNCERTAIN, _YES if row["uncertain"] else _NO))
    findings = row.get("findings")
    if findings:
        present = findings["airspace_opacity"]["present"]
        out.append(hd.sr.QualitativeEvaluation(AIRSPACE, _PRESENT if present else _ABSENT))
    category = row.get("category")
    if category:  # the reporting category, when the reading has one
        label = str(category["label"] if isinstance(category, dict) else category)
        out.append(hd.sr.QualitativeEvaluation(CATEGORY, _local(_code_value(label), label[:64])))
    return out


def report(source: Dataset, row: dict) -> Dataset:
    """The Comprehensive SR with the TID 1500 Measurement Report of a ``predictions.jsonl`` row."""
    models = row.get("model") or {}
    diagnosis = models.get("diagnosis", {"name": "unknown", "sha256": "unknown"})
    every_model = [f"{role}: {m['name']} sha256 {m['sha256']}" for role, m in models.items()]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="covidcxr reading"),
        # No finding type: the group holds the whole reading, whatever it found (the prediction says what).
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=diagnosis["name"], version=diagnosis["sha256"][:64], parameters=every_model
        ),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        measurements=_measurements(row),
        qualitative_evaluations=_evaluations(row),
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="covidcxr", manufacturer_name=MANUFACTURER, model_name=diagnosis["name"][:64]
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_CHEST_XRAY,
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=content[0],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    _declare_scheme(sr)
    return _finish(sr, "sr")


def capture(source: Dataset, report_png: bytes) -> Dataset:
    """The report picture as an RGB Secondary Capture image in the source's study."""
    rgb = np.asarray(Image.open(BytesIO(report_png)).convert("RGB"))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),  # emptied below: the picture is a page of panels, not one view
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=pydicom.uid.JPEGLSLossless,  # a tenth of the size, encoded in a tenth of a second
    )
    sc.PatientOrientation = ""  # type 2: present, empty
    sc.Laterality = ""  # type 2C: the picture shows both lungs
    sc.BurnedInAnnotation = "YES"  # the report draws the file name and the reading into the pixels
    sc.ImageComments = f"covidcxr report; {RESEARCH_USE}"
    return _finish(sc, "sc")


def dicom_row(source: str | Path | bytes, name: str, result: Result, row: dict, report_png: bytes | None) -> dict:
    """The DICOM results of a reading as ``{"dicom": DicomResults}``, else ``{"dicom_note": why there are none}``.

    A note, not an error: the input is not DICOM, its header lacks the UIDs the results reference, or
    highdicom does not take it. The reading itself stands either way.

    Args:
        source: the input file (path or bytes), whose header the results copy.
        name: the input's name, for the note.
        result, row: the reading and its ``predictions.jsonl`` row.
        report_png: the report picture (None: no secondary capture).
    """
    header = read_header(source)
    if header is None:
        return {"dicom_note": source_note(name)}
    missing = [key for key in REFERENCED if key not in header]
    if missing:
        return {
            "dicom_note": f"{name} is a DICOM file without {', '.join(missing)}, so DICOM results could not "
            "reference it; export it from the archive again (with its UIDs) to get them"
        }
    try:
        return {"dicom": dicom_results(header, result, row, report_png)}
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # an unusual header highdicom does not take
        log.info("%s: DICOM results failed", name, exc_info=True)
        return {"dicom_note": f"{name}: no DICOM results could be built from its header ({type(err).__name__}: {err})"}
