"""The headline's operating point: the P(abnormal) threshold chosen by the rule of docs/experiments/operating-point.md.

The headline is two decisions (:func:`covidcxr.infer.diagnosis.headline`): airspace disease or
No finding by P(abnormal) = 1 - P(No finding) at a threshold, then COVID-19 or other pneumonia
by P(COVID-19 | abnormal) at 1/2. :func:`choose_threshold` applies the rule to validation
readings: sensitivity for pneumonia of any cause at least :data:`MIN_SENSITIVITY`, the sources
with pneumonia weighted equally, at the best specificity that allows (sources with No finding
weighted equally). :func:`loso_operating_points` estimates it at a hospital never seen: for each
fold of :data:`covidcxr.engine.diagnosis.loso.FOLDS` the heads are refitted without the sources
left out, the threshold is chosen by the same rule on the other sources' validation images, and
it is applied to every image of the sources left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...infer.categories import CATEGORIES, rsna_category
from ...infer.diagnosis import headline
from .heads import COVID, NORMAL, OTHER, make_design
from .loso import FOLDS, feature_matrix, has_facts, sample_rows

log = logging.getLogger(__name__)

MIN_SENSITIVITY = 0.85
#: P(COVID-19 | abnormal) at or above this reads COVID-19 (not fitted: near chance, see the rule).
COVID_GIVEN_ABNORMAL = 0.5
TARGETS = ("COVID-19", "Other pneumonia", "No finding")


def per_source_rates(p_abn: np.ndarray, labels: np.ndarray, sources: np.ndarray, t: float) -> dict:
    """Sensitivity (pneumonia of any cause read as disease) and specificity (No finding read as such) per source.

    Returns:
        ``{"sensitivity": {source: rate}, "specificity": {source: rate}, "n_pneumonia": {...}, "n_normal": {...}}``;
        a source without pneumonia (without No finding) is left out of the first (second).
    """
    out: dict = {"sensitivity": {}, "specificity": {}, "n_pneumonia": {}, "n_normal": {}}
    called = p_abn >= t
    for src in sorted(set(sources.tolist())):
        here = sources == src
        pos, neg = here & (labels != NORMAL), here & (labels == NORMAL)
        if pos.any():
            out["sensitivity"][src], out["n_pneumonia"][src] = float(called[pos].mean()), int(pos.sum())
        if neg.any():
            out["specificity"][src], out["n_normal"][src] = float((~called[neg]).mean()), int(neg.sum())
    return out


def balanced(rates: dict[str, float]) -> float:
    """The mean over sources (each weighted equally); NaN without any."""
    return float(np.mean(list(rates.values()))) if rates else float("nan")


def choose_threshold(
    p_abn: np.ndarray, labels: np.ndarray, sources: np.ndarray, min_sensitivity: float = MIN_SENSITIVITY
) -> dict:
    """The rule: the highest threshold whose source-balanced sensitivity is at least ``min_sensitivity``.

    Specificity cannot fall as the threshold rises, so the highest threshold that keeps the
    sensitivity is the best specificity that allows. The threshold returned lies halfway between
    the last P(abnormal) of a pneumonia film it must keep and the next lower validation value, so it
    reads validation exactly as that choice and leaves room on either side.

    Args:
        p_abn: (N,) P(abnormal) of the validation readings.
        labels: (N,) class indices (``CLASSES``); sources: (N,) source names.

    Returns:
        ``{"p_abnormal", "sensitivity", "specificity", "per_source", "n"}`` at the chosen threshold.
    """
    p_abn, labels, sources = np.asarray(p_abn, np.float64), np.asarray(labels), np.asarray(sources)
    if not (labels != NORMAL).any():
        raise ValueError("no pneumonia film among the readings: the operating point needs COVID-19 or other pneumonia")
    values = np.unique(p_abn)[::-1]  # high to low: the first that reaches the sensitivity is the best specificity
    chosen = 0.0
    for k, v in enumerate(values):
        if balanced(per_source_rates(p_abn, labels, sources, v)["sensitivity"]) >= min_sensitivity:
            lower = values[k + 1] if k + 1 < len(values) else 0.0
            chosen = float((v + lower) / 2)
            break
    rates = per_source_rates(p_abn, labels, sources, chosen)
    return {
        "p_abnormal": round(chosen, 6),
        "sensitivity": round(balanced(rates["sensitivity"]), 4),
        "specificity": round(balanced(rates["specificity"]), 4),
        "per_source": rates,
        "n": int(len(p_abn)),
    }


def operating_point_spec(chosen: dict, fitted_on: str) -> dict:
    """The spec's ``operating_point`` field from :func:`choose_threshold`'s answer."""
    return {
        "p_abnormal": chosen["p_abnormal"],
        "covid_given_abnormal": COVID_GIVEN_ABNORMAL,
        "rule": "docs/experiments/operating-point.md",
        "fitted_on": fitted_on,
        "validation": {"sensitivity": chosen["sensitivity"], "specificity": chosen["specificity"]},
    }


def source_report(probs: np.ndarray, labels: np.ndarray, facts: np.ndarray | None, t: float | np.ndarray) -> dict:
    """What the headline says of a group of films at threshold ``t``: rates, COVID-19 calls and categories.

    Args:
        probs: (N, 3) probabilities over ``CLASSES``; labels: (N,) class indices.
        facts: (N, len(FACTS)) finding facts for the categories (None: no categories).
        t: the operating point on P(abnormal), one for all or (N,) one per film (films of several folds).
    """
    p_abn = 1.0 - probs[:, NORMAL]
    disease = p_abn >= t
    called = headline(probs, TARGETS, {"p_abnormal": t, "covid_given_abnormal": COVID_GIVEN_ABNORMAL})
    out: dict = {"n": int(len(labels))}
    for name, cls in (("covid", COVID), ("other", OTHER)):
        rows = labels == cls
        if rows.any():
            out[f"{name}_read_as_disease"] = round(float(disease[rows].mean()), 4)
            out[f"{name}_read_as_covid"] = round(float((called[rows] == COVID).mean()), 4)
            out[f"n_{name}"] = int(rows.sum())
    normal = labels == NORMAL
    if normal.any():
        out["normal_read_as_no_finding"] = round(float((~disease[normal]).mean()), 4)
        out["n_normal"] = int(normal.sum())
    if facts is not None:
        cats = np.array([rsna_category(f, bool(d))["code"] for f, d in zip(facts, disease, strict=True)])
        out["categories"] = {c: round(float((cats == c).mean()), 4) for c in CATEGORIES}
        out["covid_share_by_category"] = {
            c: {"covid": round(float((labels[cats == c] == COVID).mean()), 4), "n": int((cats == c).sum())}
            for c in CATEGORIES
            if (cats == c).any()
        }
    return out


#: The folds that leave each source out once (the "covid19-radiography + NIH" fold repeats two of them).
SINGLE_FOLDS = ("covid-chestxray", "covid19-radiography", "hannover", "kermany-pediatric", "NIH")


def loso_operating_points(
    features: dict, samples: list[dict], design: str, feature_set: str, seed: int = 0, min_sensitivity: float = 0.85
) -> dict:
    """Each LOSO fold's threshold (chosen on the other sources' validation images) and what it gives on the sources left out.

    Returns:
        ``{"folds": {fold name: {"threshold", "validation", "sources": {source: source_report}}},
        "pooled": source_report of every film once}``: each film scored in the fold that left its source
        out (:data:`SINGLE_FOLDS`), at that fold's threshold.
    """
    rows = sample_rows(features, samples)
    labels = np.array([s["label"] for s in rows])
    sources = np.array([s["dataset"] for s in rows])
    splits = np.array([s["split"] for s in rows])
    x = feature_matrix(features, feature_set)
    facts = np.asarray(features["findings"], np.float64) if len(features["findings"]) == len(rows) else None
    out, pooled = {}, []
    for fold, left_out in FOLDS.items():
        held = np.isin(sources, left_out)
        model = make_design(design, has_facts(feature_set))
        model.fit(
            x[~held & (splits == "train")],
            labels[~held & (splits == "train")],
            sources[~held & (splits == "train")],
            seed=seed,
        )
        val = ~held & (splits == "val")
        chosen = choose_threshold(
            1.0 - model.predict_proba(x[val])[:, NORMAL], labels[val], sources[val], min_sensitivity
        )
        t = chosen["p_abnormal"]
        p_held = model.predict_proba(x[held])
        out[fold] = {
            "threshold": t,
            "validation": {k: chosen[k] for k in ("sensitivity", "specificity", "n")},
            "sources": {
                src: source_report(
                    p_held[sources[held] == src],
                    labels[held][sources[held] == src],
                    None if facts is None else facts[held][sources[held] == src],
                    t,
                )
                for src in left_out
                if (sources[held] == src).any()
            },
        }
        if fold in SINGLE_FOLDS:
            pooled.append((p_held, labels[held], None if facts is None else facts[held], np.full(int(held.sum()), t)))
        log.info("LOSO fold %s: threshold %.3f chosen on %d validation images", fold, t, int(val.sum()))
    probs, labs, fs, ts = (None if parts[0] is None else np.concatenate(parts) for parts in zip(*pooled))
    return {"folds": out, "pooled": source_report(probs, labs, fs, ts)}


def loso_summary(loso: dict) -> dict:
    """The rates of :func:`loso_operating_points` per source left out, for the spec (no categories)."""
    keys = ("covid_read_as_disease", "other_read_as_disease", "normal_read_as_no_finding", "covid_read_as_covid")
    out = {}
    for fold, r in loso["folds"].items():
        for src, rep in r["sources"].items():
            name = src if fold in SINGLE_FOLDS else f"{src} ({fold} left out)"
            out[name] = {"threshold": r["threshold"], **{k: rep[k] for k in keys if k in rep}}
    return out


def abnormal_calibration(labels: np.ndarray, probs: np.ndarray, sources: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability of P(abnormal) per source and pooled: how often films at each probability are pneumonia.

    Returns:
        source (and ``all sources``) -> ``{"n", "ece", "bins": [{"low", "high", "n", "mean_p", "observed"}]}``
        over equal-width bins; a bin without films is left out.
    """
    p_abn = 1.0 - np.asarray(probs, np.float64)[:, NORMAL]
    y = np.asarray(labels) != NORMAL
    groups = {src: np.asarray(sources) == src for src in sorted(set(np.asarray(sources).tolist()))}
    groups["all sources"] = np.ones(len(y), bool)
    edges = np.linspace(0, 1, n_bins + 1)
    out = {}
    for name, rows in groups.items():
        p, t = p_abn[rows], y[rows]
        idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
        bins, ece = [], 0.0
        for b in range(n_bins):
            here = idx == b
            if here.any():
                mean_p, observed = float(p[here].mean()), float(t[here].mean())
                bins.append(
                    {"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(here.sum()),
                     "mean_p": round(mean_p, 4), "observed": round(observed, 4)}
                )  # fmt: skip
                ece += here.sum() / len(p) * abs(mean_p - observed)
        out[name] = {"n": int(rows.sum()), "ece": round(float(ece), 4), "bins": bins}
    return out


