"""When a reading says it is unsure, and every reason why (the rule of docs/experiments/uncertainty.md).

:func:`uncertain_reasons` lists each reason that applies to one reading, contradictions first,
each a code (:data:`REASONS`) and a sentence; the thresholds come from the diagnosis spec's
``uncertainty`` field (fitted by ``covidcxr evaluate uncertainty``). A spec without them flags nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .zones import split_lungs

#: The line of the model card's caveat that every report and the page carry.
CAVEAT = (
    "Research use only. Trained on public archives where each class comes from its own sources; "
    "on hospitals it never saw, its COVID-19 reading is weak (see MODEL_CARD.md)."
)

#: Reason codes in the order a reading lists them: contradictions, then the decision, then the input.
REASONS = (
    "extent_against_no_finding",
    "disease_without_lesion",
    "near_operating_point",
    "low_resolution",
    "lung_outline",
    "gate_near_limit",
)
#: The shorter image side under which the input is low resolution when a spec names none: the diagnosis input size.
MIN_SIDE = 224
#: Lesion share under which no lesion was outlined (as covidcxr.infer.categories.ANY_LESION).
NO_LESION = 0.005


@dataclass(frozen=True)
class Signals:
    """What the rule reads of one reading (all from the Predictor's own outputs).

    Attributes:
        p_abnormal: 1 - P(No finding).
        threshold: the operating point on P(abnormal) the headline used (0.5 without one).
        disease: the headline called disease (COVID-19 or Other pneumonia).
        extent: geographic extent 0-8 from the severity scorer.
        lesion_share: share of the lungs with any lesion.
        min_side: the image's shorter side in its own pixels.
        outline: :func:`outline_facts` of the lung mask.
        gate_probability: P(frontal) of the input gate (None: no gate ran).
    """

    p_abnormal: float
    threshold: float
    disease: bool
    extent: float
    lesion_share: float
    min_side: int
    outline: dict
    gate_probability: float | None = None


def outline_facts(mask: np.ndarray) -> dict[str, float]:
    """Plausibility measures of a lung mask (H, W) bool: each low for an implausible outline.

    ``area``: share of the image inside the lungs; ``balance``: area of the smaller lung over the
    larger (0: one lung missing; a mask of one region is split at the image's midline); ``base``: height of the shorter lung over the taller, both measured
    from the top of the lungs (low: one lung cut at its base); ``height``: height of the lungs over
    their width (low: both cut at the base).
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return {"area": 0.0, "balance": 0.0, "base": 0.0, "height": 0.0}
    rows, cols = np.nonzero(mask)
    top = rows.min()
    right, left = _sides(mask)
    areas = sorted(float(s.sum()) for s in (right, left))
    heights = sorted((np.nonzero(s)[0].max() - top + 1) if s.any() else 0 for s in (right, left))
    return {
        "area": float(mask.mean()),
        "balance": areas[0] / max(areas[1], 1.0),
        "base": float(heights[0]) / max(float(heights[1]), 1.0),
        "height": float(rows.max() - top + 1) / float(cols.max() - cols.min() + 1),
    }


def _sides(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two lungs: the two largest regions; one region (one lung, or both touching) is cut at the image's midline."""
    if ndimage.label(mask)[1] >= 2:
        return split_lungs(mask)
    right, left = mask.copy(), mask.copy()
    right[:, mask.shape[1] // 2 :] = False
    left[:, : mask.shape[1] // 2] = False
    return right, left


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def uncertain_reasons(s: Signals, thresholds: dict) -> list[dict[str, str]]:
    """Every reason (``{"code", "text"}``, codes of :data:`REASONS` in that order) that marks a reading uncertain.

    Empty when none applies, and always empty for a spec without thresholds (or with those of the
    rule before 2026-12-06, which had no ``operating_margin``: refit with ``covidcxr evaluate uncertainty``).
    """
    if "operating_margin" not in thresholds:
        return []
    t = thresholds
    out = []
    if not s.disease and s.extent > t["no_finding_max_extent"]:
        out.append(
            (
                REASONS[0],
                f"the severity scores show opacity (geographic extent {s.extent:.1f} of 8) that normal films "
                "rarely have, yet the reading is No finding",
            )
        )
    if s.disease and s.lesion_share < NO_LESION and s.extent < t["pneumonia_min_extent"]:
        out.append(
            (REASONS[1], f"the reading is disease, but no lesion and almost no opacity (extent {s.extent:.1f} of 8)")
        )
    if abs(_logit(s.p_abnormal) - _logit(s.threshold)) < t["operating_margin"]:
        out.append(
            (
                REASONS[2],
                f"P(disease) {s.p_abnormal:.0%} is close to the decision threshold {s.threshold:.0%}: "
                "a small change would flip disease / No finding",
            )
        )
    if s.min_side < t.get("min_side", MIN_SIDE):
        out.append(
            (REASONS[3], f"low resolution: the image's shorter side is {s.min_side} px, below what the models read")
        )
    odd = _odd_outline(s.outline, t)
    if odd:
        out.append((REASONS[4], f"the lung outline looks implausible ({'; '.join(odd)}): check it before the reading"))
    if s.gate_probability is not None and s.gate_probability < t["min_gate_probability"]:
        out.append(
            (
                REASONS[5],
                f"the input gate barely took this as a frontal chest X-ray (P(frontal) {s.gate_probability:.0%})",
            )
        )
    return [{"code": code, "text": text} for code, text in out]


def _odd_outline(o: dict, t: dict) -> list[str]:
    odd = []
    if o["area"] < t["min_lung_area"]:
        odd.append(f"the lungs cover only {o['area']:.0%} of the image")
    if o["balance"] < t["min_lung_balance"]:
        odd.append(f"one lung is {o['balance']:.0%} the size of the other, or missing")
    if o["base"] < t["min_lung_base"] or o["height"] < t["min_lung_height"]:
        odd.append("a lung looks cut short at its base")
    return odd
