"""Stage-2 heads on frozen features: the designs compared under leave-one-source-out.

Every design maps features (N, D) of training images with labels (indices into
``CLASSES``) and sources to a model whose ``predict_proba`` gives (N, 3) probabilities:

- ``pooled``: multinomial logistic regression, class-balanced; source-naive (the reference
  that can learn "which archive is this?").
- ``within_source``: the decision factorised as P(abnormal) x P(COVID-19 | abnormal). Each
  factor is a logistic regression fitted on *differences* between a positive and a negative
  image of the same source (a ranking objective): a shift that all of one source's images
  share cancels in every difference, so the source carries no gradient. A Platt scaling
  with sources weighted equally turns each score into a probability.
- ``source_erased``: ``pooled`` after the source is projected out of the features by
  iterative null-space projection (a linear source classifier is fitted and its directions
  removed, round after round): the linear counterpart of adversarial removal.
- ``within_source_prior``: ``within_source``'s P(abnormal) with P(COVID-19 | abnormal) the
  radiological pattern prior on the finding facts, not learned (:func:`pattern_prior`).
- ``within_archive``: ``within_source`` with pairs drawn only where one archive holds both
  classes (:data:`ABNORMAL_SOURCES`, :data:`COVID_SOURCES`); a source whose classes come from
  different hospitals (covid19-radiography) teaches neither head.
- ``within_source_monotone``: ``within_source`` whose P(abnormal) weights are all ≥ 0: every
  finding fact is opacity or the lesions' distribution, and none may lower P(abnormal)
  (docs/experiments/stage2-source-blind.md, amendment 6).

All are scikit-learn estimators on standardised features (the scaler is part of the model).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ...data.labels import CLASSES
from ...infer.findings import FACTS

COVID, OTHER, NORMAL = (CLASSES.index(c) for c in ("COVID-19", "Other pneumonia", "No finding"))
DESIGNS = (
    "pooled",
    "within_source",
    "source_erased",
    "within_source_prior",
    "within_archive",
    "within_source_monotone",
)
#: Archives that hold pneumonia and "No finding" from one hospital system: where P(abnormal) may be learned.
ABNORMAL_SOURCES = ("kermany-pediatric", "nih-chestxray8", "nih-chestxray14")
#: Archives that hold COVID-19 and other pneumonia: where P(COVID-19 | abnormal) may be learned.
COVID_SOURCES = ("covid-chestxray",)
C = 0.1
PAIRS_PER_SOURCE = 2000
ERASE_ROUNDS = 8


def _group_weights(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Sample weights giving every (source, class) group the same total weight."""
    keys = [f"{s}|{c}" for s, c in zip(sources, labels)]
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w * len(w) / w.sum()


