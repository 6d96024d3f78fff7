"""Severity scores from features: ridge regressions on repeated patient-grouped splits, the shipped head, the report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...data.severity import LESIONS
from ...infer.zones import RANGES, columns
from ...metrics import with_ci
from ...models import create_model
from .data import SeverityConfig


def ridge():
    """Standardised features, then ridge regression with its alpha chosen by leave-one-out."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15)))


def _scores(y: np.ndarray, pred: np.ndarray) -> dict:
    from scipy.stats import pearsonr
    from sklearn.metrics import mean_absolute_error, r2_score

    r = (
        pearsonr(y, pred).statistic if np.ptp(pred) > 1e-6 and np.ptp(y) > 1e-6 else float("nan")
    )  # undefined for a constant
    return {"mae": float(mean_absolute_error(y, pred)), "r2": float(r2_score(y, pred)), "pearson_r": float(r)}


def _summary(per_split: list[dict]) -> dict:
    """Mean over splits and the 2.5-97.5 percentile interval of each metric."""
    out = {}
    for key in per_split[0]:
        v = np.array([d[key] for d in per_split], float)
        if np.isnan(v).all():  # e.g. Pearson r of a constant baseline
            out[key] = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
            continue
        out[key] = {
            "mean": float(np.nanmean(v)),
            "ci_low": float(np.nanpercentile(v, 2.5)),
            "ci_high": float(np.nanpercentile(v, 97.5)),
        }
    return out


