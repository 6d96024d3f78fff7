"""Leave-one-source-out (LOSO): the development-time estimate of a new hospital.

For each fold a stage-2 design is fitted on the train split of every source but the ones
left out, with the same recipe, and scores every image of the sources left out (none of
them was seen in training). Each left-out source is scored on the comparisons it holds:

    covid19-radiography  COVID-19 vs No finding        P(COVID-19)
    covid-chestxray      COVID-19 vs Other pneumonia   P(COVID-19) / (P(COVID-19) + P(Other))
    NIH (both folders)   Other pneumonia vs No finding 1 - P(No finding)
    kermany-pediatric    pneumonia vs normal           1 - P(No finding)
    hannover             COVID-19 sensitivity at the operating point (argmax)

covid19-radiography's normals are RSNA images drawn from the NIH archive, so a model that
learned "NIH look = normal" scores well there for the wrong reason: its comparison is also
reported with both NIH folders left out (the ``covid19-radiography + NIH`` fold), and that is
the one the selection rule reads (docs/experiments/stage2-source-blind.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from ...metrics import stratified_bootstrap_ci, with_ci
from .heads import COVID, NORMAL, OTHER, make_design

log = logging.getLogger(__name__)

NIH = ("nih-chestxray8", "nih-chestxray14")
#: fold name -> sources left out of training.
FOLDS = {
    "covid-chestxray": ("covid-chestxray",),
    "covid19-radiography": ("covid19-radiography",),
    "covid19-radiography + NIH": ("covid19-radiography", *NIH),
    "hannover": ("hannover",),
    "kermany-pediatric": ("kermany-pediatric",),
    "NIH": NIH,
}
#: comparison name -> (fold, sources scored, positive classes, negative classes, score).
COMPARISONS = {
    "covid19-radiography COVID-19 vs No finding": (
        "covid19-radiography",
        ("covid19-radiography",),
        (COVID,),
        (NORMAL,),
        "covid",
    ),
    "covid19-radiography COVID-19 vs No finding (NIH left out too)": (
        "covid19-radiography + NIH",
        ("covid19-radiography",),
        (COVID,),
        (NORMAL,),
        "covid",
    ),
    "covid-chestxray COVID-19 vs Other pneumonia": (
        "covid-chestxray",
        ("covid-chestxray",),
        (COVID,),
        (OTHER,),
        "covid_odds",
    ),
    "NIH Other pneumonia vs No finding": ("NIH", NIH, (OTHER,), (NORMAL,), "abnormal"),
    "kermany-pediatric pneumonia vs normal": (
        "kermany-pediatric",
        ("kermany-pediatric",),
        (OTHER,),
        (NORMAL,),
        "abnormal",
    ),
}
#: The four AUROCs whose mean is the selection rule's primary score.
PRIMARY = (
    "covid19-radiography COVID-19 vs No finding (NIH left out too)",
    "covid-chestxray COVID-19 vs Other pneumonia",
    "NIH Other pneumonia vs No finding",
    "kermany-pediatric pneumonia vs normal",
)
SENSITIVITY = "hannover COVID-19 sensitivity"


def scores(probs: np.ndarray, kind: str) -> np.ndarray:
    """The score a comparison ranks by, from (N, 3) probabilities."""
    if kind == "covid":
        return probs[:, COVID]
    if kind == "covid_odds":
        return probs[:, COVID] / np.maximum(probs[:, COVID] + probs[:, OTHER], 1e-12)
    if kind == "abnormal":
        return 1 - probs[:, NORMAL]
    raise ValueError(f"unknown score {kind!r}")


def fold_probabilities(
    design: str,
    x: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    splits: np.ndarray,
    seed: int = 0,
    has_facts: bool = True,
) -> dict[str, np.ndarray]:
    """Out-of-source probabilities (N, 3) of every fold: rows of the sources left out filled, others NaN.

    ``has_facts``: ``x`` ends with the finding facts (:func:`make_design`).
    """
    out = {}
    for fold, left_out in FOLDS.items():
        held = np.isin(sources, left_out)
        train = ~held & (splits == "train")
        model = make_design(design, has_facts).fit(x[train], labels[train], sources[train], seed=seed)
        p = np.full((len(x), 3), np.nan)
        p[held] = model.predict_proba(x[held])
        out[fold] = p
        log.info("%s, fold %s: trained on %d images, scored %d", design, fold, int(train.sum()), int(held.sum()))
    return out


def score_folds(folds: dict[str, np.ndarray], labels: np.ndarray, sources: np.ndarray, n_resamples: int = 1000) -> dict:
    """Every comparison of :data:`COMPARISONS` with a bootstrap CI, Hannover's sensitivity, the primary score."""
    res: dict = {}
    for name, (fold, scored, pos, neg, kind) in COMPARISONS.items():
        rows = np.isin(sources, scored) & np.isin(labels, pos + neg)
        y = np.isin(labels[rows], pos)
        res[name] = stratified_bootstrap_ci(y, scores(folds[fold][rows], kind), roc_auc_score, n_resamples=n_resamples)
    han = (sources == "hannover") & (labels == COVID)
    hit = folds["hannover"][han].argmax(1) == COVID
    lo, hi = _wilson(int(hit.sum()), int(han.sum()))
    res[SENSITIVITY] = {
        "value": float(hit.mean()) if han.any() else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "n": int(han.sum()),
    }
    res["primary"] = float(np.mean([res[k]["value"] for k in PRIMARY]))
    return res


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def markdown(results: dict[str, dict]) -> str:
    """One row per design and feature set, one column per comparison."""
    names = [*COMPARISONS, SENSITIVITY]
    head = "| design | " + " | ".join(names) + " | primary (mean of 4) |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for design, r in results.items():
        cells = [with_ci(r[n], ".3f", ci_fmt=".2f") for n in names]
        lines.append(f"| {design} | " + " | ".join(cells) + f" | **{r['primary']:.3f}** |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict], path: str | Path) -> None:
    """Dot-and-whisker plot: each comparison's AUROC (sensitivity for Hannover) per design, with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*COMPARISONS, SENSITIVITY]
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.55 * len(names) * max(1, len(results)) / 2), dpi=120)
    step = 0.8 / max(1, len(results))
    for k, (design, r) in enumerate(results.items()):
        y = np.arange(len(names)) + k * step
        v = np.array([r[n]["value"] for n in names])
        err = np.array([[v[i] - r[n]["ci_low"], r[n]["ci_high"] - v[i]] for i, n in enumerate(names)]).T
        err = np.nan_to_num(np.maximum(err, 0.0))  # a percentile CI can miss its point on a few images
        ax.errorbar(v, y, xerr=err, fmt="o", capsize=2, label=design)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_yticks(np.arange(len(names)) + 0.4 - step / 2, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUROC in the source left out of training (Hannover: sensitivity), 95% CI")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Leave-one-source-out: what happens at a new hospital")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: dict[str, dict], out_dir: str | Path, extra: dict | None = None) -> Path:
    """``loso.json``, ``loso.md`` and ``loso.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loso.json").write_text(
        json.dumps({"folds": {k: list(v) for k, v in FOLDS.items()}, "results": results, **(extra or {})}, indent=2)
        + "\n"
    )
    (out / "loso.md").write_text(markdown(results))
    plot(results, out / "loso.png")
    return out


