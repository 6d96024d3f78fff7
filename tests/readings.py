"""One typical COVID-19 reading's findings and RSNA category, for the tests of what a person reads.

The report, the web page and the DICOM SR all word the same fields; each test varies what it checks.
"""

from __future__ import annotations

TYPICAL = {
    "code": "typical",
    "label": "Typical appearance",
    "reasons": ["bilateral, peripheral and lower-zone predominant opacities"],
    "cannot_see": "pleural effusion, pneumothorax and cavitation are not measured by these models",
}


def findings(probability: float = 0.71, threshold: float = 0.7, extent: float = 3.4, **pattern: float) -> dict:
    """The findings summary of a reading called disease at ``probability`` against ``threshold``."""
    return {
        "airspace_opacity": {"present": probability >= threshold, "probability": probability, "threshold": threshold},
        "geographic_extent": extent,
        "opacity": 2.0,
        "lesion_share": 0.2,
        "covid_pattern": {"score": 0.58, "bilateral": 0.1, "peripheral": 0.7, "lower_zone": 0.5, **pattern},
    }