def repeated_splits(groups: np.ndarray, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` random 50/50 splits of the rows, no patient on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    return list(
        GroupShuffleSplit(n_splits=repeats, test_size=0.5, random_state=seed).split(
            np.zeros(len(groups)), groups=groups
        )
    )


def evaluate_scores(
    features: np.ndarray,
    targets: dict[str, np.ndarray],
    groups: np.ndarray,
    repeats: int,
    seed: int,
    clip: dict[str, tuple[float, float]],
    extra: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Ridge regression vs the training-half mean on repeated patient-grouped 50/50 splits.

    ``extra(test)``, when given, returns (N, k) more feature columns for one split, computed
    without the test half's patients (see :func:`stacked_brixia`).

    Returns:
        per target: ``model`` and ``mean_baseline`` metric summaries (MAE, R², Pearson r),
        and ``predictions``: each image's mean test-half prediction (for the scatter plot).
    """
    out = {}
    splits = repeated_splits(groups, repeats, seed)
    split_features = [np.concatenate([features, extra(test)], axis=1) if extra else features for _, test in splits]
    for name, y in targets.items():
        model_s, base_s = [], []
        pred_sum, pred_n = np.zeros(len(y)), np.zeros(len(y))
        for (train, test), x in zip(splits, split_features):
            pred = np.clip(ridge().fit(x[train], y[train]).predict(x[test]), *clip[name])
            model_s.append(_scores(y[test], pred))
            base_s.append(_scores(y[test], np.full(len(test), y[train].mean())))
            pred_sum[test] += pred
            pred_n[test] += 1
        out[name] = {
            "model": _summary(model_s),
            "mean_baseline": _summary(base_s),
            "predictions": (pred_sum / np.maximum(pred_n, 1)).tolist(),
            "n": len(y),
        }
    return out


def evaluate_brixia(
    zone_features: np.ndarray, senior: np.ndarray, junior: np.ndarray, groups: np.ndarray, repeats: int, seed: int
) -> dict:
    """Zone-level ridge (all six zones, one model) on repeated 50/50 splits; global = sum of zones.

    Args:
        zone_features: (N, 6, D); senior, junior: (N, 6) zone scores.
    """
    n = len(senior)
    model_s, base_s, junior_s = [], [], []
    pred_sum, pred_n = np.zeros(n), np.zeros(n)
    for train, test in repeated_splits(groups, repeats, seed):
        zones = zone_scores(zone_ridge(zone_features[train], senior[train]), zone_features[test])
        mean_zone = senior[train].mean(axis=0)
        for scores, pred in (
            (model_s, zones),
            (base_s, np.broadcast_to(mean_zone, zones.shape)),
            (junior_s, junior[test].astype(float)),
        ):
            g = _scores(senior[test].sum(1).astype(float), pred.sum(1))
            scores.append(
                {"global_" + k: v for k, v in g.items()} | {"zone_mae": float(np.abs(pred - senior[test]).mean())}
            )
        pred_sum[test] += zones.sum(1)
        pred_n[test] += 1
    return {
        "model": _summary(model_s),
        "mean_baseline": _summary(base_s),
        "junior_rater": _summary(junior_s),
        "predictions": (pred_sum / np.maximum(pred_n, 1)).tolist(),
        "n": n,
    }


def zone_ridge(zone_features: np.ndarray, zone_targets: np.ndarray):
    """One ridge for all six zones: (N, 6, D) features, (N, 6) scores."""
    return ridge().fit(zone_features.reshape(-1, zone_features.shape[2]), zone_targets.reshape(-1))


def zone_scores(reg, zone_features: np.ndarray) -> np.ndarray:
    """(N, 6) zone scores of a :func:`zone_ridge`, clipped to the zone scale (as the pipeline does)."""
    return np.clip(
        reg.predict(zone_features.reshape(-1, zone_features.shape[2])).reshape(zone_features.shape[:2]), *RANGES["zone"]
    )


def stacked_brixia(
    brixia_zones: np.ndarray,
    senior: np.ndarray,
    brixia_groups: np.ndarray,
    brixia_names: list[str],
    zone_features: np.ndarray,
    names: list[str],
    pool: np.ndarray,
    folds: int = 5,
) -> np.ndarray:
    """Predicted Brixia global score of each of ``names`` (N,), from zone ridges fitted on Brixia images only.

    The zone ridge is fitted on the Brixia images in ``pool`` (a boolean mask). An image that is
    itself in the pool gets the prediction of a ridge fitted without its patient (``folds``
    patient folds of the pool), so no image is scored by a ridge that saw its senior scores:
    the extent/opacity ridge then learns how a held-out Brixia prediction relates to its target.

    Args:
        brixia_zones: (M, 6, D) zone features of the Brixia images; senior (M, 6); brixia_groups (M,) patients.
        zone_features: (N, 6, D) zone features of the images to score.
    """
    from sklearn.model_selection import GroupKFold

    idx = np.nonzero(pool)[0]
    out = zone_scores(zone_ridge(brixia_zones[idx], senior[idx]), zone_features).sum(1)
    row = {n: i for i, n in enumerate(names)}
    k = min(folds, len(set(brixia_groups[idx])))
    if k < 2:
        return out
    for fit, held in GroupKFold(n_splits=k).split(idx, groups=brixia_groups[idx]):
        rows = [row[brixia_names[j]] for j in idx[held] if brixia_names[j] in row]
        if rows:
            out[rows] = zone_scores(zone_ridge(brixia_zones[idx[fit]], senior[idx[fit]]), zone_features[rows]).sum(1)
    return out


def fit_heads(
    cfg: SeverityConfig,
    image_features: np.ndarray,
    targets: np.ndarray,
    zone_features: np.ndarray,
    zone_targets: np.ndarray,
    brixia_global: np.ndarray | None = None,
) -> torch.nn.Module:
    """The shipped severity head: ridge fits turned into a :class:`SeverityHead`.

    Args:
        image_features (N, D) with targets (N, 2) geographic extent, opacity;
        zone_features (M, 6, Dz) with zone_targets (M, 6) senior Brixia zones;
        brixia_global (N,): with ``cfg.image_brixia``, each scored image's held-out predicted
            Brixia global score (:func:`stacked_brixia`), appended to its image features.
    """
    img_cols, zone_cols = columns(cfg.image_groups, zone=False), columns(cfg.zone_groups, zone=True)
    head = create_model(
        "severity_linear",
        num_classes=3,
        image_groups=cfg.image_groups,
        zone_groups=cfg.zone_groups,
        image_in=len(img_cols),
        zone_in=len(zone_cols),
        image_brixia=cfg.image_brixia,
    )
    x = image_features[:, img_cols]
    if cfg.image_brixia:
        if brixia_global is None:
            raise ValueError("image_brixia: pass each image's held-out predicted Brixia global score")
        x = np.concatenate([x, np.asarray(brixia_global, x.dtype)[:, None]], axis=1)
    fits = [ridge().fit(x, targets[:, j]) for j in range(targets.shape[1])]
    zfit = zone_ridge(zone_features[:, :, zone_cols], zone_targets)
    with torch.no_grad():
        for name, linear, parts in (("image", head.image, fits), ("zone", head.zone, [zfit])):
            scaler = parts[0][0]
            getattr(head, f"{name}_mean").copy_(torch.from_numpy(scaler.mean_))
            getattr(head, f"{name}_scale").copy_(torch.from_numpy(scaler.scale_))
            for j, p in enumerate(parts):
                assert np.allclose(p[0].mean_, scaler.mean_)  # one scaler per feature matrix
                linear.weight[j] = torch.from_numpy(p[1].coef_)
                linear.bias[j] = float(p[1].intercept_)
    return head.eval()


def markdown(result: dict) -> str:
    """The evaluation as Markdown tables."""

    def fmt(d: dict) -> str:
        return with_ci(d, ".2f", key="mean")

    p = result["protocol"]
    lines = [
        f"Severity: {p['repeats']} {p['split']} (seed {p['seed']}); mean over splits (2.5–97.5 percentile). Lesion maps: out of fold ({p['folds']} patient folds). "
        f"Extent and opacity read: {', '.join(p.get('image_features', [])) or 'see config'}.",
        "",
        "| score | n | model MAE | mean-baseline MAE | model R² | model Pearson r |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["scores"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {r['n']} | {fmt(r['model']['mae'])} | {fmt(r['mean_baseline']['mae'])} | {fmt(r['model']['r2'])} | {fmt(r['model']['pearson_r'])} |"
        )
    b = result["brixia"]
    lines += ["", "| Brixia vs senior rater | n | global MAE | zone MAE | global Pearson r |", "|---|---|---|---|---|"]
    for who in ("model", "junior_rater", "mean_baseline"):
        lines.append(
            f"| {who.replace('_', ' ')} | {b['n']} | {fmt(b[who]['global_mae'])} | {fmt(b[who]['zone_mae'])} | {fmt(b[who]['global_pearson_r'])} |"
        )
    lines += [
        "",
        "| lesion | Dice (95% CI), marked images | model finds it, radiologists did not | radiologists marked it, model finds none |",
        "|---|---|---|---|",
    ]
    for name in LESIONS:
        r = result["lesions"][name]
        d = f"{with_ci(r['dice'])}, n = {r['dice']['n']}" if r["dice"] else "n/a"
        lines.append(
            f"| {name} | {d} | {r['model_only']['rate']:.0%} of {r['model_only']['n']} | {r['radiologist_only']['rate']:.0%} of {r['radiologist_only']['n']} |"
        )
    if "test_no_finding_with_lesions" in result["lesions"]:
        t = result["lesions"]["test_no_finding_with_lesions"]
        lines += [
            "",
            f"Test-split 'No finding' images where the shipped lesion model finds lesions (≥ 1% of the lungs): {t['rate']:.0%} of {t['n']}.",
        ]
    if result.get("ablation"):
        lines += [
            "",
            "Ablation: the same ridges on one set of feature groups each (extent and opacity without the Brixia score).",
            "",
            "| feature groups | geographic extent MAE | opacity MAE | Brixia global MAE |",
            "|---|---|---|---|",
        ]
        for name, r in result["ablation"].items():
            lines.append(f"| {name} | {r['geographic_extent']:.2f} | {r['opacity']:.2f} | {r['brixia_global']:.2f} |")
    return "\n".join(lines) + "\n"
