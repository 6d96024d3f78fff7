"""The report PNG a person reads: twice the old resolution, terms spelled out, the caveat and the models on it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from covidcxr.infer import Result
from covidcxr.infer.uncertainty import CAVEAT
from covidcxr.report import report_notes, save_report

MODELS = {"lungs": {"name": "unet_mobilenetv2_lungs", "sha256": "05e35989" + "0" * 56}}


def _result(**kw) -> Result:
    image = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[60:240, 40:220] = True
    base = dict(
        path="scan.png",
        probabilities={"COVID-19": 0.47, "Other pneumonia": 0.28, "No finding": 0.25},
        prediction="COVID-19",
        model=MODELS,
        lung_mask=mask,
        heatmap=image * mask,
        saliency_in_lungs=1.0,
        saliency_method="lesion evidence",
    )
    return Result(**{**base, **kw}), image


def test_report_is_at_least_twice_the_old_resolution(tmp_path):
    res, image = _result()
    save_report(tmp_path / "r.png", image, res)
    w, h = Image.open(tmp_path / "r.png").size
    assert w >= 2 * 945 and h >= 2 * 351  # the report of the previous release: 945 x 351 px


def test_notes_spell_out_uncertainty_severity_models_and_the_caveat():
    sev = {
        "geographic_extent": 5.0,
        "opacity": 3.5,
        "brixia": {**dict.fromkeys("ABCDEF", 1.0), "global": 6.0},
        "lesions": {"ground-glass": {"right_lung": 0.1, "left_lung": 0.16}},
    }
    res, _ = _result(uncertain=True, uncertain_reason="the top probability 47% is below 80%", severity=sev)
    notes = "\n".join(report_notes(res))
    assert "Uncertain: the top probability 47% is below 80%" in notes
    assert "geographic extent 5.0 of 8" in notes and "opacity 3.5 of 6" in notes and "Brixia score 6.0 of 18" in notes
    assert "unet_mobilenetv2_lungs (05e35989)" in notes and "covidcxr " in notes
    assert CAVEAT in notes
    certain, _ = _result(uncertain=False)
    assert "Uncertain" not in "\n".join(report_notes(certain))


def test_headline_leads_with_the_category_and_the_finding_then_the_probabilities():
    from covidcxr.report import headline_lines
    from readings import TYPICAL
    from readings import findings as typical_findings

    findings = typical_findings(probability=0.75, threshold=0.62, extent=4.25, score=0.64)
    category = {**TYPICAL, "reasons": ["bilateral"], "cannot_see": "effusion"}
    reasons = [{"code": "low_resolution", "text": "low resolution"}, {"code": "lung_outline", "text": "odd outline"}]
    res, _ = _result(findings=findings, category=category, uncertain=True, uncertain_reasons=reasons)
    first, second = headline_lines(res)
    assert first == "Typical appearance: airspace opacity, geographic extent 4.2 of 8"
    assert "P(disease) 75% (called at 62%)" in second and "P(COVID-19 | disease) 64%, near chance" in second
    assert second.endswith("UNCERTAIN")
    notes = report_notes(res)
    assert notes[:2] == ["Uncertain: low resolution.", "Uncertain: odd outline."]  # every reason, in order
    assert any(n.startswith("Typical appearance (RSNA category): bilateral") for n in notes)
    assert any("Not measured: effusion" in n for n in notes)
    normal = {**findings, "airspace_opacity": {"present": False, "probability": 0.2, "threshold": 0.62}}
    res, _ = _result(findings=normal, category={**category, "label": "Negative for pneumonia"})
    assert headline_lines(res)[0] == "Negative for pneumonia: no airspace opacity called (geographic extent 4.2 of 8)"