#: feature set name -> the cached feature blocks it concatenates (see covidcxr.engine.diagnosis.features).
FEATURE_SETS = {
    "imagenet": ("imagenet",),
    "lungenc": ("lungenc",),
    "findings": ("findings",),
    "imagenet+findings": ("imagenet", "findings"),
    "lungenc+findings": ("lungenc", "findings"),
}


def has_facts(feature_set: str) -> bool:
    """Whether feature set ``feature_set`` ends with the 16 finding facts (the designs that read them look there)."""
    return "findings" in FEATURE_SETS[feature_set]


def sample_rows(features: dict, samples: list[dict]) -> list[dict]:
    """The sample of each row of cached ``features`` (their ``names``), from ``samples``."""
    by_name = {f"{s['dataset']}/{s['filename']}": s for s in samples}
    return [by_name[str(n)] for n in features["names"]]


def feature_matrix(features: dict, name: str) -> np.ndarray:
    """The columns of feature set ``name`` (see :data:`FEATURE_SETS`)."""
    if name not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {name!r}; known: {', '.join(FEATURE_SETS)}")
    return np.concatenate([np.asarray(features[b], np.float64) for b in FEATURE_SETS[name]], axis=1)


def run_loso(
    features: dict,
    samples: list[dict],
    designs: dict[str, tuple[str, str]],
    n_resamples: int = 1000,
    seed: int = 0,
    out_dir: str | Path | None = None,
) -> dict[str, dict]:
    """LOSO results of each named (design, feature set) on cached features of ``samples``.

    Args:
        features: :func:`covidcxr.engine.diagnosis.features.cached_features` output; its
            ``names`` say which sample each row is.
        samples: classification samples (``label``, ``dataset``, ``split``).
        designs: row name -> (design, feature set).
        out_dir: write the table so far after every row (a long comparison can be read as it goes).
    """
    rows = sample_rows(features, samples)
    labels = np.array([s["label"] for s in rows])
    sources = np.array([s["dataset"] for s in rows])
    splits = np.array([s["split"] for s in rows])
    out = {}
    for row, (design, feature_set) in designs.items():
        x = feature_matrix(features, feature_set)
        folds = fold_probabilities(design, x, labels, sources, splits, seed, has_facts(feature_set))
        out[row] = {"design": design, "features": feature_set, **score_folds(folds, labels, sources, n_resamples)}
        log.info("%s: primary %.3f", row, out[row]["primary"])
        if out_dir is not None:
            write(out, out_dir, {"n_images": len(rows), "complete": len(out) == len(designs)})
    return out


