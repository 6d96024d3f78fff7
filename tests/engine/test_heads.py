"""Stage-2 heads and the leave-one-source-out protocol, on synthetic features with a source shortcut."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covidcxr.engine.diagnosis.heads import COVID, NORMAL, OTHER, make_design, nullspace_projection, within_source_pairs
from covidcxr.engine.diagnosis.loso import (
    COMPARISONS,
    FOLDS,
    PRIMARY,
    SENSITIVITY,
    fold_probabilities,
    markdown,
    score_folds,
)


def _shortcut_data(n: int = 150, seed: int = 0):
    """Six sources as in the real data: each class lives in its own sources, and a 'style'
    feature names the source. Feature 0 is the disease signal (weak, within every source),
    feature 1 the COVID-19 pattern, features 2-5 the source's style (strong)."""
    rng = np.random.default_rng(seed)
    plan = {  # source -> classes it holds
        "covid-chestxray": (COVID, COVID, COVID, OTHER, NORMAL),
        "covid19-radiography": (COVID, COVID, NORMAL),
        "hannover": (COVID,),
        "kermany-pediatric": (OTHER, OTHER, NORMAL),
        "nih-chestxray8": (OTHER, NORMAL),
        "nih-chestxray14": (OTHER, NORMAL),
    }
    x, y, src = [], [], []
    for source, classes in plan.items():
        labels = rng.choice(classes, size=n)
        style = rng.normal(size=4) * 3
        f = rng.normal(size=(n, 6))
        f[:, 0] += 1.5 * (labels != NORMAL)
        f[:, 1] += 1.5 * (labels == COVID)
        f[:, 2:] += style
        x.append(f)
        y.append(labels)
        src += [source] * n
    splits = np.array(["train", "test"] * (len(src) // 2))
    return np.concatenate(x), np.concatenate(y), np.array(src), splits


def test_within_source_pairs_never_cross_sources():
    rng = np.random.default_rng(0)
    sources = np.array(["a"] * 10 + ["b"] * 10 + ["c"] * 5)
    pos = np.r_[np.ones(5), np.zeros(5), np.ones(3), np.zeros(7), np.ones(5)].astype(bool)
    i, j = within_source_pairs(pos, ~pos, sources, rng, per_source=6)
    assert len(i) == 12 and (sources[i] == sources[j]).all() and pos[i].all() and not pos[j].any()


def test_within_source_design_ignores_the_source_and_pooled_does_not():
    x, y, src, _ = _shortcut_data()
    new = np.random.default_rng(5).normal(size=(400, 6))
    truth = np.r_[np.ones(200), np.zeros(200)].astype(bool)
    new[:, 0] += 1.5 * truth
    new[:, 1] += 1.5 * truth  # COVID-19 at a new hospital ...
    new[200:, 2:] += 4.0  # ... whose normals come from another scanner
    aucs = {}
    for design in ("pooled", "within_source"):
        p = make_design(design).fit(x, y, src).predict_proba(new)
        assert p.shape == (400, 3) and np.allclose(p.sum(1), 1)
        aucs[design] = roc_auc_score(truth, p[:, COVID])
    assert aucs["within_source"] > 0.8 > aucs["pooled"] + 0.05


def test_nullspace_projection_removes_linear_source_information():
    x, _, src, _ = _shortcut_data()
    z = (x - x.mean(0)) / x.std(0)
    proj = nullspace_projection(z, src, rounds=3)
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    before = balanced_accuracy_score(src, LogisticRegression(max_iter=2000).fit(z, src).predict(z))
    after = balanced_accuracy_score(src, LogisticRegression(max_iter=2000).fit(z @ proj, src).predict(z @ proj))
    assert before > 0.9 and after < 0.5


def test_loso_scores_every_comparison_out_of_source():
    x, y, src, splits = _shortcut_data(n=90)
    folds = fold_probabilities("within_source", x, y, src, splits)
    assert set(folds) == set(FOLDS)
    for fold, left_out in FOLDS.items():
        held = np.isin(src, left_out)
        assert not np.isnan(folds[fold][held]).any() and np.isnan(folds[fold][~held]).all()
    res = score_folds(folds, y, src, n_resamples=50)
    assert set(COMPARISONS) | {SENSITIVITY, "primary"} <= set(res)
    assert res["primary"] == pytest.approx(np.mean([res[k]["value"] for k in PRIMARY]))
    assert res["NIH Other pneumonia vs No finding"]["value"] > 0.75
    assert "| within |" in markdown({"within": res})


def test_unknown_design_names_the_known_ones():
    with pytest.raises(ValueError, match="within_source"):
        make_design("nope")


def _facts(peripheral, lower_zone, bilateral):
    from covidcxr.infer.findings import FACTS

    f = np.zeros((len(peripheral), len(FACTS)))
    for name, v in (("peripheral", peripheral), ("lower_zone", lower_zone), ("bilateral", bilateral)):
        f[:, FACTS.index(name)] = v
    return f


def test_pattern_prior_ranks_the_covid_pattern_first():
    from covidcxr.engine.diagnosis.heads import pattern_prior

    q = pattern_prior(_facts([0.9, 0.5, 0.2, 0.0], [0.8, 0.33, 0.1, 0.0], [0.3, 0.2, 0.0, 0.0]))
    # bilateral peripheral lower-zone > diffuse bilateral > unilateral central upper > no lesion at all
    assert q[0] > q[1] > q[2] > q[3] == 0.0 and (q <= 1).all()


def test_within_source_prior_learns_abnormal_only():
    x, y, src, _ = _shortcut_data()
    x = np.concatenate([x, _facts(*np.random.default_rng(1).random((3, len(y))))], axis=1)
    a = make_design("within_source_prior").fit(x, y, src)
    flipped = np.where(y == COVID, OTHER, np.where(y == OTHER, COVID, y))  # COVID-19 and other pneumonia swapped
    b = make_design("within_source_prior").fit(x, flipped, src)
    pa, pb = a.predict_proba(x), b.predict_proba(x)
    assert np.allclose(pa, pb)  # the COVID-19 factor reads no label
    assert np.allclose(pa.sum(1), 1)
    assert roc_auc_score(y != NORMAL, 1 - pa[:, NORMAL]) > 0.7  # the abnormal factor is learned
    with pytest.raises(ValueError, match="finding facts"):
        make_design("within_source_prior").fit(x[:, :5], y, src)


def test_within_archive_reads_no_label_of_a_source_whose_classes_come_from_two_hospitals():
    """covid19-radiography (COVID-19 from one hospital, normals from another) and hannover teach neither head."""
    x, y, src, _ = _shortcut_data()
    mixed = np.isin(src, ["covid19-radiography", "hannover"])
    shuffled = y.copy()
    shuffled[mixed] = np.random.default_rng(2).permutation(y[mixed])
    a = make_design("within_archive", has_facts=False).fit(x, y, src)
    b = make_design("within_archive", has_facts=False).fit(x, shuffled, src)
    np.testing.assert_allclose(a.predict_proba(x), b.predict_proba(x))
    c = make_design("within_source").fit(x, shuffled, src)  # the within-source design does read them
    assert not np.allclose(a.predict_proba(x), c.predict_proba(x))


def test_within_archive_without_covid_chestxray_falls_back_to_the_pattern_prior():
    from covidcxr.engine.diagnosis.heads import pattern_prior

    x, y, src, _ = _shortcut_data()
    facts = _facts(*np.random.default_rng(3).random((3, len(y))))
    keep = src != "covid-chestxray"
    with_facts = make_design("within_archive").fit(np.concatenate([x, facts], 1)[keep], y[keep], src[keep])
    p = with_facts.predict_proba(np.concatenate([x, facts], 1))
    np.testing.assert_allclose(p[:, COVID] / (1 - p[:, NORMAL]), pattern_prior(facts), atol=1e-9)
    wide = np.concatenate(
        [x, np.random.default_rng(4).random((len(y), 20))], 1
    )  # as many columns as facts, none of them facts
    no_facts = make_design("within_archive", has_facts=False).fit(wide[keep], y[keep], src[keep]).predict_proba(wide)
    np.testing.assert_allclose(no_facts[:, COVID], no_facts[:, OTHER])  # no facts, no pattern: one half each
    with pytest.raises(ValueError, match="finding facts"):
        make_design("within_archive").fit(x, y, src)  # told the facts are there, given six columns
    full = (
        make_design("within_archive", has_facts=False).fit(x, y, src).predict_proba(x)
    )  # covid-chestxray in training: learned
    covid, other = (y == COVID) & (src == "covid-chestxray"), (y == OTHER) & (src == "covid-chestxray")
    odds = full[:, COVID] / (1 - full[:, NORMAL])
    assert roc_auc_score(np.r_[np.ones(covid.sum()), np.zeros(other.sum())], np.r_[odds[covid], odds[other]]) > 0.75


def test_nonnegative_logistic_matches_the_unbounded_fit_when_it_can_and_clips_otherwise():
    from sklearn.linear_model import LogisticRegression

    from covidcxr.engine.diagnosis.heads import C, nonnegative_logistic

    rng = np.random.default_rng(0)
    d = rng.normal(size=(2000, 4)) + np.array([0.6, 0.3, 0.2, -0.4])  # the last fact ranks against the label
    w = rng.uniform(0.5, 1.5, len(d))
    free = LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(
        np.concatenate([d, -d]), np.r_[np.ones(len(d)), np.zeros(len(d))], sample_weight=np.r_[w, w]
    )
    bounded = nonnegative_logistic(d, w)
    assert free.coef_[0, 3] < -0.1 and bounded[3] == 0.0 and (bounded >= 0).all()
    both = nonnegative_logistic(d[:, :3], w)  # every unbounded weight already positive: the same fit
    ref = LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(
        np.concatenate([d[:, :3], -d[:, :3]]), np.r_[np.ones(len(d)), np.zeros(len(d))], sample_weight=np.r_[w, w]
    )
    assert np.allclose(both, ref.coef_[0], atol=1e-3)


def test_monotone_design_never_lowers_p_abnormal_as_a_fact_rises():
    x, y, src, _ = _shortcut_data()
    x[:, 3] -= 1.0 * (y != NORMAL)  # a style column that, inside every source, falls with disease
    model = make_design("within_source_monotone").fit(x, y, src)
    assert (model.abnormal.coef_ >= 0).all() and model.abnormal.coef_[3] == 0.0
    assert (make_design("within_source").fit(x, y, src).abnormal.coef_[3]) < 0
    base = np.zeros((1, x.shape[1]))
    for k in range(x.shape[1]):
        up = base.copy()
        up[0, k] += 2.0
        p0, p1 = (1 - model.predict_proba(v)[0, NORMAL] for v in (base, up))
        assert p1 >= p0 - 1e-12
