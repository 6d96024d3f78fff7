"""Severity: zones, features, heads, the repeated-split evaluation and the annotation readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidcxr.data.severity import LESIONS, ZONES
from covidcxr.engine.severity.data import SeverityConfig
from covidcxr.engine.severity.lesions import lesion_loss
from covidcxr.engine.severity.scores import evaluate_brixia, evaluate_scores, fit_heads, repeated_splits, stacked_brixia
from covidcxr.infer.zones import (
    DEEP_DIM,
    IMAGE_GROUPS,
    ZONE_GROUPS,
    brixia_zones,
    columns,
    severity_features,
    split_lungs,
)


def _two_lungs(h=120, w=100):
    mask = np.zeros((h, w), bool)
    mask[10:100, 10:40] = True  # image left = the patient's right lung
    mask[20:110, 60:90] = True
    return mask


def test_zones_follow_each_lung_in_thirds():
    zones = brixia_zones(_two_lungs())
    assert set(np.unique(zones)) == {0, 1, 2, 3, 4, 5, 6}
    assert (zones[10:40, 10:40] == 1).all() and (zones[40:70, 10:40] == 2).all() and (zones[70:100, 10:40] == 3).all()
    assert (zones[20:50, 60:90] == 4).all() and (zones[80:110, 60:90] == 6).all()
    assert (zones[:, 45:55] == 0).all()


def test_touching_lungs_are_cut_at_the_emptiest_column():
    mask = _two_lungs()
    mask[50:55, 40:60] = True  # a bridge makes one region
    right, left = split_lungs(mask)
    assert right[:, :40].sum() == mask[:, :40].sum() and left[:, 60:].sum() == mask[:, 60:].sum()
    assert not (right & left).any() and ((right | left) == mask).all()


def test_features_measure_lesions_per_zone_and_lung():
    s = 64
    lungs = torch.from_numpy(
        np.asarray(
            torch.nn.functional.interpolate(torch.from_numpy(_two_lungs(128, 128)).float()[None, None], size=(s, s))[
                0, 0
            ]
            > 0.5
        )
    )[None]
    zones = brixia_zones(lungs[0].numpy())
    p = torch.zeros(1, len(LESIONS), s, s)
    p[0, 0][torch.from_numpy(zones == 1)] = 1.0  # ground-glass fills zone A only
    x = torch.randn(1, 1, s, s)
    encoder = [torch.randn(1, c, s // f, s // f) for c, f in ((1, 1), (16, 2), (24, 4), (32, 8), (96, 16), (1280, 32))]
    image_f, zone_f = severity_features(x, encoder, lungs, p)
    assert image_f.shape == (1, 12 + DEEP_DIM) and zone_f.shape == (1, 6, 13 + DEEP_DIM)
    lo, _ = ZONE_GROUPS["lesions"]
    frac_ggo = zone_f[0, :, lo + 2]
    assert frac_ggo[0] == 1 and (frac_ggo[1:] == 0).all()
    right_frac = image_f[0, IMAGE_GROUPS["lesions"][0] + 2]
    assert 0.25 < right_frac < 0.42  # zone A is about a third of the right lung
    assert np.isclose(zone_f[0, :, ZONE_GROUPS["geometry"][0]].sum(), 1.0)


def test_columns_name_groups_and_refuse_unknown():
    assert len(columns(("lesions", "zone"), zone=True)) == 4 + len(ZONES)
    with pytest.raises(ValueError, match="known"):
        columns(("texture",), zone=False)


def test_heads_reproduce_the_ridge_fits():
    rng = np.random.default_rng(0)
    cfg = SeverityConfig(image_groups=("lesions", "geometry"), zone_groups=("lesions", "zone"))
    n = 40
    img = rng.normal(size=(n, 12 + DEEP_DIM)).astype(np.float32)
    zone = rng.normal(size=(n, 6, 13 + DEEP_DIM)).astype(np.float32)
    targets = np.stack([img[:, 0] * 2 + 4, img[:, 1] + 3], axis=1)
    head = fit_heads(cfg, img, targets, zone, zone[:, :, 0] + 1.5)
    cols, zcols = columns(cfg.image_groups, zone=False), columns(cfg.zone_groups, zone=True)
    scores, zs = head(torch.from_numpy(img[:, cols]), torch.from_numpy(zone[:, :, zcols]))
    assert np.corrcoef(scores[:, 0].detach().numpy(), targets[:, 0])[0, 1] > 0.95
    assert np.corrcoef(zs.detach().numpy().ravel(), (zone[:, :, 0] + 1.5).ravel())[0, 1] > 0.95


def test_head_reads_the_predicted_brixia_global_score():
    rng = np.random.default_rng(3)
    cfg = SeverityConfig(image_groups=("geometry",), zone_groups=("lesions", "zone"), image_brixia=True)
    n = 40
    img = rng.normal(size=(n, 12 + DEEP_DIM)).astype(np.float32)
    zone = rng.normal(size=(n, 6, 13 + DEEP_DIM)).astype(np.float32)
    zone_scores = np.clip(zone[:, :, 0] + 1.5, 0, 3)
    extent = zone_scores.sum(1) / 2  # the target follows the Brixia score, not the image features
    head = fit_heads(
        cfg, img, np.stack([extent, extent / 2], axis=1), zone, zone_scores, brixia_global=zone_scores.sum(1)
    )
    cols, zcols = columns(cfg.image_groups, zone=False), columns(cfg.zone_groups, zone=True)
    assert head.image_in == len(cols) and head.image.in_features == len(cols) + 1
    scores, zs = head(torch.from_numpy(img[:, cols]), torch.from_numpy(zone[:, :, zcols]))
    assert np.corrcoef(scores[:, 0].detach().numpy(), extent)[0, 1] > 0.9
    with pytest.raises(ValueError, match="Brixia"):
        fit_heads(cfg, img, np.stack([extent, extent], axis=1), zone, zone_scores)


def test_stacked_brixia_never_scores_an_image_with_a_ridge_that_saw_it():
    """Features that let a ridge memorise each image: held-out predictions cannot recover its score."""
    rng = np.random.default_rng(4)
    m = 40
    feats = np.eye(m * 6, dtype=np.float32).reshape(m, 6, m * 6)  # one private column per image and zone
    senior = rng.integers(0, 4, size=(m, 6))
    groups, names = np.arange(m), [f"b{i}" for i in range(m)]
    truth = senior.sum(1)
    held_out = stacked_brixia(feats, senior, groups, names, feats, names, np.ones(m, bool))
    seen = stacked_brixia(
        feats, senior, groups, names, feats, [f"other{i}" for i in range(m)], np.ones(m, bool)
    )  # same images, names not in the pool
    assert np.corrcoef(seen, truth)[0, 1] > 0.9  # a ridge that saw the image reproduces its score
    assert abs(np.corrcoef(held_out, truth)[0, 1]) < 0.5
    outside = stacked_brixia(
        feats, senior, groups, names, feats[:5], names[:5], np.arange(m) >= 5
    )  # images 0-4 left out of the pool
    assert np.ptp(outside) < 1e-3  # a ridge that never saw them gives each the same score


def test_repeated_splits_never_share_a_patient():
    groups = np.repeat(np.arange(30), 3)
    for train, test in repeated_splits(groups, 10, seed=0):
        assert not set(groups[train]) & set(groups[test])
        assert abs(len(test) - len(groups) / 2) <= 3


def test_scores_beat_the_mean_only_when_features_carry_the_target():
    rng = np.random.default_rng(1)
    y = rng.uniform(0, 8, 60)
    groups = np.arange(60)
    informative = np.stack([y + rng.normal(0, 0.3, 60), rng.normal(size=60)], axis=1)
    noise = rng.normal(size=(60, 2))
    good = evaluate_scores(informative, {"t": y}, groups, 10, 0, {"t": (0, 8)})["t"]
    bad = evaluate_scores(noise, {"t": y}, groups, 10, 0, {"t": (0, 8)})["t"]
    assert good["model"]["mae"]["mean"] < 0.5 * good["mean_baseline"]["mae"]["mean"]
    assert bad["model"]["mae"]["mean"] > 0.8 * bad["mean_baseline"]["mae"]["mean"]
    assert good["model"]["mae"]["ci_low"] <= good["model"]["mae"]["mean"] <= good["model"]["mae"]["ci_high"]


def test_brixia_reference_rater_identical_to_senior_scores_zero():
    rng = np.random.default_rng(2)
    senior = rng.integers(0, 4, size=(40, 6))
    res = evaluate_brixia(rng.normal(size=(40, 6, 5)), senior, senior.copy(), np.arange(40), 5, 0)
    assert res["junior_rater"]["global_mae"]["mean"] == 0 and res["model"]["global_mae"]["mean"] > 0


def test_lesion_loss_is_lower_for_the_right_masks():
    target = torch.zeros(2, 2, 16, 16)
    target[:, 0, 4:12, 4:12] = 1
    good = torch.where(target > 0, 8.0, -8.0)
    assert lesion_loss(good, target) < 0.2 < lesion_loss(-good, target)


@pytest.mark.data
def test_annotation_readers_match_the_data():
    from covidcxr.data import load_records
    from covidcxr.data.severity import brixia_scores, expert_scores, lesion_samples, read_lesions
    from covidcxr.io import read_image

    records = load_records(datasets=("covid-chestxray",))
    experts, brixia, lesions = expert_scores(records), brixia_scores(records), lesion_samples(records)
    assert len(experts) == 93 and len(brixia) == 171 and len(lesions) == 94
    assert all(0 <= s["geographic_extent"] <= 8 and 0 <= s["opacity"] <= 6 for s in experts)
    assert all(s["senior"].shape == (6,) and s["senior"].max() <= 3 for s in brixia)
    marked = sum(s["lesion_masks"]["ground-glass"] is not None for s in lesions)
    assert marked == 89 and sum(s["lesion_masks"]["consolidation"] is not None for s in lesions) == 31
    s = lesions[0]
    image = read_image(s["path"])
    masks = read_lesions(s, image.shape)
    assert masks.shape == (len(LESIONS), *image.shape) and masks.any()


def test_shipped_severity_weights_golden(fixtures):
    """The shipped lesion decoder and severity head, loaded from their specs, give the recorded scores on fixture X-rays."""
    import json

    from covidcxr.infer import LungSegmenter, SeverityScorer
    from covidcxr.io import read_image
    from covidcxr.models import shipped_spec_path

    scorer = SeverityScorer.from_spec()
    golden = json.loads((fixtures / "golden" / "severity.json").read_text())
    assert (golden["lesions_sha256"], golden["severity_sha256"]) == (
        scorer.lesion_spec.sha256,
        scorer.head_spec.sha256,
    ), "shipped weights changed: run tests/fixtures/make_golden.py"
    seg = LungSegmenter.from_spec()
    assert (
        scorer.lesion_spec.training["lung_weights"] == seg.spec.sha256
    )  # its training views were cut with these lungs
    for kind in ("lesions", "severity"):
        path = shipped_spec_path(kind)
        assert (path.parent / json.loads(path.read_text())["file"]).stat().st_size < 10e6
    for name, expected in golden["severity"].items():
        image = read_image(fixtures / name)
        got = scorer.score([image], seg.segment([image]))[0]["severity"]
        assert (
            abs(got["geographic_extent"] - expected["geographic_extent"]) < 0.05
            and abs(got["opacity"] - expected["opacity"]) < 0.05
        )
        assert all(abs(got["brixia"][z] - expected["brixia"][z]) < 0.05 for z in expected["brixia"])
        for lesion, sides in expected["lesions"].items():
            assert all(abs(got["lesions"][lesion][s] - v) < 0.01 for s, v in sides.items()), (name, lesion)


@pytest.mark.slow
def test_train_and_evaluate_severity_cli(tmp_path):
    """The whole protocol on a few images: folds, features, repeated splits, export, re-evaluation."""
    import json

    from covidcxr.cli import main
    from covidcxr.models import load_weights

    run, export = tmp_path / "run", tmp_path / "export"
    sets = [
        "limit=16",
        "folds=2",
        "epochs=1",
        "repeats=3",
        "negatives=4",
        "amp=none",
        "decoder_channels=[32,16,16,8,8]",
        "image_groups=[geometry]",
        "image_brixia=true",
    ]
    assert (
        main(["train", "severity", "--out", str(run), "--export", str(export), *sum((["--set", s] for s in sets), [])])
        == 0
    )
    result = json.loads((run / "severity_eval.json").read_text())
    assert set(result["scores"]) == {"geographic_extent", "opacity"} and result["brixia"]["n"] == 16
    assert (run / "severity_scatter.png").is_file() and (run / "lesion_examples.png").is_file()
    head, spec = load_weights(export / "severity_linear.json")
    decoder, lesion_spec = load_weights(export / "unet_mobilenetv2_lesions.json")
    assert spec.training["lesion_weights"] == lesion_spec.sha256
    assert (
        spec.model_kwargs["image_brixia"] and head.image.in_features == 2 + 1
    )  # geometry + the predicted Brixia global score
    assert (
        lesion_spec.model_kwargs == {"decoder_channels": [32, 16, 16, 8, 8]}
        and decoder.net.segmentation_head[0].in_channels == 8
    )  # the configured widths travel in the spec
    assert main(["evaluate", "severity", "--run", str(run), "--out", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "severity_eval.json").read_text())
    assert again["brixia"]["model"] == result["brixia"]["model"]  # the folds are reused: same numbers


def test_no_pixel_outside_the_lungs_changes_a_finding(fixtures):
    """Given the lung outline, every pixel outside it replaced by noise, then by white: identical lesions and scores."""
    from covidcxr.infer import LungSegmenter, SeverityScorer
    from covidcxr.io import read_image

    scorer, seg = SeverityScorer.from_spec(), LungSegmenter.from_spec()
    image = read_image(fixtures / "ieee8023_2cd63b76.jpg")
    mask = seg.segment([image])[0]
    assert 0.1 < mask.mean() < 0.6
    intact = scorer.score([image], [mask])[0]
    rng = np.random.default_rng(0)
    for outside in (rng.random(image.shape, dtype=np.float32), np.ones_like(image)):
        changed = np.where(mask, image, outside)
        got = scorer.score([changed], [mask])[0]
        assert got["severity"] == intact["severity"]
        assert np.array_equal(got["lesions"], intact["lesions"]) and np.array_equal(got["zones"], intact["zones"])
    inside = scorer.score([np.where(mask, 1.0 - image, image)], [mask])[0]  # the lungs do matter
    assert inside["severity"] != intact["severity"]
