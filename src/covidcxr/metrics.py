"""Overlap and boundary metrics for masks, and bootstrap confidence intervals.

Dice and IoU skip the ignore region; HD95 is the 95th percentile of the symmetric
surface distances (in pixels of the evaluated image), computed with scipy's Euclidean
distance transform.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats


def _valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, bool) if valid is None else valid.astype(bool)


def dice(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Dice coefficient of two boolean masks over the ``valid`` pixels (1.0 when both are empty)."""
    v = _valid(valid, pred.shape)
    p, t = pred.astype(bool) & v, target.astype(bool) & v
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2 * (p & t).sum() / denom)


def iou(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Intersection over union over the ``valid`` pixels (1.0 when both are empty)."""
    v = _valid(valid, pred.shape)
    p, t = pred.astype(bool) & v, target.astype(bool) & v
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, target: np.ndarray) -> float:
    """95th-percentile Hausdorff distance in pixels; ``nan`` if exactly one mask is empty, 0 if both are."""
    p, t = pred.astype(bool), target.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    dist_to_t = ndimage.distance_transform_edt(~st)
    dist_to_p = ndimage.distance_transform_edt(~sp)
    d = np.concatenate([dist_to_t[sp], dist_to_p[st]])
    return float(np.percentile(d, 95))


def with_ci(r: dict, fmt: str = ".3f", sep: str = "–", ci_fmt: str | None = None, key: str = "value") -> str:
    """The one way a CI is written: ``value (low–high)`` of a :func:`bootstrap_ci` dict.

    Args:
        r: a dict with ``key`` (``value``, or ``mean`` for summaries over splits), ``ci_low``, ``ci_high``.
        fmt: format of the value (and of the bounds unless ``ci_fmt``), e.g. ``.3f``, ``+.4f``.
        sep: between the bounds: an en dash, or `` to `` where signed bounds would read as a range of negatives.
    """
    lo_hi = ci_fmt or fmt
    return f"{r[key]:{fmt}} ({r['ci_low']:{lo_hi}}{sep}{r['ci_high']:{lo_hi}})"


def bootstrap_ci(values, statistic=np.mean, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Point estimate and percentile-bootstrap CI of ``statistic`` over per-item values.

    Returns:
        ``{"value", "ci_low", "ci_high", "n"}``; the CI equals the value when n < 2.
    """
    x = np.asarray([v for v in values if np.isfinite(v)], float)
    if len(x) == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    value = float(statistic(x))
    if len(x) < 2 or np.ptp(x) == 0:
        return {"value": value, "ci_low": value, "ci_high": value, "n": len(x)}
    res = stats.bootstrap(
        (x,),
        statistic,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return {
        "value": value,
        "ci_low": float(res.confidence_interval.low),
        "ci_high": float(res.confidence_interval.high),
        "n": len(x),
    }


# ---------------------------------------------------------------------------
# Classification: ranking metrics with stratified bootstrap CIs, operating point, calibration


def stratified_bootstrap_ci(
    y_true, y_score, statistic, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """``statistic(y_true, y_score)`` with a percentile CI from resampling each class apart.

    Resampling within the positives and within the negatives keeps both present in every
    resample, so ranking metrics (AUROC, AUPRC) are defined for all of them.

    Returns:
        ``{"value", "ci_low", "ci_high", "n", "n_pos"}``; NaN when a class is absent.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, float)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": len(y), "n_pos": n_pos}
    value = float(statistic(y, s))
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    stats_ = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        stats_.append(statistic(y[idx], s[idx]))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats_, [alpha, 1 - alpha])
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": len(y), "n_pos": n_pos}


def class_stratified_bootstrap_ci(
    labels, scores, statistic, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """``statistic(labels, scores)`` of a multi-class problem with a CI from resampling each class apart.

    The multi-class form of :func:`stratified_bootstrap_ci` (e.g. macro AUROC over (N, K)
    probabilities): every resample keeps each class's count, so every class stays present.

    Returns:
        ``{"value", "ci_low", "ci_high", "n"}``; NaN when fewer than two classes are present.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, float)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    if len(groups) < 2:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": len(y)}
    value = float(statistic(y, s))
    rng = np.random.default_rng(seed)
    stats_ = []
    for _ in range(n_resamples):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        stats_.append(statistic(y[idx], s[idx]))
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(stats_, [alpha, 1 - alpha])
    return {"value": value, "ci_low": float(low), "ci_high": float(high), "n": len(y)}


def operating_point(y_true, y_pred) -> dict:
    """Sensitivity, specificity and PPV of binary decisions (NaN where undefined)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def calibration(labels, probs, n_bins: int = 10) -> dict:
    """Expected calibration error of the top-class confidence, and the reliability bins.

    Returns:
        ``{"ece", "bins": [{"low", "high", "n", "confidence", "accuracy"}…]}`` (equal-width bins).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, float)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        if n:
            c, a = float(conf[inside].mean()), float(correct[inside].mean())
            ece += n / len(labels) * abs(c - a)
            bins.append({"low": float(lo), "high": float(hi), "n": n, "confidence": c, "accuracy": a})
    return {"ece": float(ece) if len(labels) else float("nan"), "bins": bins}
