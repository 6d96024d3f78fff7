"""Input gate: is this a frontal chest X-ray? Refuse what is not, with a reason.

Three checks, cheapest first:

1. ``blank_refusal``: a blank or near-uniform image (almost no contrast) is refused at once.
2. ``FrontalGate``: logistic regression on what stage 1 already computes for every image:
   the U-Net encoder's pooled deepest features and three facts about the lung mask it found
   (share of the image that is lung, left/right balance, image aspect). Trained on the
   frontal X-rays of the train split against its lateral views and CT slices, photographs
   (scikit-image's sample images, cropped and turned) and synthetic images (noise,
   gradients, shapes, smooth textures). The threshold keeps false refusals of frontal
   validation images at or under 1%.
3. the intensity check: ten intensity facts of the image inside and outside the lung mask
   it found (``intensity_facts``), compared with those of the frontal training X-rays by a
   Mahalanobis distance (Ledoit-Wolf covariance). A coronal CT reconstruction looks like a
   frontal chest to the encoder, but its lungs are far darker than the uniform soft tissue
   around them, with no ribs over them; the distance catches what the linear gate lets
   through. The limit is a high percentile of the frontal training distances.

:func:`decide` is the one rule that turns the checks' numbers into a :class:`GateDecision`
(accepted or not, a reason code, the deciding score and its limit), for ``covidcxr predict``
and the training report alike; the front ends (command line, Python API, web page) word it for
their reader. The gate costs one matrix-vector product and a 256-px intensity summary per image;
``--no-gate`` keeps its refusals as warnings, for research use.

This module is what inference needs (numpy only); the gate is fitted and evaluated by
:mod:`covidcxr.engine.gate.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..postprocess import geometry
from .lungs import pooled_features, sigmoid
from .runners import Runner, load_runner

#: Images whose intensity standard deviation (in [0, 1] units) is below this are blank.
BLANK_STD = 0.02

#: What the gate saw, by reason code: the words of a refusal (see :func:`seen_kinds`).
REASONS = {
    "lateral": "looks like a lateral view",
    "ct": "looks like a CT slice",
    "no_chest": "no chest found",
    "photo": "looks like a photograph or drawing, not an X-ray",
    "unsure": "not clearly a frontal chest X-ray",
}


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer for one image: a value each front end words for its own reader.

    Attributes:
        accepted: the image goes on to be read.
        reason: ``"frontal"`` when accepted, ``"blank"``, or what a refused image looked like
            (a key of :data:`REASONS`).
        check: the check that refused it: ``"blank"``, ``"gate"`` (the linear gate) or
            ``"intensity"`` (the intensity check); ``None`` when accepted.
        probability: the linear gate's P(frontal chest X-ray) (NaN for a blank image, which never reaches it).
        score: the deciding check's number: P(frontal) for the gate (and an accepted image),
            the intensity distance, or a blank image's intensity spread.
        limit: its limit: the gate's threshold (refused below), the intensity limit (refused
            above) or :data:`BLANK_STD` (refused below).
    """

    accepted: bool
    reason: str
    check: str | None
    probability: float
    score: float
    limit: float

    @property
    def overridable(self) -> bool:
        """A refusal that ``--no-gate`` (``use_gate=False``) reads anyway: every refusal but a blank image's."""
        return not self.accepted and self.check != "blank"

    def describe(self) -> str:
        """What the gate saw, in the words every front end shares; each adds its own way to read a refused image anyway."""
        if self.check == "blank":
            return f"blank or near-uniform image (intensity spread {self.score:.3f}); not a chest X-ray"
        if self.check == "gate":
            why = f"gate probability {self.score:.2f} < {self.limit:.2f}"
        elif self.check == "intensity":
            why = (
                "its intensities inside and outside the lungs are unlike an X-ray's, as in a CT reconstruction: "
                f"score {self.score:.1f} > {self.limit:.1f}"
            )
        else:
            return f"recognised as a frontal chest X-ray (gate probability {self.probability:.2f})"
        return f"not recognised as a frontal chest X-ray: {REASONS[self.reason]} ({why})"


#: The decision for an image read without a gate.
UNGATED = GateDecision(accepted=True, reason="frontal", check=None, probability=1.0, score=1.0, limit=0.0)


def blank_refusal(image: np.ndarray) -> GateDecision | None:
    """The refusal of a blank or near-uniform image (intensity spread under :data:`BLANK_STD`), else ``None``."""
    std = float(image.std())
    if std < BLANK_STD:
        return GateDecision(False, "blank", "blank", float("nan"), std, BLANK_STD)
    return None


