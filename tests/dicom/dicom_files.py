"""Small DICOM files made at test time from the PNG/JPEG fixtures: nothing large is committed.

Also imported by ``benchmarks/dicom_node.py`` (its folder is put on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

FIXTURES = Path(__file__).parents[1] / "fixtures"
CHEST = FIXTURES / "ieee8023_2cd63b76.jpg"
CLASSES = {
    "DX": uid.DigitalXRayImageStorageForPresentation,
    "CR": uid.ComputedRadiographyImageStorage,
    "CT": uid.CTImageStorage,
}


def radiograph(
    picture: str | Path = CHEST,
    *,
    modality: str = "DX",
    body_part: str = "CHEST",
    frames: int = 1,
    patient_id: str = "CXR-TEST-1",
    study_uid: str | None = None,
    max_side: int = 512,
    side: int | None = None,
) -> Dataset:
    """A picture wrapped as a DICOM image of ``modality`` (DX, CR or CT), 12 bits stored, explicit VR little endian.

    Args:
        picture: a PNG or JPEG file.
        modality: DX (Digital X-Ray for presentation), CR or CT: the SOP class follows.
        body_part: BodyPartExamined.
        frames: more than one makes a multi-frame object (the same picture repeated).
        patient_id: PatientID.
        study_uid: StudyInstanceUID (default: a new one).
        max_side: the picture is shrunk so its longer side is at most this (small files, fast tests).
        side: instead, resize the picture so its longer side is this (a detector-sized image for benchmarks).
    """
    img = Image.open(picture).convert("L")
    if side is not None:
        f = side / max(img.size)
        img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BICUBIC)
    else:
        img.thumbnail((max_side, max_side))
    pixels = (np.asarray(img, np.uint16) * 16).astype(np.uint16)  # 12 bits stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or uid.generate_uid()
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Chest", patient_id, "19600101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200401", "101500", "1", "ACC1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality, ds.BodyPartExamined, ds.Manufacturer = modality, body_part, "test"
    ds.ContentDate, ds.ContentTime = "20200401", "101500"
    ds.PatientOrientation = ["L", "F"] if modality != "CT" else ""
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ViewPosition = "PA"
        ds.ImagerPixelSpacing = [0.5, 0.5]
        ds.BurnedInAnnotation, ds.DetectorType, ds.PixelIntensityRelationship = "NO", "SCINTILLATOR", "LOG"
        ds.PixelIntensityRelationshipSign, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 1, 0, 1, "US"
        ds.LossyImageCompression = "00"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if modality == "CR":
        ds.ViewPosition = "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.repeat(pixels[None], frames, axis=0)
    ds.PixelData = pixels.tobytes()
    return ds


def undecodable(picture: str | Path = CHEST) -> Dataset:
    """A DX radiograph whose pixel data claims MPEG-4 AVC/H.264, a transfer syntax no image reader here decodes."""
    ds = radiograph(picture)
    ds.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + bytes(64)])
    ds["PixelData"].VR = "OB"
    return ds


def write(ds: Dataset, path: str | Path) -> Path:
    """Save as a DICOM Part 10 file (preamble and file meta)."""
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
