"""The input gate: blank images, the gate model, its training data and refusal rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from covidcxr.engine.gate.images import ALL_MARKS, HOSPITAL_MARKS, PHOTOS, augment_frontal, negative_images
from covidcxr.engine.gate.report import (
    contact_sheet,
    rate_with_ci,
    refusal_rates,
    refusal_table,
    source_totals,
    wilson_interval,
)
from covidcxr.engine.gate.train import KIND_LABELS, decide, fit_intensity_check
from covidcxr.infer.gate import (
    INTENSITY_FACTS,
    REASONS,
    blank_reason,
    gate_records,
    gate_refusal,
    intensity_distance,
    intensity_facts,
    intensity_refusal,
    refusal,
    refusal_reason,
    seen_kind,
)
from covidcxr.models import create_model, load_weights, save_weights
from covidcxr.models.gate import geometry
from covidcxr.models.weights import WeightSpec


def test_blank_images_are_refused():
    assert "blank" in blank_reason(np.full((300, 300), 0.5, np.float32))
    assert "blank" in blank_reason(np.random.default_rng(0).normal(0.5, 0.005, (300, 300)).astype(np.float32))
    assert blank_reason(np.random.default_rng(0).random((300, 300)).astype(np.float32)) is None


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
    assert sum(blank_reason(im) is None for _, im in a) > 0.9 * len(a)
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
        np.array([0.9, 0.2, 0.1, 0.05]), np.array([1, 1, 0, 0]), ["nih:frontal", "nih:frontal", "lateral", "photo"], 0.5
    )
    assert (
        rates["false_refusal_frontal"] == 0.5
        and rates["refusal_lateral_ct"] == 1.0
        and rates["refusal_non_xray"] == 1.0
    )


def test_refusal_message():
    assert refusal(0.9, 0.5) is None
    msg = refusal(0.1, 0.5)
    assert "frontal chest X-ray" in msg and "--no-gate" in msg


def test_refusal_says_what_it_saw_and_how_to_override():
    for code, words in REASONS.items():
        msg = refusal(0.1, 0.5, code)
        assert msg.startswith("not recognised as a frontal chest X-ray: " + words) and msg.endswith(
            "use --no-gate to force a reading (research use)"
        )
        assert refusal_reason(msg) == code
        assert "--no-gate" not in msg.split(";")[0]  # the part --no-gate keeps as its warning
    assert (
        REASONS["lateral"] == "looks like a lateral view"
        and REASONS["ct"] == "looks like a CT slice"
        and REASONS["no_chest"] == "no chest found"
    )
    image, mask = _chest(lung=0.5, tissue=0.5)
    far = {
        **fit_intensity_check(np.random.default_rng(1).normal(0.5, 0.05, (400, len(INTENSITY_FACTS)))),
        "mean": (intensity_facts(image, mask) + 1.0).tolist(),
    }
    assert refusal_reason(intensity_refusal(image, mask, far)) == "ct"
    assert refusal_reason(blank_reason(np.full((50, 50), 0.5, np.float32))) == "blank"
    assert refusal_reason(None) is None and refusal_reason("could not read the file") is None


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


def test_seen_kind_words_the_head_and_tells_no_chest_from_photographs():
    image, mask = _chest(lung=0.2, tissue=0.7)
    facts = intensity_facts(image, mask)
    assert seen_kind(0.1, mask, facts, _head("lateral")) == "lateral"
    assert seen_kind(0.1, mask, facts, _head("CT")) == "ct"
    assert seen_kind(0.1, mask, facts, _head("frontal")) == "unsure"
    assert seen_kind(0.1, mask, facts, _head("other")) == "photo"  # lungs found, yet not an X-ray
    assert seen_kind(0.1, np.zeros_like(mask), facts, _head("other")) == "no_chest"
    assert seen_kind(0.1, mask, facts, None) == "unsure"  # an older spec without the head


class _Spec:
    def __init__(self, threshold, check):
        self.threshold, self.intensity_check = threshold, check


def test_batch_decisions_match_the_one_image_decision():
    """decide() (the training report) and gate_refusal() (predict) refuse the same images for the same reasons."""
    from covidcxr.models.gate import geometry

    rng = np.random.default_rng(3)
    pairs = [
        _chest(lung=lung, tissue=tissue)
        for lung, tissue in ((0.2, 0.7), (0.3, 0.6), (0.6, 0.3), (0.5, 0.5), (0.1, 0.9), (0.25, 0.65))
    ]
    facts = np.stack([intensity_facts(im, m) for im, m in pairs])
    check = fit_intensity_check(
        facts[rng.integers(0, 2, 200)] + rng.normal(0, 0.01, (200, len(INTENSITY_FACTS))), percentile=99.0
    )  # like the first two
    head = _head("lateral")
    head["coef"] = rng.normal(0, 1, np.shape(head["coef"])).tolist()  # some inputs favour one kind, some another
    check["kinds"] = head
    spec = _Spec(0.5, check)
    p = np.array([0.9, 0.2, 0.95, 0.1, 0.7, 0.3])
    data = {
        "x": np.concatenate([np.zeros((len(pairs), 4)), np.stack([geometry(m) for _, m in pairs])], axis=1),
        "facts": facts,
    }
    dec = decide(p, data, spec)
    for i, (im, m) in enumerate(pairs):
        msg = gate_refusal(float(p[i]), im, m, spec)
        assert (msg is not None) == dec["refused"][i]
        if msg:
            assert refusal_reason(msg) == dec["reason"][i]
    assert dec["refused"].any() and not dec["refused"].all()


def test_augmentation_keeps_size_and_range():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:420]
    film = (0.4 + 0.3 * np.sin(xx / 17) * np.cos(yy / 23)).astype(np.float32)
    for marks in [(m,) for m in ALL_MARKS] + [HOSPITAL_MARKS, ALL_MARKS]:
        for image in (film, film[:120, :90]):
            out = augment_frontal(image, rng, marks)
            assert out.shape == image.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1, marks
    a = augment_frontal(film, np.random.default_rng(5))
    assert np.array_equal(a, augment_frontal(film, np.random.default_rng(5))) and not np.array_equal(a, film)
    tubes = augment_frontal(film, rng, ("tubes",))
    assert (tubes > 0.8).mean() > (film > 0.8).mean()  # bright lines added
    framed = augment_frontal(film, rng, ("surround",))
    # at least 28% of the image becomes a bright surround (>= 0.55), uneven (no uniform band to crop)
    assert (framed > 0.5).mean() > (film > 0.5).mean() + 0.15 and np.ptp(framed[0]) > 0.01
    # the shipped recipe's marks and draws: the candidate mark is outside it
    assert "surround" in ALL_MARKS and "surround" not in HOSPITAL_MARKS


def test_wilson_interval_and_rates_per_kind():
    lo, hi = wilson_interval(0, 11)
    assert lo == 0.0 and np.isclose(hi, 0.2588, atol=1e-4)  # 0 of 11 still allows a quarter
    lo, hi = wilson_interval(5, 10)
    assert np.isclose(lo + hi, 1.0) and lo < 0.5 < hi
    assert np.isnan(wilson_interval(0, 0)[0])
    r = rate_with_ci(np.array([True, False, False, False]))
    assert r["n"] == 4 and r["refused"] == 1 and r["rate"] == 0.25 and r["ci"][0] < 0.25 < r["ci"][1]
    kinds = ["hannover:frontal"] * 3 + ["nih-chestxray8:frontal"] * 2 + ["lateral", "CT", "photo"]
    also = np.array([False, True, False, False, False, False, True, False])
    rates = refusal_rates(
        np.array([0.9, 0.9, 0.2, 0.8, 0.9, 0.1, 0.9, 0.1]),
        np.array([1, 1, 1, 1, 1, 0, 0, 0]),
        kinds,
        0.5,
        also,
        reasons=["unsure", "ct", "unsure", "unsure", "unsure", "lateral", "ct", "photo"],
    )
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
    assert np.isclose(np.mean(intensity_distance(facts, check) > check["limit"]), 0.01, atol=0.005)
    image, mask = _chest(lung=0.5, tissue=0.5)
    assert intensity_refusal(image, mask, {}) is None  # an older spec without the check: off
    far = {**check, "mean": (intensity_facts(image, mask) + 1.0).tolist()}
    assert "intensities" in intensity_refusal(image, mask, far) and "--no-gate" in intensity_refusal(image, mask, far)
    near = {**check, "mean": intensity_facts(image, mask).tolist()}
    assert intensity_refusal(image, mask, near) is None


def test_shipped_gate_refuses_the_coronal_ct_reconstructions_it_once_let_through(records):
    """Validation coronal CTs the v1 linear gate scored frontal (p > 0.99) are refused, worded as CT slices."""
    from covidcxr.infer import Predictor
    from covidcxr.io import read_image

    _, other = gate_records(records, "val")
    coronal = [r for r in other if r["modality"] == "CT" and r["filename"] in ("16751_3_1.jpg", "16751_3_2.jpg")]
    assert len(coronal) == 2
    res = Predictor.load(saliency=False, severity=False).run([read_image(r["path"]) for r in coronal])
    assert all(refusal_reason(r.error) == r.refusal_reason == "ct" for r in res), [r.error for r in res]


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
    assert [refusal_reason(r.error) for r in res[len(films) :]] == ["lateral"] * len(lateral)


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


def test_film_box_trims_a_bright_smooth_surround_and_nothing_else():
    from covidcxr.infer.gate import film_box

    yy, xx = np.mgrid[0:240, 0:300]
    film = (0.35 + 0.3 * np.sin(xx / 5) * np.cos(yy / 7)).astype(np.float32)  # textured, as a film is
    assert film_box(film) == (0, 240, 0, 300)
    framed = (0.6 + 0.35 * np.mgrid[0:480, 0:600][0] / 480).astype(np.float32)  # light grey to white, a gradient
    framed[100:340, 150:450] = film
    y0, y1, x0, x1 = film_box(framed)
    cell = 600 / 128  # read on a 128-px copy: the box holds the film and at most 3 cells of surround per side
    assert 100 - 3 * cell <= y0 <= 100 and 340 <= y1 <= 340 + 3 * cell
    assert 150 - 3 * cell <= x0 <= 150 and 450 <= x1 <= 450 + 3 * cell
    ct = np.zeros((480, 600), np.float32)  # a dark surround (a CT slice's air) is kept
    ct[100:340, 150:450] = film
    assert film_box(ct) == (0, 480, 0, 600)
    mask = np.zeros(framed.shape, bool)
    mask[150:300, 180:420] = True
    # the film facts of the framed film are near those of the film alone; read with the surround they are not
    alone = intensity_facts(film, mask[100:340, 150:450])
    err_film = np.abs(intensity_facts(framed, mask, "film") - alone).max()
    err_borders = np.abs(intensity_facts(framed, mask) - alone).max()
    assert err_film < 0.15 and err_film < 0.5 * err_borders
    with pytest.raises(ValueError, match="crop"):
        intensity_facts(framed, mask, "lungs")


def test_a_check_fitted_on_film_facts_is_read_on_the_film():
    from covidcxr.engine.gate.train import fit_intensity_check

    rng = np.random.default_rng(0)
    facts = rng.normal(0.5, 0.05, (200, len(INTENSITY_FACTS)))
    assert "crop" not in fit_intensity_check(facts)  # the shipped kind of check: facts after uniform borders only
    check = fit_intensity_check(facts, crop="film")
    assert check["crop"] == "film"
    yy, xx = np.mgrid[0:240, 0:300]
    film = (0.35 + 0.3 * np.sin(xx / 5) * np.cos(yy / 7)).astype(np.float32)
    framed = (0.6 + 0.35 * np.mgrid[0:480, 0:600][0] / 480).astype(np.float32)
    framed[100:340, 150:450] = film
    mask = np.zeros(framed.shape, bool)
    mask[150:300, 180:420] = True
    near = {**check, "mean": intensity_facts(framed, mask, "film").tolist()}
    assert intensity_refusal(framed, mask, near) is None  # read on the film, as fitted
    assert intensity_refusal(framed, mask, {**near, "crop": "borders"}) is not None  # read with the surround: far


def test_a_classifier_check_refuses_on_the_lateral_ct_side():
    from covidcxr.engine.gate.train import fit_intensity_classifier

    rng = np.random.default_rng(0)
    frontal = rng.normal(0.5, 0.05, (300, len(INTENSITY_FACTS)))
    ct = rng.normal(0.2, 0.05, (40, len(INTENSITY_FACTS)))
    check = fit_intensity_classifier(frontal, ct)
    assert check["kind"] == "classifier" and check["limit"] == 0.0
    score = intensity_distance(np.concatenate([frontal, ct]), check)
    assert (score[:300] <= 0).mean() > 0.95 and (score[300:] > 0).mean() > 0.95
    # one-sided: facts further from CT than any frontal film are not refused (the ellipsoid would refuse them)
    assert (intensity_distance(rng.normal(0.9, 0.05, (20, len(INTENSITY_FACTS))), check) <= 0).all()


def test_a_check_on_some_facts_reads_only_those():
    from covidcxr.infer.gate import LUNG_FACTS

    rng = np.random.default_rng(2)
    facts = rng.normal(0.5, 0.05, (400, len(INTENSITY_FACTS)))
    check = fit_intensity_check(facts, percentile=99.0, use=LUNG_FACTS)
    assert check["facts"] == list(LUNG_FACTS) and len(check["mean"]) == len(LUNG_FACTS)
    probe = facts[:5].copy()
    outside = [INTENSITY_FACTS.index(n) for n in INTENSITY_FACTS if n not in LUNG_FACTS]
    moved = probe.copy()
    moved[:, outside] += 5.0  # a bright surround moves only the facts read outside the lungs
    assert np.allclose(intensity_distance(moved, check), intensity_distance(probe, check))
    moved[:, INTENSITY_FACTS.index("lung p90")] += 5.0
    assert (intensity_distance(moved, check) > check["limit"]).all()
    with pytest.raises(ValueError, match="unknown intensity facts"):
        fit_intensity_check(facts, use=("lung p95",))


def test_an_agreeing_check_refuses_only_what_the_reason_head_does_not_take_for_frontal():
    """With ``agree: kinds`` an image far from the frontal facts is refused only when the head calls it something else."""
    image, mask = _chest(lung=0.5, tissue=0.5)
    rng = np.random.default_rng(4)
    far = fit_intensity_check(intensity_facts(image, mask) + 1.0 + rng.normal(0, 0.01, (200, len(INTENSITY_FACTS))))
    data = {
        "x": np.concatenate([np.zeros((1, 4)), geometry(mask)[None]], axis=1),
        "facts": intensity_facts(image, mask)[None],
    }
    p = np.array([0.9])  # the linear gate accepts it
    for favoured, refused in (("frontal", False), ("CT", True)):
        check = {**far, "agree": "kinds", "kinds": _head(favoured)}
        assert decide(p, data, _Spec(0.5, check))["refused"][0] == refused
        assert (gate_refusal(0.9, image, mask, _Spec(0.5, check)) is not None) == refused
        plain = {**far, "kinds": _head(favoured)}  # without agreement the check alone refuses it
        assert decide(p, data, _Spec(0.5, plain))["refused"][0]


class _FakeSegmenter:
    """Stage 1 stand-in: a fixed two-lung mask and the image's mean as its one feature."""

    def segment(self, images, features=False):
        masks = [_chest(0.2, 0.7, im.shape)[1] for im in images]
        return masks, np.array([[float(im.mean())] for im in images], np.float32)


def test_marked_negatives_carry_the_frontal_marks_and_stay_lateral_or_ct(records):
    from covidcxr.engine.gate.data import marked_negatives
    from covidcxr.infer.gate import gate_records

    other = gate_records(records, "train")[1]
    few = [r for r in other if r["modality"] == "CT"][:2] + [r for r in other if r["view"] == "L"][:1]
    d = marked_negatives(few, "train", _FakeSegmenter(), 2, marks=ALL_MARKS)
    assert len(d["name"]) == 6 and (d["y"] == 0).all()
    assert sorted(set(d["kind"])) == ["CT", "lateral"]  # the reason head still learns them as what they are
    assert all("#marked" in n for n in d["name"]) and d["facts"].shape == (6, len(INTENSITY_FACTS))
    again = marked_negatives(few, "train", _FakeSegmenter(), 2, marks=ALL_MARKS)
    assert np.array_equal(d["x"], again["x"])  # the seed, not global state, decides the marks


def test_read_cached_names_what_builds_a_missing_cache(tmp_path):
    from covidcxr.engine.gate.data import read_cached

    with pytest.raises(FileNotFoundError, match="tune_val.py builds it"):
        read_cached(tmp_path / "features_train.npz", "docs/results/gate-surround/tune_val.py")
