"""Input gate: is this a frontal chest X-ray? Refuse what is not, with a reason.

Three checks, cheapest first:

1. ``blank_reason``: a blank or near-uniform image (almost no contrast) is refused at once.
2. ``FrontalGate``: logistic regression on what stage 1 already computes for every image:
   the U-Net encoder's pooled deepest features and three facts about the lung mask it found
   (share of the image that is lung, left/right balance, image aspect). Trained on the
   frontal X-rays of the train split against its lateral views and CT slices, photographs
   (scikit-image's sample images, cropped and turned) and synthetic images (noise,
   gradients, shapes, smooth textures). The threshold keeps false refusals of frontal
   validation images at or under 1%.
3. ``intensity_refusal``: ten intensity facts of the image inside and outside the lung mask
   it found (``intensity_facts``), compared with those of the frontal training X-rays by a
   Mahalanobis distance (Ledoit-Wolf covariance). A coronal CT reconstruction looks like a
   frontal chest to the encoder, but its lungs are far darker than the uniform soft tissue
   around them, with no ribs over them; the distance catches what the linear gate lets
   through. The limit is a high percentile of the frontal training distances.

The gate costs one matrix-vector product and a 256-px intensity summary per image; ``--no-gate``
skips it for research use.

This module is what inference needs (numpy only); the gate is fitted and evaluated by
:mod:`covidcxr.engine.gate.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..postprocess import geometry
from .lungs import pooled_features, sigmoid
from .runners import Runner, load_runner

#: Images whose intensity standard deviation (in [0, 1] units) is below this are blank.
BLANK_STD = 0.02


def blank_reason(image: np.ndarray) -> str | None:
    """A refusal message for a blank or near-uniform image, else ``None``."""
    std = float(image.std())
    if std < BLANK_STD:
        return f"blank or near-uniform image (intensity spread {std:.3f}); not a chest X-ray"
    return None


#: What the gate saw, by reason code: the words of a refusal (see :func:`seen_kind`).
REASONS = {
    "lateral": "looks like a lateral view",
    "ct": "looks like a CT slice",
    "no_chest": "no chest found",
    "photo": "looks like a photograph or drawing, not an X-ray",
    "unsure": "not clearly a frontal chest X-ray",
}
#: How to read a refused image anyway, said to a command-line user (the web page and the Python API say it their way).
OVERRIDE = "use --no-gate to force a reading (research use)"


def refusal(p_frontal: float, threshold: float, reason: str = "unsure") -> str | None:
    """The refusal message for a gate probability under the threshold, else ``None``.

    Args:
        p_frontal: the gate's P(frontal chest X-ray).
        threshold: the spec's threshold.
        reason: what the image looked like, a key of :data:`REASONS` (:func:`seen_kind`).
    """
    if p_frontal >= threshold:
        return None
    return f"not recognised as a frontal chest X-ray: {REASONS[reason]} (gate probability {p_frontal:.2f} < {threshold:.2f}); {OVERRIDE}"


def refusal_reason(message: str | None) -> str | None:
    """The reason code of a refusal message (a key of :data:`REASONS`, or ``"blank"``), else ``None``."""
    if not message:
        return None
    if message.startswith("blank or near-uniform"):
        return "blank"
    return next((code for code, words in REASONS.items() if f": {words} (" in message), None)


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
#: The facts read inside the lung mask: what a CT slice's lungs differ in, whatever surrounds a film.
LUNG_FACTS = ("lung p10", "lung p50", "lung p90", "lung gradient", "lung spread")
#: Frontal training images whose intensity distance lies above the limit: the limit is this percentile (chosen on validation).
INTENSITY_PERCENTILE = 99.8
_FACTS_SIZE = 256


#: ``intensity_check["crop"]`` values: where the facts are read (absent: ``borders``).
CROPS = ("borders", "film")


def film_box(image: np.ndarray, min_side: float = 0.3) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the exposed film inside a bright, smooth surround (the whole image when there is none).

    Edge rows and columns are trimmed while they are surround: bright (median and most pixels
    > 0.5) and smooth (under 5% of their pixels on an edge: gradient > 0.01 per pixel of a
    128-px copy), as
    around a film exposed without tight collimation. Dark surrounds (a CT slice's air) are
    left: they are what the intensity check tells apart. A box under ``min_side`` of a
    side is not trusted (the whole image is kept).
    """
    from ..io.resize import resize_aa

    h, w = image.shape
    small = resize_aa(np.asarray(image, np.float32), (128, 128))
    edge = np.hypot(*np.gradient(small)) > 0.01
    bright = small > 0.5
    surround_row = (edge.mean(1) < 0.05) & (np.median(small, 1) > 0.5) & (bright.mean(1) > 0.5)
    surround_col = (edge.mean(0) < 0.05) & (np.median(small, 0) > 0.5) & (bright.mean(0) > 0.5)

    def span(flags: np.ndarray) -> tuple[int, int]:
        keep = np.flatnonzero(~flags)
        return (int(keep[0]), int(keep[-1]) + 1) if len(keep) else (0, len(flags))

    (r0, r1), (c0, c1) = span(surround_row), span(surround_col)
    if (r1 - r0) < min_side * 128 or (c1 - c0) < min_side * 128:
        return 0, h, 0, w
    return r0 * h // 128, -(-r1 * h // 128), c0 * w // 128, -(-c1 * w // 128)


