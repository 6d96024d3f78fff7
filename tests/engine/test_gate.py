"""The input gate: blank images, the gate model, its training data and refusal rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidcxr.engine.gate.images import HOSPITAL_MARKS, PHOTOS, augment_frontal, negative_images
from covidcxr.engine.gate.report import (
    contact_sheet,
    rate_with_ci,
    refusal_rates,
    refusal_table,
    source_totals,
    wilson_interval,
)
from covidcxr.engine.gate.train import KIND_LABELS, fit_intensity_check
from covidcxr.infer.gate import (
    INTENSITY_FACTS,
    REASONS,
    GateDecision,
    blank_refusal,
    decide,
    gate_records,
    intensity_distance,
    intensity_facts,
    seen_kinds,
)
from covidcxr.models import create_model, load_weights, save_weights
from covidcxr.models.gate import geometry
from covidcxr.models.weights import WeightSpec


def test_blank_images_are_refused():
    flat = blank_refusal(np.full((300, 300), 0.5, np.float32))
    assert (
        not flat.accepted and flat.reason == flat.check == "blank" and not flat.overridable
    )  # --no-gate reads no blank
    assert flat.describe() == "blank or near-uniform image (intensity spread 0.000); not a chest X-ray"
    faint = blank_refusal(np.random.default_rng(0).normal(0.5, 0.005, (300, 300)).astype(np.float32))
    assert faint.reason == "blank" and 0.004 < faint.score < faint.limit
    assert blank_refusal(np.random.default_rng(0).random((300, 300)).astype(np.float32)) is None


def test_geometry():
    mask = np.zeros((100, 200), bool)
    mask[20:80, 20:90] = True
    g = geometry(mask)
    assert np.isclose(g[0], mask.mean()) and g[1] == 0.0 and g[2] == 0.5
    mask[20:80, 110:180] = True
    assert np.isclose(geometry(mask)[1], 1.0)


def test_gate_model_round_trip(tmp_path):
    gate = create_model("frontal_gate", in_features=5)
    with torch.no_grad():
        gate.linear.weight.fill_(1.0)
        gate.mean.fill_(0.5)
    spec = WeightSpec(
        name="g",
        architecture="frontal_gate",
        task="gate",
        targets=["frontal"],
        input_size=(256, 256),
        normalization="per_image_zscore",
        file="g.pt",
        dtype="float32",
        model_kwargs={"in_features": 5},
    )
    loaded, _ = load_weights(save_weights(gate, spec, tmp_path))
    p = loaded.probability(np.ones((2, 2), np.float32), [np.ones((10, 10), bool)] * 2)
    assert p.shape == (2,) and np.allclose(
        p, gate.probability(np.ones((2, 2), np.float32), [np.ones((10, 10), bool)] * 2)
    )


def test_negatives_are_deterministic_non_blank_and_split_by_identity():
    a, b = negative_images("test"), negative_images("test")
    assert [n for n, _ in a] == [n for n, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert all(im.ndim == 2 and im.min() >= 0 and im.max() <= 1 for _, im in a)
    assert sum(blank_refusal(im) is None for _, im in a) > 0.9 * len(a)
    assert not set(PHOTOS["train"]) & set(PHOTOS["test"]) and not set(PHOTOS["train"]) & set(PHOTOS["val"])


def test_gate_records_and_rates(records):
    frontal, other = gate_records(records, "test")
    assert frontal and other
    assert all(
        r["view"] in ("PA", "AP", "AP Supine", "AP Erect", "Frontal") for r in frontal
    )  # Frontal: covid19-radiography records no view
    assert {r["dataset"] for r in frontal} == {
        "covid-chestxray",
        "nih-chestxray8",
        "kermany-pediatric",
        "hannover",
        "nih-chestxray14",
        "covid19-radiography",
    }
    assert all(r["modality"] == "CT" or r["view"] == "L" for r in other)
    rates = refusal_rates(
        decide(np.array([0.9, 0.2, 0.1, 0.05]), np.ones((4, 3)), None, _Spec(0.5, None)),
        np.array([1, 1, 0, 0]),
        ["nih:frontal", "nih:frontal", "lateral", "photo"],
    )
    assert (
        rates["false_refusal_frontal"] == 0.5
        and rates["refusal_lateral_ct"] == 1.0
        and rates["refusal_non_xray"] == 1.0
    )


def test_a_refusal_says_what_the_gate_saw_and_leaves_the_override_to_the_front_end():
    for code, words in REASONS.items():
        decision = GateDecision(False, code, "gate", 0.1, 0.1, 0.5)
        assert decision.overridable
        assert decision.describe() == f"not recognised as a frontal chest X-ray: {words} (gate probability 0.10 < 0.50)"
    assert (
        REASONS["lateral"] == "looks like a lateral view"
        and REASONS["ct"] == "looks like a CT slice"
        and REASONS["no_chest"] == "no chest found"
    )
    far = GateDecision(False, "ct", "intensity", 0.9, 9.25, 7.3)
    assert far.describe() == (
        "not recognised as a frontal chest X-ray: looks like a CT slice (its intensities inside and outside the "
        "lungs are unlike an X-ray's, as in a CT reconstruction: score 9.2 > 7.3)"
    )
    assert "--no-gate" not in far.describe() and far.overridable
    assert GateDecision(True, "frontal", None, 0.9, 0.9, 0.5).describe().startswith("recognised")


def _head(favoured: str) -> dict:
    """A reason head that always says ``favoured``."""
    n = 1 + 3 + len(INTENSITY_FACTS)
    return {
        "labels": list(KIND_LABELS),
        "mean": [0.0] * n,
        "scale": [1.0] * n,
        "coef": [[0.0] * n] * len(KIND_LABELS),
        "intercept": [5.0 if k == favoured else 0.0 for k in KIND_LABELS],
    }


def test_seen_kinds_word_the_head_and_tell_no_chest_from_photographs():
    image, mask = _chest(lung=0.2, tissue=0.7)
    facts, p = intensity_facts(image, mask)[None], np.array([0.1])
    geo, no_lungs = geometry(mask)[None], geometry(np.zeros_like(mask))[None]
    assert seen_kinds(p, geo, facts, _head("lateral")) == ["lateral"]
    assert seen_kinds(p, geo, facts, _head("CT")) == ["ct"]
    assert seen_kinds(p, geo, facts, _head("frontal")) == ["unsure"]
    assert seen_kinds(p, geo, facts, _head("other")) == ["photo"]  # lungs found, yet not an X-ray
    assert seen_kinds(p, no_lungs, facts, _head("other")) == ["no_chest"]
    assert seen_kinds(p, geo, facts, None) == ["unsure"]  # an older spec without the head


class _Spec:
    def __init__(self, threshold, check):
        self.threshold, self.intensity_check = threshold, check


def test_decide_refuses_by_gate_then_by_intensity_and_words_each_refusal():
    """The one decision rule: the linear gate first, then the intensity check; the reason head only words refusals."""
    image, mask = _chest(lung=0.5, tissue=0.5)
    facts = np.repeat(intensity_facts(image, mask)[None], 3, axis=0)
    geo = np.repeat(geometry(mask)[None], 3, axis=0)
    rng = np.random.default_rng(4)
    far = fit_intensity_check(facts[0] + 1.0 + rng.normal(0, 0.01, (200, len(INTENSITY_FACTS))))
    p = np.array([0.2, 0.9, 0.9])
    gate, intensity, _ = decide(p, geo, facts, _Spec(0.5, {**far, "kinds": _head("frontal")}))
    assert (gate.accepted, gate.check, gate.reason, gate.score, gate.limit) == (False, "gate", "unsure", 0.2, 0.5)
    # the intensity check alone refuses it; the head takes it for a frontal film, so it reads as a CT slice
    assert (intensity.accepted, intensity.check, intensity.reason) == (False, "intensity", "ct")
    assert intensity.score > intensity.limit == far["limit"] and intensity.probability == 0.9
    assert [d.reason for d in decide(p, geo, facts, _Spec(0.5, {**far, "kinds": _head("lateral")}))] == ["lateral"] * 3
    near = {**far, "mean": facts[0].tolist()}
    accepted = decide(p, geo, facts, _Spec(0.5, near))
    assert [d.accepted for d in accepted] == [False, True, True] and accepted[1].reason == "frontal"
    assert accepted[1].check is None and not accepted[1].overridable
    # a spec without an intensity check: the linear gate alone, and no facts needed
    assert [d.accepted for d in decide(p, geo, None, _Spec(0.5, None))] == [False, True, True]


def test_an_intensity_check_of_a_design_not_shipped_is_refused_not_misread():
    facts = np.random.default_rng(1).normal(0.5, 0.05, (100, len(INTENSITY_FACTS)))
    check = fit_intensity_check(facts)
    assert intensity_distance(facts[:2], check).shape == (2,)
    for extra in ({"crop": "film"}, {"agree": "kinds"}, {"kind": "classifier"}, {"facts": ["lung p10"]}):
        with pytest.raises(ValueError, match="not shipped"):
            intensity_distance(facts, {**check, **extra})


def test_augmentation_keeps_size_and_range():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:420]
    film = (0.4 + 0.3 * np.sin(xx / 17) * np.cos(yy / 23)).astype(np.float32)
    for marks in [(m,) for m in HOSPITAL_MARKS] + [HOSPITAL_MARKS]:
        for image in (film, film[:120, :90]):
            out = augment_frontal(image, rng, marks)
            assert out.shape == image.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1, marks
    a = augment_frontal(film, np.random.default_rng(5))
    assert np.array_equal(a, augment_frontal(film, np.random.default_rng(5))) and not np.array_equal(a, film)
    tubes = augment_frontal(film, rng, ("tubes",))
    assert (tubes > 0.8).mean() > (film > 0.8).mean()  # bright lines added
    with pytest.raises(ValueError, match="unknown marks"):
        augment_frontal(film, rng, ("surround",))  # tried for the v3 gate, not shipped


def test_wilson_interval_and_rates_per_kind():
    lo, hi = wilson_interval(0, 11)
    assert lo == 0.0 and np.isclose(hi, 0.2588, atol=1e-4)  # 0 of 11 still allows a quarter
    lo, hi = wilson_interval(5, 10)
    assert np.isclose(lo + hi, 1.0) and lo < 0.5 < hi
    assert np.isnan(wilson_interval(0, 0)[0])
    r = rate_with_ci(np.array([True, False, False, False]))
    assert r["n"] == 4 and r["refused"] == 1 and r["rate"] == 0.25 and r["ci"][0] < 0.25 < r["ci"][1]
    kinds = ["hannover:frontal"] * 3 + ["nih-chestxray8:frontal"] * 2 + ["lateral", "CT", "photo"]
    ok = GateDecision(True, "frontal", None, 0.9, 0.9, 0.5)
    decisions = [
        ok,
        GateDecision(False, "ct", "intensity", 0.9, 9.0, 7.0),
        GateDecision(False, "unsure", "gate", 0.2, 0.2, 0.5),
        ok,
        ok,
        GateDecision(False, "lateral", "gate", 0.1, 0.1, 0.5),
        GateDecision(False, "ct", "intensity", 0.9, 9.0, 7.0),
        GateDecision(False, "photo", "gate", 0.1, 0.1, 0.5),
    ]
    rates = refusal_rates(decisions, np.array([1, 1, 1, 1, 1, 0, 0, 0]), kinds)
    h = rates["per_kind"]["hannover:frontal"]
    assert (
        h["refused"] == 2
        and h["by_gate"] == 1
        and h["by_intensity_only"] == 1
        and h["reasons"] == {"ct": 1, "unsure": 1}
    )
    assert rates["per_kind"]["lateral"]["reasons"] == {"lateral": 1} and rates["lateral_ct"]["refused"] == 2
    table = refusal_table({"val": rates, "test": rates})
    assert "| hannover:frontal | 2/3 = 66.7% [" in table and table.splitlines()[0] == "| input | val | test |"
    totals = source_totals({"train": rates, "test": rates})
    assert totals["hannover"]["n"] == 6 and totals["hannover"]["refused"] == 4


def test_contact_sheet_shows_refused_images(tmp_path, fixtures):
    from PIL import Image

    items = [
        {
            "split": "val",
            "kind": "nih-chestxray8:frontal",
            "name": str(fixtures / "nih_00000710_003.png"),
            "p_frontal": 0.2,
            "check": "gate",
            "reason": "unsure",
        },
        {
            "split": "test",
            "kind": "lateral",
            "name": str(fixtures / "kermany_IM-0117-0001.jpeg") + "#variant1",
            "p_frontal": 0.9,
            "check": "accepted",
            "reason": "accepted",
        },
    ]
    path = contact_sheet(items, tmp_path / "sheet.png", columns=2)
    assert Image.open(path).size[0] > 300
    assert contact_sheet([], tmp_path / "none.png").is_file()


def _chest(lung: float, tissue: float, size: tuple[int, int] = (300, 400)) -> tuple[np.ndarray, np.ndarray]:
    image = np.full(size, tissue, np.float32)
    mask = np.zeros(size, bool)
    mask[50:250, 40:180] = mask[50:250, 220:360] = True
    image[mask] = lung
    return image + np.random.default_rng(0).normal(0, 0.01, size).astype(np.float32), mask


def test_intensity_facts_read_lungs_and_surroundings():
    image, mask = _chest(lung=0.2, tissue=0.7)
    f = intensity_facts(image, mask)
    assert f.shape == (len(INTENSITY_FACTS),) and f.dtype == np.float32
    assert abs(f[1] - 0.2) < 0.03 and abs(f[4] - 0.7) < 0.03 and abs(f[6] + 0.5) < 0.05
    assert np.allclose(
        intensity_facts(np.kron(image, np.ones((2, 2), np.float32)), np.kron(mask, np.ones((2, 2), bool))), f, atol=0.02
    )  # size-free
    boxed, boxed_mask = np.zeros((500, 400), np.float32), np.zeros((500, 400), bool)  # letterbox bands above and below
    boxed[100:400], boxed_mask[100:400] = image, mask
    assert np.allclose(intensity_facts(boxed, boxed_mask), f, atol=1e-6)


def test_intensity_check_refuses_what_lies_far_from_the_frontal_facts():
    rng = np.random.default_rng(1)
    facts = rng.normal(0.5, 0.05, (400, len(INTENSITY_FACTS)))
    check = fit_intensity_check(facts, percentile=99.0)
    assert check["facts"] == list(INTENSITY_FACTS) and set(check) == {
        "facts",
        "mean",
        "precision",
        "percentile",
        "limit",
    }
    assert np.isclose(np.mean(intensity_distance(facts, check) > check["limit"]), 0.01, atol=0.005)
    image, mask = _chest(lung=0.5, tissue=0.5)
    one = (np.array([0.9]), geometry(mask)[None], intensity_facts(image, mask)[None])
    assert decide(*one, _Spec(0.5, {}))[0].accepted  # an older spec without the check: off
    far = {**check, "mean": (intensity_facts(image, mask) + 1.0).tolist()}
    assert "intensities" in decide(*one, _Spec(0.5, far))[0].describe()
    near = {**check, "mean": intensity_facts(image, mask).tolist()}
    assert decide(*one, _Spec(0.5, near))[0].accepted


def test_shipped_gate_refuses_the_coronal_ct_reconstructions_it_once_let_through(records):
    """Validation coronal CTs the v1 linear gate scored frontal (p > 0.99) are refused, worded as CT slices."""
    from covidcxr.infer import Predictor
    from covidcxr.io import read_image

    _, other = gate_records(records, "val")
    coronal = [r for r in other if r["modality"] == "CT" and r["filename"] in ("16751_3_1.jpg", "16751_3_2.jpg")]
    assert len(coronal) == 2
    res = Predictor.load(saliency=False, severity=False).run([read_image(r["path"]) for r in coronal])
    assert all(r.refusal_reason == "ct" and REASONS["ct"] in r.error for r in res), [r.error for r in res]


def test_shipped_gate_spec_records_its_training_and_reason_head():
    """The shipped gate (split v2, issue 16): threshold from validation, test figures per source, the reason head."""
    import json

    from covidcxr.specs import sha256_file, shipped_spec_path

    path = shipped_spec_path("gate")
    spec = json.loads(path.read_text())
    assert spec["sha256"] == sha256_file(path.parent / spec["file"])
    assert spec["training"]["data"]["split_version"] == "v2" and "augment_frontal" in spec["training"]["augmentation"]
    assert set(spec["metrics"]["frontal_refused_per_source"]) == {
        "covid-chestxray",
        "covid19-radiography",
        "hannover",
        "kermany-pediatric",
        "nih-chestxray8",
        "nih-chestxray14",
    }
    head = spec["intensity_check"]["kinds"]
    assert head["labels"] == list(KIND_LABELS) and np.shape(head["coef"]) == (
        len(KIND_LABELS),
        1 + 3 + len(INTENSITY_FACTS),
    )


@pytest.mark.slow
def test_shipped_gate_accepts_hospital_films_and_words_lateral_refusals(records):
    """Validation: hannover's ICU films and the other new folders' films pass; lateral views are refused as lateral views."""
    from covidcxr.infer import Predictor
    from covidcxr.io import read_image

    frontal, other = gate_records(records, "val")
    films = [r for r in frontal if r["dataset"] == "hannover"] + [
        r for r in frontal if r["dataset"] in ("nih-chestxray14", "covid19-radiography")
    ][:20]
    lateral = [r for r in other if r["view"] == "L"]
    res = Predictor.load(saliency=False, severity=False).run([read_image(r["path"]) for r in films + lateral])
    assert sum(r.error is not None for r in res[: len(films)]) == 0
    assert [r.refusal_reason for r in res[len(films) :]] == ["lateral"] * len(lateral)


def test_predict_counts_refusals_by_reason(tmp_path, capsys):
    """An error row carries the refusal's reason code, and the run's summary counts refusals by reason."""
    import json

    from PIL import Image

    from covidcxr.cli import main

    Image.fromarray((np.random.default_rng(0).random((300, 400)) * 255).astype(np.uint8)).save(tmp_path / "noise.png")
    near_uniform = np.clip(np.random.default_rng(1).normal(128, 1.2, (300, 300)), 0, 255).astype(
        np.uint8
    )  # uniform ones fail to read
    Image.fromarray(near_uniform).save(tmp_path / "blank.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "noise.png"),
                str(tmp_path / "blank.png"),
                "--out",
                str(out),
                "-q",
                "--no-saliency",
                "--no-report",
            ]
        )
        == 2
    )
    rows = {Path(r["path"]).name: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert rows["blank.png"]["refusal_reason"] == "blank"
    noise = rows["noise.png"]
    assert (
        noise["refusal_reason"] in REASONS
        and REASONS[noise["refusal_reason"]] in noise["error"]
        and "--no-gate" in noise["error"]
    )
    assert f"2 refused (1 blank, 1 {noise['refusal_reason']})" in capsys.readouterr().err