def within_source_pairs(
    pos: np.ndarray, neg: np.ndarray, sources: np.ndarray, rng: np.random.Generator, per_source: int = PAIRS_PER_SOURCE
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i positive, j negative) of the same source, at most ``per_source`` per source.

    Returns:
        (i, j) index arrays; a source with no positive or no negative gives no pair.
    """
    out_i, out_j = [], []
    for src in np.unique(sources):
        p = np.flatnonzero(pos & (sources == src))
        n = np.flatnonzero(neg & (sources == src))
        if len(p) == 0 or len(n) == 0:
            continue
        k = min(per_source, len(p) * len(n))
        flat = rng.choice(len(p) * len(n), size=k, replace=False)
        out_i.append(p[flat // len(n)])
        out_j.append(n[flat % len(n)])
    if not out_i:
        return np.zeros(0, int), np.zeros(0, int)
    return np.concatenate(out_i), np.concatenate(out_j)


def nonnegative_logistic(d: np.ndarray, w: np.ndarray, c: float = C) -> np.ndarray:
    """Weights ≥ 0 minimising ½‖β‖² + c Σ wᵢ log(1 + exp(−β·dᵢ)): the pairs' logistic loss without intercept.

    The objective scikit-learn's ``LogisticRegression(C=c, fit_intercept=False)`` minimises on
    ``[d, −d]`` with labels ``[1, 0]`` and weights ``[w, w]`` (both halves give the same loss), with
    every weight bounded below by 0 (L-BFGS-B).
    """

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        m = d @ beta
        value = 0.5 * beta @ beta + 2 * c * float(w @ np.logaddexp(0.0, -m))
        grad = beta - 2 * c * d.T @ (w / (1.0 + np.exp(m)))
        return value, grad

    res = minimize(loss, np.zeros(d.shape[1]), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * d.shape[1])
    if not res.success:
        raise RuntimeError(f"non-negative ranking head did not converge: {res.message}")
    return res.x


class RankingHead:
    """A linear score learned from within-source pairs, then Platt-scaled.

    ``nonnegative``: every weight ≥ 0 (:func:`nonnegative_logistic`).

    Attributes:
        coef_: (D,) weights on standardised features; ``a_, b_``: the Platt scaling.
    """

    def __init__(self, nonnegative: bool = False) -> None:
        self.nonnegative = nonnegative

    def fit(self, x: np.ndarray, pos: np.ndarray, neg: np.ndarray, sources: np.ndarray, seed: int = 0) -> RankingHead:
        i, j = within_source_pairs(pos, neg, sources, np.random.default_rng(seed))
        if len(i) == 0:
            raise ValueError(
                "no source holds both a positive and a negative image: a within-source head cannot be fitted"
            )
        d = x[i] - x[j]
        src = sources[i]
        _, inv, counts = np.unique(src, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inv]  # every source's pairs weigh the same
        if self.nonnegative:
            self.coef_ = nonnegative_logistic(d, w * len(w) / w.sum())
        else:
            lr = LogisticRegression(C=C, fit_intercept=False, max_iter=2000)
            lr.fit(
                np.concatenate([d, -d]),
                np.r_[np.ones(len(d)), np.zeros(len(d))],
                sample_weight=np.r_[w, w] * len(w) / w.sum(),
            )
            self.coef_ = lr.coef_[0]
        keep = pos | neg
        s = x[keep] @ self.coef_
        platt = LogisticRegression(C=1e4, max_iter=2000)
        y = pos[keep].astype(int)
        platt.fit(s[:, None], y, sample_weight=_group_weights(y, sources[keep]))
        self.a_, self.b_ = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef_

    def proba(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a_ * self.score(x) + self.b_)))


def factorised(p_abnormal: np.ndarray, q_covid: np.ndarray) -> np.ndarray:
    """(N, 3) class probabilities from P(abnormal) and P(COVID-19 | abnormal): a q, a (1 - q), 1 - a."""
    return np.stack([p_abnormal * q_covid, p_abnormal * (1 - q_covid), 1 - p_abnormal], axis=1)


class WithinSource:
    """P(abnormal) and P(COVID-19 | abnormal), each a :class:`RankingHead`.

    The abnormal head contrasts pneumonia (COVID-19 or other) with "No finding" inside each
    source. The COVID-19 head contrasts COVID-19 with other pneumonia inside each source
    that holds both (covid-chestxray); a source with COVID-19 but no other pneumonia
    contrasts it with its normals instead, so that the head can be fitted on every fold.
    """

    #: P(abnormal)'s weights all ≥ 0 (:class:`WithinSourceMonotone`).
    monotone = False

    def fit(self, x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> WithinSource:
        self.scaler = StandardScaler().fit(x)
        z = self.scaler.transform(x)
        (abn_pos, abn_neg), (cov_pos, cov_neg) = self._pairs(labels, sources)
        self.abnormal = RankingHead(self.monotone).fit(z, abn_pos, abn_neg, sources, seed)
        self.covid = self._fit_covid(z, cov_pos, cov_neg, sources, seed)
        return self

    def _pairs(self, labels: np.ndarray, sources: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """(positives, negatives) masks of the abnormal head, then of the COVID-19 head."""
        has_other = np.isin(sources, np.unique(sources[labels == OTHER]))
        neg = np.where(has_other, labels == OTHER, labels == NORMAL)
        return (labels != NORMAL, labels == NORMAL), (labels == COVID, neg & (labels != COVID))

    def _fit_covid(self, z, pos, neg, sources, seed) -> RankingHead | None:
        return RankingHead().fit(z, pos, neg, sources, seed)

    def _covid_given_abnormal(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.covid.proba(z)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = self.scaler.transform(x)
        return factorised(self.abnormal.proba(z), self._covid_given_abnormal(x, z))


class WithinSourceMonotone(WithinSource):
    """:class:`WithinSource` whose P(abnormal) cannot fall as any finding fact rises (weights ≥ 0).

    Every finding fact is opacity (extent, opacity, zones, lesion shares, bilateral) or where the
    lesions lie (peripheral, lower zone; 0 when none is found): none is evidence against airspace
    disease, so a negative weight can only come from collinearity or a source's label noise.
    The standardisation keeps each column's sign, so the constraint holds on the raw facts too.
    """

    monotone = True


class Pooled:
    """Multinomial logistic regression on standardised features, classes balanced."""

    def fit(self, x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> Pooled:
        self.scaler = StandardScaler().fit(x)
        self.lr = LogisticRegression(C=C, max_iter=3000, class_weight="balanced").fit(self.scaler.transform(x), labels)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.lr.predict_proba(self.scaler.transform(x))
        out = np.zeros((len(x), len(CLASSES)))
        out[:, self.lr.classes_] = p
        return out


def nullspace_projection(z: np.ndarray, sources: np.ndarray, rounds: int = ERASE_ROUNDS) -> np.ndarray:
    """Projection (D, D) that removes the directions linear source classifiers use (INLP, Ravfogel et al. 2020)."""
    d = z.shape[1]
    proj = np.eye(d)
    for _ in range(rounds):
        clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(z @ proj, sources)
        basis, _ = np.linalg.qr(clf.coef_.T)  # (D, k) orthonormal span of the source directions
        proj = proj @ (np.eye(d) - basis @ basis.T)
    return proj


class SourceErased(Pooled):
    """:class:`Pooled` after :func:`nullspace_projection` of the training sources."""

    def fit(self, x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> SourceErased:
        self.scaler0 = StandardScaler().fit(x)
        self.proj = nullspace_projection(self.scaler0.transform(x), sources)
        return super().fit(self._erase(x), labels, sources, seed)

    def _erase(self, x: np.ndarray) -> np.ndarray:
        return self.scaler0.transform(x) @ self.proj

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return super().predict_proba(self._erase(x))


def pattern_prior(facts: np.ndarray) -> np.ndarray:
    """P(COVID-19 | abnormal) from the radiological pattern alone, not learned: (N,) in [0, 1].

    COVID-19 pneumonia on a chest radiograph is typically bilateral, peripheral and lower-zone
    predominant; q = (peripheral + lower_zone + min(1, 10 x bilateral)) / 3 on the finding facts
    (N, len(FACTS)) of :data:`covidcxr.infer.findings.FACTS`. No lesion: 0.
    """
    col = {name: FACTS.index(name) for name in ("peripheral", "lower_zone", "bilateral")}
    f = np.asarray(facts, np.float64)
    q = (f[:, col["peripheral"]] + f[:, col["lower_zone"]] + np.minimum(1.0, 10 * f[:, col["bilateral"]])) / 3
    return np.clip(q, 0.0, 1.0)


class WithinSourcePrior:
    """P(abnormal) as :class:`WithinSource`; P(COVID-19 | abnormal) the fixed :func:`pattern_prior`.

    The finding facts are the last ``len(FACTS)`` columns of ``x`` (as in every feature set that has them).
    """

    def fit(self, x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> WithinSourcePrior:
        if x.shape[1] < len(FACTS):
            raise ValueError(f"within_source_prior reads the {len(FACTS)} finding facts; got {x.shape[1]} columns")
        self.scaler = StandardScaler().fit(x)
        self.abnormal = RankingHead().fit(self.scaler.transform(x), labels != NORMAL, labels == NORMAL, sources, seed)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return factorised(self.abnormal.proba(self.scaler.transform(x)), pattern_prior(x[:, -len(FACTS) :]))


class WithinArchive(WithinSource):
    """:class:`WithinSource` learned only inside single archives that hold both classes of a head.

    P(abnormal): pairs inside :data:`ABNORMAL_SOURCES`; P(COVID-19 | abnormal): pairs inside
    :data:`COVID_SOURCES`, or, where none is in training, the fixed :func:`pattern_prior` read from the
    last ``len(FACTS)`` columns when ``has_facts`` (the feature set ends with the finding facts), else 1/2.
    """

    def __init__(self, has_facts: bool = True) -> None:
        self.has_facts = has_facts

    def fit(self, x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int = 0) -> WithinArchive:
        if self.has_facts and x.shape[1] < len(FACTS):
            raise ValueError(f"within_archive reads the {len(FACTS)} finding facts; got {x.shape[1]} columns")
        return super().fit(x, labels, sources, seed)

    def _pairs(self, labels: np.ndarray, sources: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        abn, cov = np.isin(sources, ABNORMAL_SOURCES), np.isin(sources, COVID_SOURCES)
        return (abn & (labels != NORMAL), abn & (labels == NORMAL)), (cov & (labels == COVID), cov & (labels == OTHER))

    def _fit_covid(self, z, pos, neg, sources, seed) -> RankingHead | None:
        return super()._fit_covid(z, pos, neg, sources, seed) if pos.any() and neg.any() else None

    def _covid_given_abnormal(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        if self.covid is not None:
            return self.covid.proba(z)
        return pattern_prior(x[:, -len(FACTS) :]) if self.has_facts else np.full(len(x), 0.5)


def make_design(name: str, has_facts: bool = True):
    """A fresh, unfitted model of design ``name``; ``has_facts``: the features end with the finding facts."""
    designs = {
        "pooled": Pooled,
        "within_source": WithinSource,
        "source_erased": SourceErased,
        "within_source_prior": WithinSourcePrior,
        "within_archive": WithinArchive,
        "within_source_monotone": WithinSourceMonotone,
    }
    if name not in designs:
        raise ValueError(f"unknown stage-2 design {name!r}; known: {', '.join(DESIGNS)}")
    if name == "within_source_prior" and not has_facts:
        raise ValueError("within_source_prior reads the finding facts: use a feature set with findings")
    return WithinArchive(has_facts) if name == "within_archive" else designs[name]()