def intensity_facts(image: np.ndarray, mask: np.ndarray, crop: str = "borders") -> np.ndarray:
    """Ten intensity facts (:data:`INTENSITY_FACTS`) of an image in [0, 1] and its lung mask, (10,) float32.

    Read at 256 x 256 whatever the image's size, after uniform borders (letterbox bands,
    rows or columns with less than 0.05 of intensity range) are cut off and, with
    ``crop="film"``, a bright smooth surround too (:func:`film_box`): percentiles
    10/50/90 inside and outside the lungs, their median difference, the share of near-black
    pixels (< 0.05), the mean gradient magnitude and the intensity spread inside the lungs.
    """
    from ..io.resize import resize_aa, resize_nearest

    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    rows, cols = np.flatnonzero(np.ptp(image, axis=1) >= 0.05), np.flatnonzero(np.ptp(image, axis=0) >= 0.05)
    if len(rows) and len(cols):
        image, mask = (
            image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
            mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1],
        )
    if crop == "film":
        y0, y1, x0, x1 = film_box(image)
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
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


def intensity_distance(facts: np.ndarray, check: dict) -> np.ndarray:
    """How unlike a frontal X-ray's the intensity facts (N, 10) are, (N,); refused above ``check["limit"]``.

    Only the facts named in ``check["facts"]`` (all ten when absent) are read, in that order.

    The check's ``kind``: ``mahalanobis`` (default): the distance from the frontal training X-rays
    (``mean``, ``precision``); ``classifier``: the logit of P(lateral view or CT slice) of a
    logistic regression on the standardised facts (``mean``, ``scale``, ``coef``, ``intercept``).
    """
    f = np.atleast_2d(facts).astype(np.float64)
    f = f[:, [INTENSITY_FACTS.index(name) for name in check.get("facts", INTENSITY_FACTS)]]
    if check.get("kind", "mahalanobis") == "classifier":
        z = (f - np.asarray(check["mean"], np.float64)) / np.asarray(check["scale"], np.float64)
        return z @ np.asarray(check["coef"], np.float64) + float(check["intercept"])
    d = f - np.asarray(check["mean"], np.float64)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(check["precision"], np.float64), d), 0))


def _intensity_message(dist: float, limit: float, reason: str) -> str:
    return (
        f"not recognised as a frontal chest X-ray: {REASONS[reason]} (its intensities inside and outside the lungs are unlike an "
        f"X-ray's, as in a CT reconstruction: score {dist:.1f} > {limit:.1f}); {OVERRIDE}"
    )


def intensity_refusal(image: np.ndarray, mask: np.ndarray, check: dict, reason: str = "ct") -> str | None:
    """The refusal message for an image whose intensities are unlike a frontal X-ray's, else ``None`` (also when ``check`` is empty)."""
    if not check:
        return None
    dist = float(intensity_distance(intensity_facts(image, mask, check.get("crop", "borders")), check)[0])
    return None if dist <= check["limit"] else _intensity_message(dist, check["limit"], reason)


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


