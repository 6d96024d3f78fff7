"""The answers of the API as pydantic models: they document /openapi.json and check every answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .overlays import DISPLAY_SIDE


class Error(BaseModel):
    error: str = Field(description="What was wrong with the request, and how to fix it; one sentence.")


class ModelInfo(BaseModel):
    name: str
    sha256: str


class Health(BaseModel):
    status: Literal["ok"]
    models: dict[str, ModelInfo] = Field(
        description="Name and sha256 of each weight file loaded (lungs, diagnosis, gate, lesions, severity)."
    )
    backend: str | None = Field(default=None, description="Where the models run: torch or onnxruntime.")


class PNG(BaseModel):
    png_base64: str = Field(description="A PNG file, base64-encoded.")


class Brixia(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    A: float
    B: float
    C: float
    D: float
    E: float
    F: float
    global_: float = Field(alias="global", description="Sum of the six zones, 0-18.")


class LungShares(BaseModel):
    right_lung: float
    left_lung: float


class Severity(BaseModel):
    geographic_extent: float = Field(description="0-8 (both lungs, 0-4 each).")
    opacity: float = Field(description="0-6 (both lungs, 0-3 each).")
    brixia: Brixia = Field(
        description="Brixia score per zone, 0-3: A-C the patient's right lung top to bottom, D-F the left lung."
    )
    lesions: dict[str, LungShares] = Field(
        description="Share of each lung covered by each lesion type (ground-glass, consolidation)."
    )


class AirspaceOpacity(BaseModel):
    present: bool = Field(description="probability at or above threshold: the headline's disease / No finding decision")
    probability: float = Field(description="P(pneumonia of any kind) = 1 - P(No finding).")
    threshold: float = Field(
        default=0.5, description="The operating point on P(abnormal) (docs/experiments/operating-point.md)."
    )


class CovidPattern(BaseModel):
    score: float = Field(description="P(COVID-19 | pneumonia) = P(COVID-19) / (P(COVID-19) + P(Other pneumonia)).")
    bilateral: float = Field(description="Lesion share of the less affected lung.")
    peripheral: float = Field(description="Share of lesion pixels in the lateral half of each lung.")
    lower_zone: float = Field(description="Share of lesion pixels in the lower thirds (zones C, F).")


class Findings(BaseModel):
    airspace_opacity: AirspaceOpacity
    geographic_extent: float = Field(description="0-8, from the severity scorer.")
    opacity: float = Field(description="0-6, from the severity scorer.")
    lesion_share: float = Field(description="Share of the lungs with any lesion.")
    covid_pattern: CovidPattern


class Category(BaseModel):
    code: Literal["negative", "typical", "indeterminate", "atypical"]
    label: str = Field(description="The RSNA reporting category in words (docs/categories.md).")
    reasons: list[str] = Field(description="The measurements that decided it, in words.")
    cannot_see: str = Field(description="What the RSNA definitions name and these models do not measure.")


class UncertainReason(BaseModel):
    code: str = Field(description="One of covidcxr.infer.uncertainty.REASONS.")
    text: str = Field(description="The reason in words.")


class Overlays(BaseModel):
    lungs: PNG = Field(description="Lung outline in cyan (0, 229, 255), transparent elsewhere.")
    heatmap: PNG | None = Field(
        description="The heat map in the jet colour map, opacity growing with the value, transparent below 0.15; null without saliency."
    )
    lesions: PNG | None = Field(
        description="Ground-glass opacity in yellow (255, 200, 0), consolidation in red (230, 30, 30); null without the severity models."
    )
    zones: PNG | None = Field(
        description="Borders of the Brixia zones A-F inside the lungs, white; null without the severity models."
    )


class DicomFile(BaseModel):
    dicom_base64: str = Field(description="A DICOM Part 10 file, base64-encoded.")


class DicomResults(BaseModel):
    seg: DicomFile = Field(description="Segmentation: the lungs, then ground-glass opacity and consolidation.")
    sr: DicomFile = Field(description="Comprehensive SR (TID 1500): probabilities, prediction, findings, severity.")
    sc: DicomFile | None = Field(default=None, description="Secondary capture of the report picture.")


class Prediction(BaseModel):
    path: str = Field(description="The uploaded file's name.")
    probabilities: dict[str, float] = Field(
        description="COVID-19, Other pneumonia, No finding: calibrated, summing to 1."
    )
    prediction: str
    uncertain: bool | None = Field(
        default=None,
        description="True when the reading is unsure by the rule of docs/experiments/uncertainty.md; null when the model has no such rule.",
    )
    uncertain_reason: str | None = Field(
        default=None, description="The first of uncertain_reasons, in words; else null (kept for older clients)."
    )
    uncertain_reasons: list[UncertainReason] = Field(
        default_factory=list, description="Every reason the reading is uncertain, contradictions first; empty if none."
    )
    category: Category | None = Field(
        default=None, description="The RSNA reporting category from the findings (source-blind diagnosis models only)."
    )
    lung_mask: PNG = Field(description="0/255 lung mask at the input's pixel size.")
    heatmap: PNG | None = Field(
        description="Grad-CAM of the predicted class; null when the server runs with --no-saliency."
    )
    report: PNG | None = Field(
        description="The report: X-ray with lung outline, heat map, lesions and zones, probabilities."
    )
    image: PNG = Field(
        description=f"The image as read, grey, its longer side shrunk to at most {DISPLAY_SIDE} px: what the overlays are drawn on."
    )
    overlays: Overlays = Field(description="Transparent RGBA PNGs at the size of `image`, to stack over it.")
    model: dict[str, ModelInfo]
    backend: str | None = Field(default=None, description="Where the models ran: torch or onnxruntime.")
    warnings: list[str]
    lung_area: float
    gate_probability: float
    saliency_method: str | None = Field(default=None, description="What the heat map shows, e.g. Grad-CAM.")
    saliency_in_lungs: float | None = None
    findings: Findings | None = Field(
        default=None, description="What the diagnosis rests on (source-blind diagnosis models only)."
    )
    severity: Severity | None = None
    dicom: DicomResults | None = Field(
        default=None,
        description="With the form field dicom=1 and a DICOM upload: the results as DICOM files in the upload's study.",
    )
    dicom_note: str | None = Field(
        default=None, description="With dicom=1 and an upload that is not DICOM: why no DICOM results came."
    )


#: The refusals of ``POST /v1/predict``, for the ``responses`` of its route.
ERRORS = {
    400: {
        "model": Error,
        "description": "The body is not valid multipart/form-data, or the Host header names a host this server does not answer to.",
    },
    403: {"model": Error, "description": "Sent by a web page of another origin (the Origin header)."},
    408: {"model": Error, "description": "The upload stalled for longer than the server's read timeout."},
    413: {"model": Error, "description": "The upload, or the image's pixel count, is larger than the server's limit."},
    422: {
        "model": Error,
        "description": "No file, several files, an unreadable file, or an image refused as not a frontal chest X-ray.",
    },
    503: {"model": Error, "description": "The queue is full; try again after Retry-After seconds."},
}
