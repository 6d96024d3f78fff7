"""Stage 2 building blocks: lung views, sampling, calibration, initialisation, training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covidcxr.data.classification import DiagnosisDataset, apply_view, lung_view
from covidcxr.data.transforms import diagnosis_augment
from covidcxr.models import create_model, load_weights
from covidcxr.research.cnn_train import (
    DiagTrainConfig,
    build_model,
    fit,
    fit_temperature,
    fold_of,
    load_matching,
    macro_auroc,
    sample_weights,
)


def _image_and_mask(h=300, w=400):
    image = np.random.default_rng(0).random((h, w)).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[60:240, 50:180] = True
    mask[60:240, 220:350] = True
    return image, mask


def test_lung_view_crops_the_lung_box_and_resizes_both():
    image, mask = _image_and_mask()
    view, lungs = lung_view(image, mask, 64, margin=0.1)
    assert view.shape == lungs.shape == (1, 64, 64)
    assert float(view.min()) >= 0 and float(view.max()) <= 1
    assert set(np.unique(lungs).tolist()) <= {0.0, 1.0}
    # the box holds the lungs plus a margin: lungs cover most of it but not all
    assert 0.6 < float(lungs.mean()) < 0.95
    whole_view, whole_lungs = lung_view(image, mask, 64, whole=True)
    assert abs(float(whole_lungs.mean()) - mask.mean()) < 0.05
    with pytest.raises(ValueError, match="differ in size"):
        lung_view(image, mask[:-1], 64)


def test_view_modes_black_out_the_right_pixels():
    image, mask = _image_and_mask()
    view, lungs = lung_view(image, mask, 64)
    masked = apply_view(view, lungs, "masked")
    blacked = apply_view(view, lungs, "lungs_blacked_out")
    assert np.all(masked[lungs == 0] == 0) and np.array_equal(masked[lungs == 1], view[lungs == 1])
    assert np.all(blacked[lungs == 1] == 0) and np.array_equal(blacked[lungs == 0], view[lungs == 0])
    assert np.array_equal(apply_view(view, lungs, "crop"), view)
    tv, tl = torch.from_numpy(view), torch.from_numpy(lungs)  # training applies it to tensors
    assert torch.equal(apply_view(tv, tl, "masked"), torch.from_numpy(masked))
    with pytest.raises(ValueError, match="view mode"):
        apply_view(view, lungs, "lungs_only")


def test_dataset_normalizes_and_keeps_outside_constant_when_masked():
    image, mask = _image_and_mask()
    view, lungs = lung_view(image, mask, 64)
    images = (view * 255).astype(np.uint8)
    ds = DiagnosisDataset(images, lungs > 0.5, np.array([1]), "masked", transform=diagnosis_augment())
    x = ds[0]["image"]
    assert x.shape == (1, 64, 64) and abs(float(x.mean())) < 1e-4 and abs(float(x.std(correction=0)) - 1) < 1e-3
    with pytest.raises(ValueError):
        DiagnosisDataset(images, lungs > 0.5, np.array([1]), "sideways")


def test_augmentation_moves_mask_with_image():
    torch.manual_seed(3)
    mask = torch.zeros(1, 96, 96)
    mask[:, 20:70, 30:60] = 1
    from torchvision import tv_tensors

    img, m = diagnosis_augment()(tv_tensors.Image(mask.clone() * 0.8 + 0.1), tv_tensors.Mask(mask.clone()))
    bright = img[0] > img[0].mean()
    agree = (bright == (m[0] > 0.5)).float().mean()
    assert agree > 0.9


def test_sampling_balances_classes_then_sources():
    labels = np.array([0] * 30 + [1] * 10 + [1] * 90 + [2] * 5 + [2] * 50)
    sources = ["a"] * 30 + ["a"] * 10 + ["b"] * 90 + ["a"] * 5 + ["c"] * 50
    w = sample_weights(labels, sources, "class_source")
    assert np.isclose(w.sum(), 1)
    for c in (0, 1, 2):
        assert np.isclose(w[labels == c].sum(), 1 / 3)
    # inside "Other pneumonia", the 10 images of source a weigh as much as the 90 of source b
    assert np.isclose(w[30:40].sum(), w[40:130].sum())
    w_class = sample_weights(labels, sources, "class")
    assert np.isclose(w_class[30:130].sum(), 1 / 3) and np.isclose(w_class[30], w_class[100])
    assert np.allclose(sample_weights(labels, sources, "none"), 1)
    with pytest.raises(ValueError):
        sample_weights(labels, sources, "source")


def test_temperature_recovers_known_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 3)) * 2
    p = torch.softmax(torch.from_numpy(z), 1).numpy()
    y = np.array([rng.choice(3, p=row) for row in p])
    assert abs(fit_temperature(z * 2.5, y) - 2.5) < 0.25
    assert abs(fit_temperature(z, y) - 1.0) < 0.1


def test_macro_auroc_skips_absent_classes():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0], [0.8, 0.2, 0], [0.1, 0.9, 0], [0.3, 0.7, 0]])
    assert macro_auroc(y, probs) == 1.0
    assert np.isnan(macro_auroc(np.zeros(4, int), probs))


def test_stage1_encoder_initialises_mobilenet_v2():
    lungs, _ = load_weights(kind="lungs")
    model = create_model("mobilenet_v2", in_chans=1, num_classes=3)
    n = load_matching(model, lungs.state_dict())
    assert n == len(model.state_dict()) - 2  # all but the classifier's weight and bias
    assert torch.equal(model.conv_stem.weight, lungs.state_dict()["net.encoder.features.0.0.weight"])
    with pytest.raises(ValueError, match="no parameter matches"):
        build_model(DiagTrainConfig(model="resnet18", init="lungs"))


def test_folds_are_stable_and_cover_all():
    folds = [fold_of(f"nih-chestxray8:{i}", 5) for i in range(500)]
    assert set(folds) == set(range(5)) and folds == [fold_of(f"nih-chestxray8:{i}", 5) for i in range(500)]


def _toy_views(n, rng):
    """Views whose class is written in their brightness pattern: learnable in a few steps."""
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 60, (n, 48, 48)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, :, 16 * c : 16 * (c + 1)] += 150
    lungs = np.ones((n, 48, 48), bool)
    samples = [{"dataset": ["a", "b"][i % 2], "path": str(i)} for i in range(n)]
    return {"images": images, "lungs": lungs, "labels": labels, "samples": samples, "lung_fraction": np.ones(n)}


@pytest.mark.integration
def test_fit_learns_checkpoints_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    train, val = _toy_views(96, rng), _toy_views(48, rng)
    cfg = DiagTrainConfig(
        model="resnet18",
        init=None,
        input_size=48,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        patience=5,
        amp="none",
        device="cpu",
    )
    res = fit(cfg, train, val, tmp_path)
    assert res["val_auroc"] > 0.9
    assert 0.05 <= res["temperature"] <= 20
    hist = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert len(hist) == 3 and (tmp_path / "learning_curve.png").is_file()
    # resuming a finished run trains nothing more and returns the same best epoch
    again = fit(cfg, train, val, tmp_path, resume=True)
    assert again["best_epoch"] == res["best_epoch"] and len(again["history"]) == 3


@pytest.mark.integration
def test_lung_attention_moves_class_evidence_into_the_lungs(tmp_path):
    """The class cue is drawn inside and outside the lungs; the penalty shifts the activation inside."""
    rng = np.random.default_rng(0)
    train, val = _toy_views(96, rng), _toy_views(48, rng)
    for views in (train, val):
        views["lungs"] = np.zeros_like(views["lungs"])
        views["lungs"][:, 24:] = True  # the lower half is lung, the cue stripes cross both halves
    cfg = DiagTrainConfig(
        model="resnet18",
        init=None,
        lung_input="crop",
        input_size=48,
        epochs=4,
        batch_size=16,
        lr=3e-3,
        patience=5,
        amp="none",
        device="cpu",
        lung_attention=5.0,
    )
    res = fit(cfg, train, val, tmp_path)
    hist = res["history"]
    assert res["val_auroc"] > 0.9
    assert all("train_outside_lungs" in h for h in hist)
    assert hist[-1]["train_outside_lungs"] < 0.7 * hist[0]["train_outside_lungs"]


def test_group_sampling_draws_each_source_class_pair_equally():
    labels = np.array([0] * 30 + [1] * 10 + [1] * 90 + [2] * 5)
    sources = ["a"] * 40 + ["b"] * 90 + ["a"] * 5
    w = sample_weights(labels, sources, "group")
    assert np.isclose(w[:30].sum(), 0.25) and np.isclose(w[30:40].sum(), 0.25) and np.isclose(w[130:].sum(), 0.25)


def test_torchxrayvision_densenet_state_dict_initialises_densenet121(tmp_path):
    """The documented --pretrained path for users with torchxrayvision weights (built here with random weights)."""
    import torchxrayvision as xrv

    path = tmp_path / "xrv_densenet121.pt"
    torch.save(xrv.models.DenseNet(weights=None).state_dict(), path)
    model = build_model(DiagTrainConfig(model="densenet121", init=str(path)))
    assert torch.equal(model.features.conv0.weight, torch.load(path, weights_only=True)["features.conv0.weight"])


@pytest.mark.integration
def test_cross_validation_trains_k_folds_on_train_and_val_patients(tmp_path):
    from covidcxr.research.cnn_train import _cross_validate

    rng = np.random.default_rng(1)
    views = _toy_views(90, rng)
    for i, s in enumerate(views["samples"]):
        s["patient_id"] = str(i // 2)  # two images per patient
    splits = np.array(["train"] * 60 + ["val"] * 15 + ["test"] * 15)
    cfg = DiagTrainConfig(
        model="resnet18", init=None, input_size=48, epochs=1, batch_size=16, amp="none", device="cpu", folds=3
    )
    _cross_validate(cfg, views, splits, tmp_path, resume=False)
    cv = json.loads((tmp_path / "cross_validation.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2]
    assert sum(f["val_samples"] for f in cv["folds"]) == 75  # every train+val image validated once, test never
    assert all((tmp_path / f"fold{k}" / "metrics.json").is_file() for k in range(3))


def test_view_cache_serves_any_copy_of_the_data(tmp_path, monkeypatch):
    """The cache is keyed by dataset/filename: moving the data (CI clone, user's copy) must not break it."""
    import shutil
    from pathlib import Path

    from covidcxr.infer import LungSegmenter
    from covidcxr.research.cnn_train import prepare_views

    monkeypatch.setenv("COVIDCXR_CACHE", str(tmp_path / "cache"))
    fixtures = Path(__file__).parents[1] / "fixtures"
    names = ["ieee8023_2cd63b76.jpg", "kermany_IM-0117-0001.jpeg"]
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        for n in names:
            shutil.copy(fixtures / n, tmp_path / copy / n)

    def samples(copy):
        return [
            {"dataset": "fixtures", "filename": n, "path": str(tmp_path / copy / n), "label": i}
            for i, n in enumerate(names)
        ]

    segmenter = LungSegmenter.from_spec()
    first = prepare_views(samples("a"), segmenter, 64, 0.1, progress=False)
    second = prepare_views(samples("b"), segmenter, 64, 0.1, progress=False)
    assert [s["path"] for s in second["samples"]] == [str(tmp_path / "b" / n) for n in names]
    assert np.array_equal(first["images"], second["images"]) and list(second["labels"]) == [0, 1]