def seen_kind(p_frontal: float, mask: np.ndarray, facts: np.ndarray | None, head: dict | None) -> str:
    """What a refused image looks like, a key of :data:`REASONS`: the reason head's most likely kind.

    The head (frontal / lateral / CT / other, fitted beside the gate) only words a refusal; the
    gate and the intensity check decide it. "other" reads as "no chest found" when the lung
    mask is almost empty, else as a photograph; "frontal" (the gate refused what the head
    takes for a frontal film) as "not clearly a frontal chest X-ray".
    """
    if not head or facts is None:
        return "unsure"
    geo = geometry(mask)
    kind = head["labels"][
        int(kind_probabilities(kind_inputs(np.array([p_frontal]), geo[None], facts[None]), head)[0].argmax())
    ]
    if kind == "other":
        return "no_chest" if geo[0] < NO_CHEST_LUNG_SHARE else "photo"
    return {"lateral": "lateral", "CT": "ct"}.get(kind, "unsure")


def gate_refusal(p_frontal: float, image: np.ndarray, mask: np.ndarray, spec) -> str | None:
    """The gate's decision on one image, given its gate probability and lung mask: a refusal message or ``None``.

    The linear gate first (``spec.threshold``), then the intensity check (``spec.intensity_check``;
    with ``agree: "kinds"`` it refuses only what the reason head does not take for a frontal film);
    the message says what the image looks like (:func:`seen_kind`, from the reason head kept in
    ``spec.intensity_check["kinds"]``) and how to override.
    """
    check = spec.intensity_check or {}
    facts = intensity_facts(image, mask, check.get("crop", "borders")) if check else None
    dist = float(intensity_distance(facts, check)[0]) if check else 0.0
    by_gate = p_frontal < spec.threshold
    if not by_gate and not (check and dist > check["limit"]):
        return None
    reason = seen_kind(p_frontal, mask, facts, check.get("kinds"))
    if by_gate:
        return refusal(p_frontal, spec.threshold, reason)
    if check.get("agree") == "kinds" and reason == "unsure":  # the head takes it for a frontal film
        return None
    return _intensity_message(dist, check["limit"], "ct" if reason == "unsure" else reason)


def gate_records(records: list[dict], split: str) -> tuple[list[dict], list[dict]]:
    """(frontal X-rays, lateral views and CT slices) of a split; unknown views are left out."""
    from ..data.labels import is_frontal_xray

    frontal = [r for r in records if r["split"] == split and is_frontal_xray(r)]
    other = [r for r in records if r["split"] == split and (r["modality"] == "CT" or r["view"] == "L")]
    return frontal, other


# ---------------------------------------------------------------------------
# The stage: the gate model on a runner, and the decision for each image.


class GateDecision(NamedTuple):
    probability: float  # P(frontal chest X-ray)
    refusal: str | None  # what the gate saw, in words, when it refuses


class Gate:
    """P(frontal chest X-ray) from the stage-1 encoder's features and the lung mask, and the refusal rule."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.spec = runner, runner.spec

    @classmethod
    def from_spec(
        cls, spec_path: str | Path | None = None, backend: str = "auto", onnx_dir: str | Path | None = None
    ) -> Gate:
        return cls(load_runner("gate", spec_path, backend, onnx_dir))

    def probability(self, features: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """P(frontal) (N,) from pooled encoder features (N, C) and lung masks."""
        x = np.concatenate([np.asarray(features, np.float32), np.stack([geometry(m) for m in masks])], axis=1)
        return sigmoid(self.runner.run(features=x)[0])

    def decide(
        self, images: Sequence[np.ndarray], encoder: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> list[GateDecision]:
        """The gate's answer for each image of one stage-1 pass."""
        p = self.probability(pooled_features(encoder), masks)
        return [
            GateDecision(float(pi), gate_refusal(float(pi), im, m, self.spec))
            for pi, im, m in zip(p, images, masks, strict=True)
        ]