def calibration_markdown(cal: dict) -> str:
    """One table per source: P(abnormal) bin, films, mean P(abnormal), share that is pneumonia."""
    lines = ["# P(abnormal) reliability per source", ""]
    for name, r in cal.items():
        lines += [f"## {name} (n = {r['n']}, ECE {r['ece']:.3f})", "", "| P(abnormal) | n | mean P | pneumonia share |"]
        lines.append("|---|---|---|---|")
        lines += [
            f"| {b['low']:.1f}-{b['high']:.1f} | {b['n']} | {b['mean_p']:.3f} | {b['observed']:.3f} |"
            for b in r["bins"]
        ]
        lines.append("")
    return "\n".join(lines)


def plot_abnormal_calibration(cal: dict, path: str | Path, threshold: float | None = None) -> None:
    """Reliability curves of P(abnormal), one line per source, the operating point as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=0.8, label="perfect calibration")
    for name, r in cal.items():
        bins = r["bins"]
        style = {"color": "black", "lw": 2.2} if name == "all sources" else {"lw": 1.2}
        ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], marker="o", ms=3,
                label=f"{name} (ECE {r['ece']:.2f})", **style)  # fmt: skip
    if threshold is not None:
        ax.axvline(threshold, color="C3", ls=":", lw=1, label=f"operating point {threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean P(abnormal) in the bin", ylabel="share of films with pneumonia")
    ax.set_title("Calibration of P(abnormal) per source")
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_abnormal_calibration(
    labels: np.ndarray, probs: np.ndarray, sources: np.ndarray, out: Path, threshold: float | None = None
) -> dict:
    """``calibration_abnormal.md`` and ``calibration_abnormal.png`` in ``out``; returns n and ECE per source."""
    cal = abnormal_calibration(labels, probs, sources)
    (Path(out) / "calibration_abnormal.md").write_text(calibration_markdown(cal))
    plot_abnormal_calibration(cal, Path(out) / "calibration_abnormal.png", threshold)
    return {k: {"n": v["n"], "ece": v["ece"]} for k, v in cal.items()}
