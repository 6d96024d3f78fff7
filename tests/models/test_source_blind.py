"""The source-blind stage-2 model: lung pooling as in training, exact class activation, folded heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidcxr.engine.diagnosis.features import lung_pooled
from covidcxr.engine.diagnosis.heads import WithinSource
from covidcxr.infer.findings import FACTS, finding_facts, findings_summary
from covidcxr.models import create_model
from covidcxr.models.source_blind import fold_head
from covidcxr.views import cam_maps, heads_inputs


def _model(**kw):
    torch.manual_seed(0)
    return create_model("source_blind_heads", in_chans=1, num_classes=3, **kw).eval()


def _views(n=3, size=64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lungs = np.zeros((1, size, size), np.float32)
        lungs[0, 8:56, 6:28] = 1
        lungs[0, 8:56, 36:58] = 1
        out.append((rng.random((1, size, size)).astype(np.float32) * lungs, lungs))
    return out


def test_model_pools_inside_the_lungs_as_training_does():
    model = _model(n_facts=len(FACTS))
    views = _views()
    batch = heads_inputs(views, "masked", 2, [np.zeros(len(FACTS), np.float32)] * 3, len(FACTS))
    with torch.no_grad():
        pooled, _ = model.pooled(torch.from_numpy(batch["x"]), torch.from_numpy(batch["weights"]))
        fmap = model.backbone.forward_features(torch.from_numpy(batch["x"])).numpy()
    np.testing.assert_allclose(pooled.numpy(), lung_pooled(fmap, [v[1][0] for v in views]), rtol=1e-4, atol=1e-5)


def test_class_activation_adds_up_to_the_image_part_of_the_logit():
    model = _model(n_facts=0, head="multinomial")
    batch = heads_inputs(_views(), "masked", 2, None, 0)
    with torch.no_grad():
        x, w = torch.from_numpy(batch["x"]), torch.from_numpy(batch["weights"])
        _, shared = model.pooled(x, w)
        per_pos = torch.einsum("kc,nchw->nkhw", model.linear.weight, shared)
        logits, cam = model(x, w, torch.zeros(3, 0))
        expected = per_pos.sum(dim=(2, 3)) + model.linear.bias
    np.testing.assert_allclose(expected.numpy(), logits.numpy(), rtol=1e-4, atol=1e-4)
    assert torch.equal(cam, torch.relu(per_pos))
    maps = cam_maps(cam.numpy(), [0, 1, 2], 64)
    assert maps.shape == (3, 64, 64) and maps.max() <= 1 + 1e-6 and maps.min() >= 0


def test_factorised_logits_are_the_log_probabilities_of_the_factors():
    model = _model(n_facts=len(FACTS))
    batch = heads_inputs(
        _views(), "masked", 2, [np.random.default_rng(1).random(len(FACTS)).astype(np.float32)] * 3, len(FACTS)
    )
    with torch.no_grad():
        logits, _ = model(*(torch.from_numpy(batch[k]) for k in ("x", "weights", "facts")))
    p = torch.softmax(logits, 1)
    np.testing.assert_allclose(logits.exp().sum(1), 1, rtol=1e-5)
    assert torch.allclose(p, logits.exp(), atol=1e-6)


def test_missing_facts_are_refused_in_words():
    with pytest.raises(ValueError, match="severity"):
        heads_inputs(_views(1), "masked", 2, None, len(FACTS))


def test_folded_heads_give_the_fitted_probabilities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) * 3 + 7
    labels = rng.integers(0, 3, 300)
    x[:, 0] += 2 * (labels != 2)
    sources = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    fitted = WithinSource().fit(x, labels, sources)
    mean, scale = torch.from_numpy(fitted.scaler.mean_), torch.from_numpy(fitted.scaler.scale_)
    (w0, b0), (w1, b1) = (
        fold_head(torch.from_numpy(h.coef_), mean, scale, h.a_, h.b_) for h in (fitted.abnormal, fitted.covid)
    )
    z = torch.from_numpy(x) @ torch.stack([w0, w1]).T + torch.stack([b0, b1])
    p_abn, q = torch.sigmoid(z[:, 0]), torch.sigmoid(z[:, 1])
    expected = fitted.predict_proba(x)
    np.testing.assert_allclose(torch.stack([p_abn * q, p_abn * (1 - q), 1 - p_abn], 1).numpy(), expected, atol=1e-8)


def test_finding_facts_and_summary():
    zones = np.zeros((64, 64), np.uint8)
    zones[10:50, 5:28] = np.repeat(np.repeat([[1], [2], [3]], 14, axis=0)[:40], 23, axis=1)
    zones[10:50, 36:60] = zones[10:50, 5:29] + 3 * (zones[10:50, 5:29] > 0)
    lesions = np.zeros((2, 64, 64), bool)
    lesions[0, 40:50, 5:12] = True  # right lung, lateral, lower zone
    severity = {
        "geographic_extent": 2.0,
        "opacity": 1.5,
        "brixia": dict.fromkeys("ABCDEF", 0.5),
        "lesions": {
            "ground-glass": {"right_lung": 0.1, "left_lung": 0.0},
            "consolidation": {"right_lung": 0.0, "left_lung": 0.0},
        },
    }
    facts = dict(zip(FACTS, finding_facts(severity, lesions, zones)))
    assert (
        facts["bilateral"] == 0
        and facts["peripheral"] == 1
        and facts["lower_zone"] == 1
        and 0 < facts["lesion_share"] < 0.1
    )
    summary = findings_summary(
        {"COVID-19": 0.3, "Other pneumonia": 0.1, "No finding": 0.6}, np.array(list(facts.values()))
    )
    assert (
        summary["airspace_opacity"] == {"present": False, "probability": 0.4, "threshold": 0.5}
        and summary["covid_pattern"]["score"] == 0.75
    )
    # The operating point moves the opacity decision with the headline's.
    low = findings_summary(
        {"COVID-19": 0.3, "Other pneumonia": 0.1, "No finding": 0.6}, np.array(list(facts.values())), 0.35
    )
    assert low["airspace_opacity"] == {"present": True, "probability": 0.4, "threshold": 0.35}


def test_within_archive_heads_fold_into_the_shipped_model():
    from covidcxr.engine.diagnosis.heads import WithinArchive
    from covidcxr.engine.diagnosis.train import build_model, heads_probabilities

    rng = np.random.default_rng(1)
    n = 400
    facts = rng.normal(size=(n, len(FACTS))) + 3
    labels = rng.integers(0, 3, n)
    facts[:, 0] += 2 * (labels != 2)
    sources = np.array(["covid-chestxray", "kermany-pediatric", "nih-chestxray8", "hannover"])[rng.integers(0, 4, n)]
    fitted = WithinArchive().fit(facts, labels, sources)
    model = build_model(fitted, "findings", "imagenet-file:unused")
    assert model.head_kind == "factorised"
    got = heads_probabilities(model, {"names": np.arange(n), "findings": facts.astype(np.float32)})
    np.testing.assert_allclose(got, fitted.predict_proba(facts), atol=1e-4)
    keep = sources != "covid-chestxray"
    with pytest.raises(ValueError, match="no learned COVID-19 head"):
        build_model(WithinArchive().fit(facts[keep], labels[keep], sources[keep]), "findings", "imagenet-file:unused")


def test_within_source_prior_folds_its_abnormal_head_and_computes_the_pattern_prior():
    """The shipped design: P(abnormal) folded into one linear row, P(COVID-19 | abnormal) the unlearned pattern prior."""
    from covidcxr.engine.diagnosis.heads import WithinSourcePrior, pattern_prior
    from covidcxr.engine.diagnosis.train import build_model, heads_probabilities

    rng = np.random.default_rng(2)
    n = 400
    facts = rng.uniform(0, 1, size=(n, len(FACTS)))
    facts[: n // 4, FACTS.index("bilateral")] = 0  # no lesion in the other lung
    facts[: n // 8, [FACTS.index("peripheral"), FACTS.index("lower_zone")]] = 0  # no lesion at all: prior 0
    labels = rng.integers(0, 3, n)
    facts[:, 0] += 2 * (labels != 2)
    sources = np.array(["covid-chestxray", "kermany-pediatric", "nih-chestxray8", "hannover"])[rng.integers(0, 4, n)]
    fitted = WithinSourcePrior().fit(facts, labels, sources)
    model = build_model(fitted, "findings", "imagenet-file:unused")
    assert model.head_kind == "factorised_prior" and model.linear.out_features == 1
    got = heads_probabilities(model, {"names": np.arange(n), "findings": facts.astype(np.float32)})
    np.testing.assert_allclose(got, fitted.predict_proba(facts), atol=1e-4)
    covid_share = got[:, 0] / (got[:, 0] + got[:, 1])
    np.testing.assert_allclose(covid_share, pattern_prior(facts), atol=1e-4)
    with pytest.raises(ValueError, match="prior_columns"):
        create_model("source_blind_heads", num_classes=3, n_facts=16, image=False, head="factorised_prior")


def test_a_spec_written_under_the_former_name_still_loads(tmp_path):
    """Specs exported before the rename carry ``source_blind_mobilenet_v2``: they load as the same heads."""
    import json

    from covidcxr.models import list_models, load_weights
    from covidcxr.models.source_blind import SourceBlindHeads
    from covidcxr.models.weights import shipped_spec_path

    shipped = shipped_spec_path("diagnosis")
    spec = json.loads(shipped.read_text())
    spec["architecture"] = "source_blind_mobilenet_v2"
    (tmp_path / spec["file"]).write_bytes((shipped.parent / spec["file"]).read_bytes())
    (tmp_path / "old.json").write_text(json.dumps(spec))
    model, _ = load_weights(tmp_path / "old.json", kind="diagnosis")
    assert isinstance(model, SourceBlindHeads) and "source_blind_mobilenet_v2" not in list_models()
