"""A made-up reading and a stand-in for the models, for tests of the DICOM plumbing that need no weights."""

from __future__ import annotations

import time

import numpy as np

from covidcxr.infer import Result

MODELS = {
    "lungs": {"name": "unet_mobilenetv2_lungs", "sha256": "a" * 64},
    "diagnosis": {"name": "source_blind_diagnosis", "sha256": "b" * 64},
    "lesions": {"name": "unet_mobilenetv2_lesions", "sha256": "c" * 64},
    "severity": {"name": "severity_linear", "sha256": "d" * 64},
}


def fake_result(shape: tuple[int, int], path: str = "scan.dcm") -> Result:
    """A reading with every field the DICOM results use: lungs, two lesion maps, findings, severity."""
    h, w = shape
    lungs = np.zeros(shape, bool)
    lungs[h // 5 : -h // 5, w // 8 : -w // 8] = True
    lesions = np.zeros((2, 256, 256), bool)
    lesions[0, 120:200, 40:100] = True  # ground-glass in the (image-)left lung
    zones = np.zeros((256, 256), np.uint8)
    probabilities = {"COVID-19": 0.61, "Other pneumonia": 0.24, "No finding": 0.15}
    findings = {
        "airspace_opacity": {"present": True, "probability": 0.85},
        "geographic_extent": 3.1,
        "opacity": 2.2,
        "lesion_share": 0.12,
        "covid_pattern": {"score": 0.72, "bilateral": 0.3, "peripheral": 0.8, "lower_zone": 0.6},
    }
    brixia = {"A": 0.5, "B": 1.0, "C": 2.0, "D": 0.0, "E": 1.5, "F": 2.5, "global": 7.5}
    severity = {
        "geographic_extent": 3.1,
        "opacity": 2.2,
        "brixia": brixia,
        "lesions": {
            "ground-glass": {"right_lung": 0.2, "left_lung": 0.05},
            "consolidation": {"right_lung": 0.01, "left_lung": 0.0},
        },
    }
    return Result(
        path=path,
        probabilities=probabilities,
        prediction="COVID-19",
        uncertain=True,
        uncertain_reason="test",
        findings=findings,
        severity=severity,
        gate_probability=0.97,
        model=MODELS,
        lung_mask=lungs,
        lesions=lesions,
        zones=zones,
    )


class FakePredictor:
    """The :class:`covidcxr.infer.Predictor` interface without models (:func:`fake_result` for each image).

    Args:
        delay: seconds each ``run`` sleeps, to fill the node's queue.
    """

    models = MODELS

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls = delay, 0

    def run(self, images: list[np.ndarray]) -> list[Result]:
        self.calls += 1
        time.sleep(self.delay)
        return [fake_result(im.shape) for im in images]
