"""Diagnosis labels: one table from every dataset's finding to the three classes.

    COVID-19         COVID-19 pneumonia
    Other pneumonia  any other pneumonia: bacterial, viral (SARS, influenza, varicella), fungal
                     (Pneumocystis), lipoid, unspecified
    No finding       a normal radiograph

Rows whose finding is ``todo`` (unlabelled upstream) or does not say whether there is a
pneumonia (ARDS alone) are excluded; :func:`label_of` returns ``None`` for them.
"""

from __future__ import annotations

CLASSES = ("COVID-19", "Other pneumonia", "No finding")

#: (dataset, finding as written in its table) -> class. The README reproduces this table.
LABEL_TABLE: dict[tuple[str, str], str | None] = {
    ("covid-chestxray", "COVID-19"): "COVID-19",
    ("covid-chestxray", "COVID-19, ARDS"): "COVID-19",
    ("covid-chestxray", "SARS"): "Other pneumonia",
    ("covid-chestxray", "Pneumocystis"): "Other pneumonia",
    ("covid-chestxray", "Streptococcus"): "Other pneumonia",
    ("covid-chestxray", "Klebsiella"): "Other pneumonia",
    ("covid-chestxray", "Mycoplasma Bacterial Pneumonia"): "Other pneumonia",
    ("covid-chestxray", "Legionella"): "Other pneumonia",
    ("covid-chestxray", "E.Coli"): "Other pneumonia",
    ("covid-chestxray", "Bacterial"): "Other pneumonia",
    ("covid-chestxray", "Varicella"): "Other pneumonia",
    ("covid-chestxray", "Influenza"): "Other pneumonia",
    ("covid-chestxray", "Lipoid"): "Other pneumonia",
    ("covid-chestxray", "Pneumonia"): "Other pneumonia",
    ("covid-chestxray", "No Finding"): "No finding",
    ("covid-chestxray", "ARDS"): None,
    ("covid-chestxray", "todo"): None,
    ("nih-chestxray8", "Pneumonia"): "Other pneumonia",
    ("nih-chestxray8", "No Finding"): "No finding",
    ("kermany-pediatric", "Normal"): "No finding",
    ("kermany-pediatric", "Bacterial Pneumonia"): "Other pneumonia",
    ("kermany-pediatric", "Viral Pneumonia"): "Other pneumonia",
    # Hospital-source additions. NIH's labels are text-mined from reports (noisy, see data/nih.py);
    # "Consolidation" (without Pneumonia) is read as an airspace pneumonia, as radiologists
    # report lobar pneumonia; some are atelectasis or oedema mis-mined.
    ("nih-chestxray14", "Pneumonia"): "Other pneumonia",
    ("nih-chestxray14", "Consolidation"): "Other pneumonia",
    ("nih-chestxray14", "No Finding"): "No finding",
    ("hannover", "COVID-19"): "COVID-19",
    ("covid19-radiography", "COVID-19"): "COVID-19",
    ("covid19-radiography", "No Finding"): "No finding",
}

#: "Frontal": a source that records no view but holds frontal radiographs only (covid19-radiography).
FRONTAL_VIEWS = ("PA", "AP", "AP Supine", "AP Erect", "Frontal")


def label_of(dataset: str, finding: str) -> str | None:
    """Class of a finding, or ``None`` when the row is excluded.

    Newer upstream ieee8023 releases write findings as paths (``Pneumonia/Viral/COVID-19``,
    ``Pneumonia/Bacterial/Klebsiella``, ``No Finding``); those are mapped by their parts.

    Raises:
        KeyError: a finding the table does not know (add it to ``LABEL_TABLE``).
    """
    key = (dataset, finding.strip())
    if key in LABEL_TABLE:
        return LABEL_TABLE[key]
    parts = [p.strip() for p in finding.split("/")]
    if dataset == "covid-chestxray" and len(parts) > 1 and parts[0] == "Pneumonia":
        return "COVID-19" if "COVID-19" in parts else "Other pneumonia"
    raise KeyError(f"{dataset}: finding {finding!r} is not in covidcxr.data.labels.LABEL_TABLE")


def is_frontal_xray(record: dict) -> bool:
    """PA, AP or AP supine X-ray (laterals, CT and unknown views are not)."""
    return record.get("modality", "X-ray") == "X-ray" and record.get("view", "") in FRONTAL_VIEWS
