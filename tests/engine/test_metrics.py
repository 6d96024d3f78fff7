from __future__ import annotations

import numpy as np

from covidcxr.metrics import bootstrap_ci, dice, hd95, iou
from covidcxr.postprocess import keep_lungs


def test_dice_iou_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4] = True
    b[:, 2:6] = True
    assert dice(a, b) == 0.5
    assert abs(iou(a, b) - 20 / 60) < 1e-9
    valid = np.ones((10, 10), bool)
    valid[:, 4:] = False  # only a's region counts
    assert abs(dice(a, b, valid) - 2 * 20 / (40 + 20)) < 1e-9
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_hd95_of_a_shifted_square():
    a = np.zeros((50, 50), bool)
    a[10:30, 10:30] = True
    b = np.roll(a, 3, axis=1)
    assert 2.5 <= hd95(a, b) <= 3.0
    assert hd95(a, a) == 0.0
    assert np.isnan(hd95(a, np.zeros_like(a)))


def test_bootstrap_ci_brackets_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(0.9, 0.02, 200)
    r = bootstrap_ci(x)
    assert r["ci_low"] < r["value"] < r["ci_high"] and r["n"] == 200
    assert r["ci_high"] - r["ci_low"] < 0.01


def test_keep_lungs_drops_blobs_and_fills_holes():
    m = np.zeros((100, 100), bool)
    m[10:90, 10:40] = True
    m[10:90, 60:90] = True
    m[50:52, 20:22] = False  # a hole
    m[95:97, 95:97] = True  # a stray blob
    out = keep_lungs(m)
    assert out[50, 20] and not out[96, 96]
    assert out.sum() == 2 * 80 * 30
    assert not keep_lungs(np.zeros((5, 5), bool)).any()


def test_stratified_bootstrap_auroc():
    from sklearn.metrics import roc_auc_score

    from covidcxr.metrics import stratified_bootstrap_ci

    y = np.array([0] * 50 + [1] * 10)
    perfect = stratified_bootstrap_ci(y, y.astype(float), roc_auc_score, n_resamples=200)
    assert perfect["value"] == perfect["ci_low"] == perfect["ci_high"] == 1.0 and perfect["n_pos"] == 10
    rng = np.random.default_rng(1)
    noisy = stratified_bootstrap_ci(y, rng.random(60), roc_auc_score, n_resamples=300)
    assert noisy["ci_low"] < noisy["value"] < noisy["ci_high"] and noisy["ci_low"] < 0.5 + 0.2
    assert np.isnan(stratified_bootstrap_ci(np.zeros(5), np.ones(5), roc_auc_score)["value"])


def test_operating_point_and_calibration():
    from covidcxr.metrics import calibration, operating_point

    op = operating_point([1, 1, 0, 0, 0], [1, 0, 1, 0, 0])
    assert (op["sensitivity"], op["specificity"], op["ppv"]) == (0.5, 2 / 3, 0.5)
    assert np.isnan(operating_point([0, 0], [0, 0])["sensitivity"])
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.34, 1, 20000)
    labels = np.where(rng.random(20000) < conf, 0, 1)
    probs = np.stack([conf, 1 - conf, np.zeros_like(conf)], 1)
    assert calibration(labels, probs)["ece"] < 0.02
    overconfident = np.stack([np.full(1000, 0.99), np.full(1000, 0.01), np.zeros(1000)], 1)
    assert calibration(np.r_[np.zeros(500, int), np.ones(500, int)], overconfident)["ece"] > 0.4
