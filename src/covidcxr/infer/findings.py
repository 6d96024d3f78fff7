"""Findings behind a diagnosis, from the severity and lesion outputs (NumPy, no PyTorch).

Stage 2's source-blind design reads the lungs through findings that can be learned without
knowing where an image comes from: airspace opacity and its extent (the severity and lesion
models, learned inside covid-chestxray from expert scores) and the distribution that marks
the COVID-19 pattern in radiology reports (bilateral, peripheral, lower-zone predominant).
:func:`finding_facts` turns one image's severity result into the numbers the diagnosis heads
read; their names are :data:`FACTS`.
"""

from __future__ import annotations

import numpy as np

from ..data.severity import LESIONS, ZONES
from .zones import split_lungs

#: The severity outputs read, then the pattern facts computed here. Zones A-C: right lung.
FACTS = (
    "geographic_extent",
    "opacity",
    *(f"brixia_{z}" for z in ZONES),
    *(f"{name}_{side}" for name in LESIONS for side in ("right_lung", "left_lung")),
    "lesion_share",  # share of the lungs with any lesion
    "bilateral",  # lesion share of the less affected lung
    "peripheral",  # share of lesion pixels in the lateral half of each lung
    "lower_zone",  # share of lesion pixels in the lower thirds (zones C, F)
)


def _pattern(lesions: np.ndarray, lungs: np.ndarray, zones: np.ndarray) -> tuple[float, float, float, float]:
    """(lesion share, bilateral, peripheral, lower zone) of one image on the lung model's grid."""
    any_lesion = np.asarray(lesions, bool).any(axis=0) & lungs
    n = int(any_lesion.sum())
    share = n / max(int(lungs.sum()), 1)
    right, left = split_lungs(lungs)
    sides = [float((any_lesion & s).sum()) / max(int(s.sum()), 1) for s in (right, left)]
    if n == 0:
        return share, min(sides), 0.0, 0.0
    lateral = np.zeros_like(lungs)
    for lung, outer_is_low_x in ((right, True), (left, False)):
        cols = np.nonzero(lung)[1]
        if len(cols):
            mid = np.median(cols)
            x = np.arange(lungs.shape[1])[None, :]
            lateral |= lung & ((x < mid) if outer_is_low_x else (x > mid))
    lower = np.isin(zones, (3, 6))
    return share, min(sides), float((any_lesion & lateral).sum()) / n, float((any_lesion & lower).sum()) / n


def finding_facts(severity: dict, lesions: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """The :data:`FACTS` of one image, float32 (len(FACTS),).

    Args:
        severity: the ``severity`` dict of :meth:`covidcxr.infer.SeverityScorer.score`.
        lesions: its ``lesions`` (len(LESIONS), S, S) bool inside the lungs.
        zones: its ``zones`` (S, S) uint8 (0 outside the lungs, 1-6 for zones A-F).
    """
    lungs = np.asarray(zones) > 0
    head = [severity["geographic_extent"], severity["opacity"], *(severity["brixia"][z] for z in ZONES)]
    shares = [severity["lesions"][name][side] for name in LESIONS for side in ("right_lung", "left_lung")]
    return np.array([*head, *shares, *_pattern(lesions, lungs, zones)], np.float32)


#: At or above this P(abnormal), airspace opacity is reported as present (a spec without an operating point).
OPACITY_PRESENT = 0.5


def findings_summary(probabilities: dict[str, float], facts: np.ndarray, threshold: float = OPACITY_PRESENT) -> dict:
    """The ``findings`` object of a result: what the diagnosis rests on, in the model's own terms.

    ``airspace_opacity``: P(pneumonia of any kind) = 1 - P(No finding), and whether it passes
    ``threshold`` (the spec's operating point, else :data:`OPACITY_PRESENT`; the headline's
    disease / No finding decision); ``covid_pattern``: P(COVID-19 | pneumonia) = P(COVID-19) /
    (P(COVID-19) + P(Other pneumonia)), with the distribution facts it reads (shares of the
    lesion pixels); ``geographic_extent`` (0-8) and ``opacity`` (0-6) from the severity scorer.
    """
    f = dict(zip(FACTS, (float(v) for v in facts)))
    p_abn = 1.0 - probabilities["No finding"]
    covid, other = probabilities["COVID-19"], probabilities["Other pneumonia"]
    return {
        "airspace_opacity": {
            "present": bool(p_abn >= threshold),
            "probability": round(p_abn, 4),
            "threshold": round(threshold, 4),
        },
        "geographic_extent": round(f["geographic_extent"], 2),
        "opacity": round(f["opacity"], 2),
        "lesion_share": round(f["lesion_share"], 4),
        "covid_pattern": {
            "score": round(covid / max(covid + other, 1e-12), 4),
            "bilateral": round(f["bilateral"], 4),
            "peripheral": round(f["peripheral"], 4),
            "lower_zone": round(f["lower_zone"], 4),
        },
    }
