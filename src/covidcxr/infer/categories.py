"""The RSNA reporting category of a reading, from its findings by the published definitions (no learning).

The RSNA expert consensus for reporting COVID-19 on chest radiographs (Litmanovich et al.,
J Thorac Imaging 2020; the four study labels of the SIIM-FISABIO-RSNA COVID-19 challenge)
sorts a film into one of four categories. :func:`rsna_category` applies them to what the
models measure (docs/categories.md gives every number and its reason):

- *negative for pneumonia*: no airspace opacity, by the same decision as the headline's
  disease / No finding (P(abnormal) at the spec's operating point).
- *typical appearance*: opacity that is bilateral (the less affected lung has lesions on at
  least :data:`BILATERAL` of its area), peripheral-predominant (at least :data:`PERIPHERAL` of
  the lesion pixels in the lateral half of each lung; an even spread puts half there) and
  lower-zone predominant (at least :data:`LOWER` of them in the lower thirds; an even spread
  puts a third there).
- *atypical appearance*: of the consensus's atypical findings the models see only lobar-like
  consolidation: one lung with consolidation on at least :data:`LOBAR_CONSOLIDATION` of its
  area, as much consolidation as ground-glass, and the other lung almost clear (less than
  :data:`CLEAR` of it). They cannot see the others (:data:`CANNOT_SEE`).
- *indeterminate appearance*: opacity without the typical distribution (unilateral, central
  or upper/middle-zone predominant), or opacity read with no lesion outlined to place it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .findings import FACTS

#: The four categories: code -> the label a report carries.
CATEGORIES = {
    "negative": "Negative for pneumonia",
    "typical": "Typical appearance",
    "indeterminate": "Indeterminate appearance",
    "atypical": "Atypical appearance",
}
#: Bilateral: lesion share of the less affected lung at least this (5% of a lung: about 15% of one zone).
BILATERAL = 0.05
#: Peripheral-predominant: share of lesion pixels in the lateral half of each lung at least this (even spread: 0.5).
PERIPHERAL = 0.55
#: Lower-zone predominant: share of lesion pixels in the lower thirds (zones C, F) at least this (even spread: 1/3).
LOWER = 0.40
#: Below this lesion share of the lungs, no lesion is outlined to place the opacity.
ANY_LESION = 0.005
#: Lobar-like consolidation: consolidation on at least this share of one lung ...
LOBAR_CONSOLIDATION = 0.10
#: ... while the other lung has lesions on less than this share of it.
CLEAR = 0.02
#: What the consensus calls atypical and these models cannot see: said with every category.
CANNOT_SEE = (
    "pleural effusion, pneumothorax, cavitation, a solitary nodule or mass, diffuse tiny nodules "
    "and the pattern of pulmonary oedema are not measured by these models"
)


def _facts(facts: np.ndarray | Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    if isinstance(facts, Mapping):
        return {k: float(v) for k, v in facts.items()}
    values = np.asarray(facts, np.float64).ravel()
    if len(values) != len(FACTS):
        raise ValueError(f"expected the {len(FACTS)} finding facts of covidcxr.infer.findings.FACTS, got {len(values)}")
    return dict(zip(FACTS, values.tolist(), strict=True))


def _lobar_consolidation(f: dict[str, float]) -> str | None:
    """The side of a unilateral, consolidation-led opacity (``right``/``left``), else None."""
    for side, other in (("right", "left"), ("left", "right")):
        cons, ggo = f[f"consolidation_{side}_lung"], f[f"ground-glass_{side}_lung"]
        rest = max(f[f"consolidation_{other}_lung"], f[f"ground-glass_{other}_lung"])
        if cons >= LOBAR_CONSOLIDATION and cons >= ggo and rest < CLEAR:
            return side
    return None


def rsna_category(facts: np.ndarray | Mapping[str, float] | Sequence[float], abnormal: bool) -> dict:
    """The RSNA category of one reading.

    Args:
        facts: the image's finding facts, (len(FACTS),) in the order of :data:`covidcxr.infer.findings.FACTS`
            or a mapping by name.
        abnormal: the headline's first decision: airspace disease present (P(abnormal) at the operating point).

    Returns:
        ``{"code", "label", "reasons", "cannot_see"}``: ``code`` a key of :data:`CATEGORIES`, ``label`` its
        words, ``reasons`` the measurements that decided it (sentences), ``cannot_see`` what the models
        do not measure.
    """
    f = _facts(facts)
    code, reasons = _decide(f, abnormal)
    return {"code": code, "label": CATEGORIES[code], "reasons": reasons, "cannot_see": CANNOT_SEE}


def _decide(f: dict[str, float], abnormal: bool) -> tuple[str, list[str]]:
    if not abnormal:
        return "negative", ["no airspace opacity at the operating point of the disease / No finding decision"]
    if f["lesion_share"] < ANY_LESION:
        return "indeterminate", ["opacity is read from the scores, but no lesion is outlined to show its distribution"]
    bilateral = f["bilateral"] >= BILATERAL
    peripheral = f["peripheral"] >= PERIPHERAL
    lower = f["lower_zone"] >= LOWER
    where = (
        f"{f['peripheral']:.0%} of the lesion area in the outer half of the lungs, "
        f"{f['lower_zone']:.0%} in the lower zones, {f['bilateral']:.0%} of the less affected lung involved"
    )
    if bilateral and peripheral and lower:
        return "typical", [f"bilateral, peripheral and lower-zone predominant opacities ({where})"]
    side = _lobar_consolidation(f)
    if side is not None:
        share = f[f"consolidation_{side}_lung"]
        return "atypical", [
            f"consolidation on {share:.0%} of the {side} lung with the other lung almost clear (lobar-like consolidation)"
        ]
    missing = []
    if not bilateral:
        missing.append("unilateral (or nearly so)")
    if not peripheral:
        missing.append("not peripheral-predominant (central or diffuse)")
    if not lower:
        missing.append("not lower-zone predominant (upper or middle zones)")
    return "indeterminate", [f"opacity without the typical distribution: {', '.join(missing)} ({where})"]
