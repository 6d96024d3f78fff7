"""The input gate: blank images, the gate model, its training data and refusal rates."""

from __future__ import annotations

import numpy as np
import torch

from covidcxr.gate import (
    INTENSITY_FACTS,
    PHOTOS,
    blank_reason,
    fit_intensity_check,
    gate_records,
    intensity_distance,
    intensity_facts,
    intensity_refusal,
    negative_images,
    refusal,
    refusal_rates,
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
    spec = WeightSpec(name="g", architecture="frontal_gate", task="gate", targets=["frontal"], input_size=(256, 256), normalization="per_image_zscore", file="g.pt", dtype="float32", model_kwargs={"in_features": 5})
    loaded, _ = load_weights(save_weights(gate, spec, tmp_path))
    p = loaded.probability(np.ones((2, 2), np.float32), [np.ones((10, 10), bool)] * 2)
    assert p.shape == (2,) and np.allclose(p, gate.probability(np.ones((2, 2), np.float32), [np.ones((10, 10), bool)] * 2))


def test_negatives_are_deterministic_non_blank_and_split_by_identity():
    a, b = negative_images("test"), negative_images("test")
    assert [n for n, _ in a] == [n for n, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert all(im.ndim == 2 and 0 <= im.min() and im.max() <= 1 for _, im in a)
    assert sum(blank_reason(im) is None for _, im in a) > 0.9 * len(a)
    assert not set(PHOTOS["train"]) & set(PHOTOS["test"]) and not set(PHOTOS["train"]) & set(PHOTOS["val"])


def test_gate_records_and_rates(records):
    frontal, other = gate_records(records, "test")
    assert frontal and other
    assert all(r["view"] in ("PA", "AP", "AP Supine", "AP Erect") for r in frontal)
    assert all(r["modality"] == "CT" or r["view"] == "L" for r in other)
    rates = refusal_rates(np.array([0.9, 0.2, 0.1, 0.05]), np.array([1, 1, 0, 0]), ["nih:frontal", "nih:frontal", "lateral", "photo"], 0.5)
    assert rates["false_refusal_frontal"] == 0.5 and rates["refusal_lateral_ct"] == 1.0 and rates["refusal_non_xray"] == 1.0


def test_refusal_message():
    assert refusal(0.9, 0.5) is None
    msg = refusal(0.1, 0.5)
    assert "frontal chest X-ray" in msg and "--no-gate" in msg


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
    assert np.allclose(intensity_facts(np.kron(image, np.ones((2, 2), np.float32)), np.kron(mask, np.ones((2, 2), bool))), f, atol=0.02)  # size-free
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
    """Validation coronal CTs the linear gate scored frontal (p > 0.99) are refused by the intensity check."""
    from covidcxr.io import read_image
    from covidcxr.predict import Pipeline

    _, other = gate_records(records, "val")
    coronal = [r for r in other if r["modality"] == "CT" and r["filename"] in ("16751_3_1.jpg", "16751_3_2.jpg")]
    assert len(coronal) == 2
    res = Pipeline.load(saliency=False, severity=False).run([read_image(r["path"]) for r in coronal])
    assert all(r["refusal"] and "intensities" in r["refusal"] for r in res), [r["refusal"] for r in res]