#: The rows every LOSO evaluation compares (docs/experiments/stage2-source-blind.md).
DEFAULT_ROWS = {
    "within_source / imagenet+findings": ("within_source", "imagenet+findings"),
    "within_source / findings": ("within_source", "findings"),
    "within_source_prior / findings": ("within_source_prior", "findings"),
    "pooled / imagenet+findings": ("pooled", "imagenet+findings"),
    "pooled / findings": ("pooled", "findings"),
    "source_erased / imagenet+findings": ("source_erased", "imagenet+findings"),
    "within_source / imagenet": ("within_source", "imagenet"),
    "pooled / imagenet": ("pooled", "imagenet"),
    "within_source / lungenc+findings": ("within_source", "lungenc+findings"),
    "pooled / lungenc": ("pooled", "lungenc"),
}


def stage2_inputs(
    data_root: str | None = None,
    imagenet: str | None = None,
    blackout_split: str | None = None,
    progress: bool = True,
    outside_too: bool = False,
    limit: int = 0,
    limit_keys: tuple[str, ...] = ("dataset", "split"),
    imagenet_features: bool = True,
) -> tuple[list[dict], dict, dict | None]:
    """Classification samples of every source and their cached stage-2 features (shipped stage 1 and severity).

    ``limit`` keeps at most that many samples per group of ``limit_keys`` (default: source and
    split; quick checks), before any image is read: features are computed for those only.
    Without ``imagenet_features`` the ImageNet block is left out (its own cache; smoke runs of
    a design that does not read it).

    Returns:
        (samples, features, features with the lungs blacked out for ``blackout_split`` or None);
        with ``outside_too`` the last is a pair (lungs blacked out, all but the lungs blacked out).
    """
    from ...data import load_records
    from ...data.classification import classification_samples, first_per_group
    from ...infer import LungSegmenter
    from ...infer.severity import SeverityScorer
    from ...models.pretrained import IMAGENET_MOBILENET_V2_SHA256, parse_init
    from .features import cached_features, imagenet_backbone

    samples, _ = classification_samples(load_records(data_root))
    samples = first_per_group(samples, limit, limit_keys)
    path, sha = parse_init(imagenet or default_imagenet_init())
    segmenter, scorer = LungSegmenter.from_spec(), SeverityScorer.from_spec()
    backbone = imagenet_backbone(path, sha) if imagenet_features else None
    sha = (sha or IMAGENET_MOBILENET_V2_SHA256) if imagenet_features else "none"
    features = cached_features(samples, segmenter, scorer, backbone, sha, progress=progress)
    blacked = None
    if blackout_split:
        part = [s for s in samples if s["split"] == blackout_split]
        blacked = cached_features(part, segmenter, scorer, backbone, sha, blackout=True, progress=progress)
        if outside_too:
            blacked = (
                blacked,
                cached_features(
                    part,
                    segmenter,
                    scorer,
                    backbone,
                    sha,
                    blackout="outside",
                    progress=progress,
                ),
            )
    return samples, features, blacked


def default_imagenet_init() -> str:
    """``imagenet-file:`` of the MobileNetV2 file beside the data (``<data root>/../pretrained``)."""
    from ...data.paths import resolve_data_root

    return f"imagenet-file:{resolve_data_root().parent / 'pretrained' / 'mobilenet_v2_imagenet_tv.pt'}"


def evaluate_loso(
    data_root: str | None = None,
    out_dir: str | Path = "eval/loso",
    rows: dict[str, tuple[str, str]] | None = None,
    n_resamples: int = 1000,
) -> dict:
    """Every row of ``rows`` (default :data:`DEFAULT_ROWS`) under LOSO; writes loso.json/.md/.png."""
    samples, features, _ = stage2_inputs(data_root)
    results = run_loso(features, samples, rows or DEFAULT_ROWS, n_resamples=n_resamples, out_dir=out_dir)
    return results
