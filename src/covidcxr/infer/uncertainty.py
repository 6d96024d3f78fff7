"""When a reading says it is unsure (the rule of docs/experiments/uncertainty.md, thresholds from the spec)."""

from __future__ import annotations

#: The line of the model card's caveat that every report and the page carry.
CAVEAT = (
    "Research use only. Trained on public archives where each class comes from its own sources; "
    "on hospitals it never saw, its COVID-19 reading is weak (see MODEL_CARD.md)."
)


#: The rules of docs/experiments/uncertainty.md, first match wins.
RULES = ("low top probability", "findings against No finding", "pneumonia without opacity")


def uncertain_rule(prediction: str, top: float, extent: float, lesion_share: float, thresholds: dict) -> str | None:
    """Which rule (a name in :data:`RULES`) marks a reading uncertain, or None (also when the spec holds no thresholds)."""
    if not thresholds:
        return None
    if top < thresholds["min_top_probability"]:
        return RULES[0]
    if prediction == "No finding" and extent > thresholds["no_finding_max_extent"]:
        return RULES[1]
    if prediction != "No finding" and lesion_share == 0 and extent < thresholds["pneumonia_min_extent"]:
        return RULES[2]
    return None


def uncertain_reason(prediction: str, top: float, extent: float, lesion_share: float, thresholds: dict) -> str | None:
    """Why a reading is uncertain, in words, or None when it is not (or the spec holds no thresholds)."""
    rule = uncertain_rule(prediction, top, extent, lesion_share, thresholds)
    if rule == RULES[0]:
        t = thresholds["min_top_probability"]
        if t >= 1.0:
            return "on validation no reading of this model was confident enough to be trusted alone"
        return f"the top probability {top:.0%} is below {t:.0%}, under which validation readings were often wrong"
    if rule == RULES[1]:
        return (
            f"the severity scores show opacity (geographic extent {extent:.1f}/8) "
            "that normal films rarely have, yet the diagnosis reads No finding"
        )
    if rule == RULES[2]:
        return (
            f"the diagnosis reads {prediction}, but no lesion and almost no opacity (extent {extent:.1f}/8) were found"
        )
    return None