#: Names of :func:`intensity_facts`, in order.
INTENSITY_FACTS = (
    "lung p10",
    "lung p50",
    "lung p90",
    "outside p10",
    "outside p50",
    "outside p90",
    "lung - outside median",
    "black share",
    "lung gradient",
    "lung spread",
)
#: Frontal training images whose intensity distance lies above the limit: the limit is this percentile (chosen on validation).
INTENSITY_PERCENTILE = 99.8
_FACTS_SIZE = 256


def intensity_facts(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Ten intensity facts (:data:`INTENSITY_FACTS`) of an image in [0, 1] and its lung mask, (10,) float32.

    Read at 256 x 256 whatever the image's size, after uniform borders (letterbox bands,
    rows or columns with less than 0.05 of intensity range) are cut off: percentiles
    10/50/90 inside and outside the lungs, their median difference, the share of near-black
    pixels (< 0.05), the mean gradient magnitude and the intensity spread inside the lungs.
    """
    from ..io.resize import resize_aa, resize_nearest

    rows, cols = np.flatnonzero(np.ptp(image, axis=1) >= 0.05), np.flatnonzero(np.ptp(image, axis=0) >= 0.05)
    if len(rows) and len(cols):
        image, mask = (
            image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
            mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
        )
    size = (_FACTS_SIZE, _FACTS_SIZE)
    small = resize_aa(np.asarray(image, np.float32), size)
    lungs = resize_nearest(np.asarray(mask, np.uint8), size) > 0
    inside, outside = small[lungs], small[~lungs]
    inside = inside if inside.size >= 10 else small.ravel()
    outside = outside if outside.size >= 10 else small.ravel()
    grad = np.hypot(*np.gradient(small))
    lq, oq = np.percentile(inside, [10, 50, 90]), np.percentile(outside, [10, 50, 90])
    return np.array(
        [
            *lq,
            *oq,
            lq[1] - oq[1],
            (small < 0.05).mean(),
            grad[lungs].mean() if lungs.any() else grad.mean(),
            inside.std(),
        ],
        np.float32,
    )


#: What an intensity check holds (``kinds``: the reason head kept beside it).
_CHECK_KEYS = {"facts", "mean", "precision", "percentile", "limit", "kinds"}


def intensity_distance(facts: np.ndarray, check: dict) -> np.ndarray:
    """Mahalanobis distance (N,) of intensity facts (N, 10) from the frontal training X-rays (``check``: mean, precision).

    Refused above ``check["limit"]``. A check written by a design that was tried and not shipped
    (other facts, a film crop, a classifier, agreement with the reason head) raises ValueError
    rather than be read wrongly.
    """
    unknown = sorted(set(check) - _CHECK_KEYS)
    if unknown or list(check.get("facts", INTENSITY_FACTS)) != list(INTENSITY_FACTS):
        raise ValueError(
            f"this gate's intensity check was written by a design that is not shipped (options {unknown}, "
            f"facts {check.get('facts')}); use the shipped gate or refit one with covidcxr train gate"
        )
    d = np.atleast_2d(facts).astype(np.float64) - np.asarray(check["mean"], np.float64)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(check["precision"], np.float64), d), 0))


#: An image the reason head does not take for a chest, with less lung than this share of it, is "no chest found".
NO_CHEST_LUNG_SHARE = 0.05


def kind_inputs(p_frontal: np.ndarray, geo: np.ndarray, facts: np.ndarray) -> np.ndarray:
    """The reason head's inputs (N, 14): the gate's logit, the mask geometry (N, 3) and the intensity facts (N, 10)."""
    p = np.clip(np.asarray(p_frontal, np.float64).reshape(-1), 1e-6, 1 - 1e-6)
    return np.concatenate([np.log(p / (1 - p))[:, None], np.atleast_2d(geo), np.atleast_2d(facts)], axis=1)


def kind_probabilities(inputs: np.ndarray, head: dict) -> np.ndarray:
    """Softmax (N, K) of the reason head (``head``: labels, mean, scale, coef, intercept) on :func:`kind_inputs`."""
    z = (np.atleast_2d(inputs) - np.asarray(head["mean"])) / np.asarray(head["scale"])
    s = z @ np.asarray(head["coef"]).T + np.asarray(head["intercept"])
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def seen_kinds(p_frontal: np.ndarray, geo: np.ndarray, facts: np.ndarray | None, head: dict | None) -> list[str]:
    """What each image looks like, a key of :data:`REASONS`: the reason head's most likely kind.

    The head (frontal / lateral / CT / other, fitted beside the gate) only words a refusal; the
    gate and the intensity check decide it. "other" reads as "no chest found" when the lung
    mask is almost empty (lung share, ``geo[:, 0]``), else as a photograph; "frontal" (the gate
    refused what the head takes for a frontal film) as "not clearly a frontal chest X-ray".
    Without a head (or facts) every image is "unsure".
    """
    n = len(np.atleast_1d(p_frontal))
    if not head or facts is None:
        return ["unsure"] * n
    geo = np.atleast_2d(geo)
    best = kind_probabilities(kind_inputs(p_frontal, geo, facts), head).argmax(axis=1)
    kinds = [head["labels"][int(i)] for i in best]
    return [
        ("no_chest" if share < NO_CHEST_LUNG_SHARE else "photo")
        if kind == "other"
        else {"lateral": "lateral", "CT": "ct"}.get(kind, "unsure")
        for kind, share in zip(kinds, geo[:, 0], strict=True)
    ]


def decide(p_frontal: np.ndarray, geo: np.ndarray, facts: np.ndarray | None, spec) -> list[GateDecision]:
    """The gate's decision on each of N images: the one rule, for predict and for the training report alike.

    The linear gate first (refused when P(frontal) < ``spec.threshold``), then the intensity
    check (``spec.intensity_check``: refused when the distance exceeds its limit; off when the
    spec has none). A refusal's reason is what the reason head (``spec.intensity_check["kinds"]``)
    takes the image for (:func:`seen_kinds`); an image the intensity check alone refuses and
    the head takes for a frontal film reads as a CT slice.

    Args:
        p_frontal: the gate's P(frontal chest X-ray), (N,).
        geo: the lung masks' geometry (:func:`covidcxr.postprocess.geometry`), (N, 3).
        facts: their intensity facts (:func:`intensity_facts`), (N, 10); may be ``None`` when the spec has no check.
        spec: anything with ``threshold`` and ``intensity_check`` (a gate's WeightSpec).
    """
    p = np.asarray(p_frontal, np.float64).reshape(-1)
    check = spec.intensity_check or {}
    dist = intensity_distance(facts, check) if check else np.zeros(len(p))
    reasons = seen_kinds(p, geo, facts, check.get("kinds"))
    out = []
    for pi, di, reason in zip(p, dist, reasons, strict=True):
        if pi < spec.threshold:
            out.append(GateDecision(False, reason, "gate", float(pi), float(pi), spec.threshold))
        elif check and di > check["limit"]:
            ct = "ct" if reason == "unsure" else reason
            out.append(GateDecision(False, ct, "intensity", float(pi), float(di), check["limit"]))
        else:
            out.append(GateDecision(True, "frontal", None, float(pi), float(pi), spec.threshold))
    return out


def gate_records(records: list[dict], split: str) -> tuple[list[dict], list[dict]]:
    """(frontal X-rays, lateral views and CT slices) of a split; unknown views are left out."""
    from ..data.labels import is_frontal_xray

    frontal = [r for r in records if r["split"] == split and is_frontal_xray(r)]
    other = [r for r in records if r["split"] == split and (r["modality"] == "CT" or r["view"] == "L")]
    return frontal, other


# ---------------------------------------------------------------------------
# The stage: the gate model on a runner, and the decision for each image.


class Gate:
    """P(frontal chest X-ray) from the stage-1 encoder's features and the lung mask, and the refusal rule."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.spec = runner, runner.spec

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None
    ) -> Gate:
        return cls(load_runner("gate", spec_path, backend, onnx_dir))

    def probability(self, features: np.ndarray, geo: np.ndarray) -> np.ndarray:
        """P(frontal) (N,) from pooled encoder features (N, C) and the lung masks' geometry (N, 3)."""
        x = np.concatenate([np.asarray(features, np.float32), np.asarray(geo, np.float32)], axis=1)
        return sigmoid(self.runner.run(features=x)[0])

    def decide(
        self, images: Sequence[np.ndarray], encoder: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> list[GateDecision]:
        """The gate's decision (:func:`decide`) on each image of one stage-1 pass."""
        geo = np.stack([geometry(m) for m in masks])
        p = self.probability(pooled_features(encoder), geo)
        check = self.spec.intensity_check
        facts = np.stack([intensity_facts(im, m) for im, m in zip(images, masks, strict=True)]) if check else None
        return decide(p, geo, facts, self.spec)
