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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .postprocess import geometry

#: Images whose intensity standard deviation (in [0, 1] units) is below this are blank.
BLANK_STD = 0.02


def blank_reason(image: np.ndarray) -> str | None:
    """A refusal message for a blank or near-uniform image, else ``None``."""
    std = float(image.std())
    if std < BLANK_STD:
        return f"blank or near-uniform image (intensity spread {std:.3f}); not a chest X-ray"
    return None


def pooled_features(encoder: list) -> np.ndarray:
    """The stage-1 encoder's deepest feature map averaged over space, (N, C) float32: the gate's input."""
    return np.asarray(encoder[-1], np.float32).mean(axis=(2, 3))


#: What the gate saw, by reason code: the words of a refusal (see :func:`seen_kind`).
REASONS = {
    "lateral": "looks like a lateral view",
    "ct": "looks like a CT slice",
    "no_chest": "no chest found",
    "photo": "looks like a photograph or drawing, not an X-ray",
    "unsure": "not clearly a frontal chest X-ray",
}
_OVERRIDE = "use --no-gate to force a reading (research use)"


def refusal(p_frontal: float, threshold: float, reason: str = "unsure") -> str | None:
    """The refusal message for a gate probability under the threshold, else ``None``.

    Args:
        p_frontal: the gate's P(frontal chest X-ray).
        threshold: the spec's threshold.
        reason: what the image looked like, a key of :data:`REASONS` (:func:`seen_kind`).
    """
    if p_frontal >= threshold:
        return None
    return f"not recognised as a frontal chest X-ray: {REASONS[reason]} (gate probability {p_frontal:.2f} < {threshold:.2f}); {_OVERRIDE}"


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
    from .resize import resize_aa, resize_nearest

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


def intensity_distance(facts: np.ndarray, check: dict) -> np.ndarray:
    """Mahalanobis distances (N,) of intensity facts (N, 10) from the frontal training X-rays (``check``: mean, precision)."""
    d = np.atleast_2d(facts) - np.asarray(check["mean"], np.float64)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(check["precision"], np.float64), d), 0))


def _intensity_message(dist: float, limit: float, reason: str) -> str:
    return (
        f"not recognised as a frontal chest X-ray: {REASONS[reason]} (its intensities inside and outside the lungs are unlike an "
        f"X-ray's, as in a CT reconstruction: distance {dist:.0f} > {limit:.0f}); {_OVERRIDE}"
    )


def intensity_refusal(image: np.ndarray, mask: np.ndarray, check: dict, reason: str = "ct") -> str | None:
    """The refusal message for an image whose intensities are unlike a frontal X-ray's, else ``None`` (also when ``check`` is empty)."""
    if not check:
        return None
    dist = float(intensity_distance(intensity_facts(image, mask), check)[0])
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

    The linear gate first (``spec.threshold``), then the intensity check (``spec.intensity_check``);
    the message says what the image looks like (:func:`seen_kind`, from the reason head kept in
    ``spec.intensity_check["kinds"]``) and how to override.
    """
    check = spec.intensity_check or {}
    facts = intensity_facts(image, mask) if check else None
    dist = float(intensity_distance(facts, check)[0]) if check else 0.0
    by_gate = p_frontal < spec.threshold
    if not by_gate and not (check and dist > check["limit"]):
        return None
    reason = seen_kind(p_frontal, mask, facts, check.get("kinds"))
    if by_gate:
        return refusal(p_frontal, spec.threshold, reason)
    return _intensity_message(dist, check["limit"], "ct" if reason == "unsure" else reason)


def fit_intensity_check(facts: np.ndarray, percentile: float = INTENSITY_PERCENTILE) -> dict:
    """Mean, precision (Ledoit-Wolf) and limit (``percentile`` of their own distances) of frontal X-rays' facts (N, 10)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(facts)
    check = {
        "facts": list(INTENSITY_FACTS),
        "mean": lw.location_.tolist(),
        "precision": lw.precision_.tolist(),
        "percentile": percentile,
    }
    check["limit"] = float(np.percentile(intensity_distance(facts, check), percentile))
    return check


# ---------------------------------------------------------------------------
# Training: covidcxr train gate

#: scikit-image sample images used as photograph negatives, split by identity.
PHOTOS = {
    "train": (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "horse",
        "hubble_deep_field",
        "immunohistochemistry",
        "moon",
        "page",
        "grass",
        "brick",
        "checkerboard",
        "colorwheel",
        "logo",
        "binary_blobs",
    ),
    "val": ("cat", "gravel"),
    "test": ("text", "rocket", "clock", "retina", "cell", "shepp_logan_phantom", "microaneurysms"),
}
SYNTHETIC = ("noise", "gradient", "shapes", "texture")


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _synthetic(kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(180, 700)), int(rng.integers(180, 700))
    if kind == "noise":
        return np.clip(rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), (h, w)), 0, 1)
    if kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        a, b = rng.normal(size=2)
        return _gray(a * yy + b * xx + rng.normal(0, 0.02, (h, w)))
    if kind == "shapes":
        img = np.full((h, w), rng.uniform(0, 1), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(2, 12))):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, h / 2), rng.uniform(10, w / 2)
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 1)
        return img
    if kind == "texture":
        import torch

        small = rng.normal(size=(int(rng.integers(3, 24)), int(rng.integers(3, 24))))
        t = torch.nn.functional.interpolate(
            torch.from_numpy(small).float()[None, None], size=(h, w), mode="bicubic", align_corners=False
        )[0, 0].numpy()
        return _gray(t + rng.normal(0, 0.05, (h, w)))
    raise ValueError(kind)


def negative_images(
    split: str, n_synthetic: int = 60, variants: int = 10, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """Non-X-ray images for a split: photographs (crops, turns) and synthetic images."""
    import skimage.data

    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    out = []
    for name in PHOTOS[split]:
        photo = _gray(getattr(skimage.data, name)())
        for v in range(variants):
            h, w = photo.shape
            ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = np.rot90(photo[y : y + ch, x : x + cw], int(rng.integers(0, 4)))
            out.append((f"photo:{name}:{v}", np.ascontiguousarray(crop)))
    for kind in SYNTHETIC:
        for v in range(n_synthetic // len(SYNTHETIC)):
            out.append((f"synthetic:{kind}:{v}", _synthetic(kind, rng).astype(np.float32)))
    return out


def gate_records(records: list[dict], split: str) -> tuple[list[dict], list[dict]]:
    """(frontal X-rays, lateral views and CT slices) of a split; unknown views are left out."""
    from .data.labels import is_frontal_xray

    frontal = [r for r in records if r["split"] == split and is_frontal_xray(r)]
    other = [r for r in records if r["split"] == split and (r["modality"] == "CT" or r["view"] == "L")]
    return frontal, other


def gate_features(
    images: list[np.ndarray], segmenter, batch_size: int = 16, desc: str = "gate features"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Encoder features (N, C) and lung masks of images, from stage 1."""
    from tqdm.auto import tqdm

    feats, masks = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        m, f = segmenter.segment(images[i : i + batch_size], features=True)
        feats.append(f)
        masks.extend(m)
    return (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), masks


def _variants(image: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` crops (75-100% per side), small turns and gamma changes of an image."""
    from scipy import ndimage

    out = []
    h, w = image.shape
    for _ in range(n):
        ch, cw = int(h * rng.uniform(0.75, 1.0)), int(w * rng.uniform(0.75, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        v = ndimage.rotate(image[y : y + ch, x : x + cw], rng.uniform(-10, 10), reshape=False, order=1, mode="nearest")
        out.append(np.clip(v, 0, 1) ** rng.uniform(0.7, 1.4))
    return out


#: What :func:`augment_frontal` may add to a frontal film, each with probability one half (at least one).
HOSPITAL_MARKS = ("tubes", "ecg", "text", "border", "turn", "small")
_LABELS = (
    "L",
    "R",
    "AP",
    "PORTABLE",
    "SUPINE",
    "ICU",
    "SITTING",
    "12/04/2020",
    "08:31",
    "BED 7",
    "CHEST AP",
    "UPRIGHT",
)


def _draw(image: np.ndarray, paint, value: float | None = None) -> np.ndarray:
    """``image`` with what ``paint(ImageDraw, scale)`` draws blended in at ``value`` (default: bright)."""
    from PIL import Image, ImageDraw

    layer = Image.new("L", image.shape[::-1], 0)
    paint(ImageDraw.Draw(layer), max(image.shape) / 512)
    alpha = np.asarray(layer, np.float32) / 255
    return image * (1 - alpha) + alpha * (value if value is not None else 1.0)


def _tubes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to four thick bright curves (tubes, lines, drains, pacemaker wires), most of them through the upper middle."""
    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(1, 5))):
            x0 = rng.uniform(0.3, 0.7) * w if rng.random() < 0.7 else rng.uniform(0, w)
            pts = np.array(
                [
                    [x0, rng.uniform(-0.05, 0.3) * h],
                    [rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.7) * h],
                    [rng.uniform(0, 1) * w, rng.uniform(0.3, 1.05) * h],
                ]
            )
            t = np.linspace(0, 1, 40)[:, None]
            curve = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t**2 * pts[2]  # quadratic Bezier
            draw.line(
                [tuple(p) for p in curve], fill=int(rng.integers(150, 256)), width=max(1, int(rng.uniform(2, 9) * s))
            )

    return _draw(image, paint, value=rng.uniform(0.85, 1.0))


def _ecg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two to seven ECG-lead circles (bright rings or discs) with a wire or two."""
    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(2, 8))):
            cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05, 0.8) * h, rng.uniform(6, 16) * s
            box = (cx - r, cy - r, cx + r, cy + r)
            if rng.random() < 0.5:
                draw.ellipse(box, fill=255)
            else:
                draw.ellipse(box, outline=255, width=max(1, int(r / 3)))
            if rng.random() < 0.4:
                draw.line(
                    [(cx, cy), (cx + rng.uniform(-0.3, 0.3) * w, cy + rng.uniform(-0.3, 0.3) * h)],
                    fill=200,
                    width=max(1, int(2 * s)),
                )

    return _draw(image, paint, value=rng.uniform(0.85, 1.0))


def _text(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burnt-in side markers and text (bright or dark), mostly near the edges."""
    from PIL import ImageFont

    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(1, 5))):
            font = ImageFont.load_default(size=max(8, int(rng.uniform(10, 36) * s)))
            x = rng.choice([rng.uniform(0.0, 0.2), rng.uniform(0.6, 0.85), rng.uniform(0, 0.85)]) * w
            y = rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.85, 0.95), rng.uniform(0, 0.95)]) * h
            draw.text((x, y), str(rng.choice(_LABELS)), fill=255, font=font)
            if rng.random() < 0.3:  # a marker box
                r = rng.uniform(10, 25) * s
                draw.rectangle((x, y, x + r, y + r), outline=255, width=max(1, int(2 * s)))

    return _draw(image, paint, value=1.0 if rng.random() < 0.8 else 0.0)


def _border(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film shrunk inside black, white or grey bands (letterbox, pillarbox or a frame), same size."""
    from .resize import resize_aa

    h, w = image.shape
    top, bottom, left, right = (rng.uniform(0, 0.15, 4) * [h, h, w, w]).astype(int)
    kind = rng.integers(3)
    if kind == 0:
        left = right = 0  # letterbox
    elif kind == 1:
        top = bottom = 0  # pillarbox
    out = np.full((h, w), rng.choice([0.0, 0.0, 1.0, rng.uniform(0.1, 0.6)]), np.float32)
    ih, iw = h - top - bottom, w - left - right
    if ih >= 16 and iw >= 16:
        out[top : top + ih, left : left + iw] = resize_aa(image, (ih, iw))
        return out
    return image


def _turn(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A turn of up to 15 degrees (black or edge-filled corners) and a crop to 75-100% per side, back to the same size."""
    from scipy import ndimage

    from .resize import resize_aa

    h, w = image.shape
    ch, cw = int(h * rng.uniform(0.75, 1.0)), int(w * rng.uniform(0.75, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    mode = "constant" if rng.random() < 0.5 else "nearest"
    turned = ndimage.rotate(
        image[y : y + ch, x : x + cw], rng.uniform(-15, 15), reshape=False, order=1, mode=mode, cval=0.0
    )
    return resize_aa(turned, (h, w))


def _small(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film as a 224-px copy (longer side), blown back up to its size: the detail of a 224 x 224 download."""
    from .resize import resize_aa, resize_bilinear

    h, w = image.shape
    f = 224 / max(h, w)
    if f >= 1:
        return image
    return resize_bilinear(resize_aa(image, (max(8, round(h * f)), max(8, round(w * f)))), (h, w))


def augment_frontal(image: np.ndarray, rng: np.random.Generator, marks: tuple[str, ...] = HOSPITAL_MARKS) -> np.ndarray:
    """A frontal film as a hospital might send it: lines and tubes, ECG leads, text, borders, turned and cropped, 224 px.

    Each of ``marks`` is applied with probability one half (at least one is), so the gate
    learns that such films are still frontal chest X-rays.

    Args:
        image: (H, W) float32 in [0, 1].
        rng: the random generator (the draws, not global state, decide what is added).
        marks: which of :data:`HOSPITAL_MARKS` may be applied.

    Returns:
        (H, W) float32 in [0, 1]: same size as ``image``.
    """
    ops = {"tubes": _tubes, "ecg": _ecg, "text": _text, "border": _border, "turn": _turn, "small": _small}
    chosen = [m for m in marks if rng.random() < 0.5] or [marks[int(rng.integers(len(marks)))]]
    out = np.asarray(image, np.float32)
    for m in (m for m in HOSPITAL_MARKS if m in chosen):  # geometry last but one, downscaling last
        out = ops[m](out, rng)
    return np.clip(out, 0, 1).astype(np.float32)


def _read_group(records: list[dict], target: int) -> list[tuple[str, str, np.ndarray]]:
    """(kind, path, image) of readable records."""
    from .io import ImageReadError, read_image

    out = []
    for r in records:
        try:
            image = read_image(r["path"])
        except ImageReadError:
            continue
        kind = f"{r['dataset']}:frontal" if target else ("CT" if r["modality"] == "CT" else "lateral")
        out.append((kind, str(r["path"]), image))
    return out


def _featurise(items: list[tuple[str, str, int, np.ndarray]], segmenter, desc: str) -> dict:
    """Gate inputs of (kind, name, target, image) items: x (features + geometry), y, kind, name, facts; blank images left out."""
    items = [it for it in items if blank_reason(it[3]) is None]  # blank images never reach the gate
    images = [it[3] for it in items]
    feats, masks = gate_features(images, segmenter, desc=desc)
    geo = np.stack([geometry(m) for m in masks])
    facts = np.stack([intensity_facts(im, m) for im, m in zip(images, masks)])
    return {
        "x": np.concatenate([feats, geo], axis=1),
        "y": np.array([it[2] for it in items]),
        "kind": [it[0] for it in items],
        "name": [it[1] for it in items],
        "facts": facts,
    }


def _cached(cache: Path | None, build) -> dict:
    if cache is not None and cache.is_file():
        data = np.load(cache)
        if "name" in data:  # a cache written before names were kept is rebuilt
            return {
                "x": data["x"],
                "y": data["y"],
                "kind": data["kind"].tolist(),
                "name": data["name"].tolist(),
                "facts": data["facts"],
            }
    data = build()
    if cache is not None:
        np.savez(
            cache,
            x=data["x"],
            y=data["y"],
            kind=np.array(data["kind"]),
            name=np.array(data["name"]),
            facts=data["facts"],
        )
    return data


def _subsample(frontal: list[dict], max_per_source: int, rng: np.random.Generator) -> list[dict]:
    by_source: dict[str, list[dict]] = {}
    for r in frontal:
        by_source.setdefault(r["dataset"], []).append(r)
    return [
        r
        for group in by_source.values()
        for r in (
            group
            if len(group) <= max_per_source
            else [group[i] for i in sorted(rng.choice(len(group), max_per_source, replace=False))]
        )
    ]


def _split_data(
    records: list[dict],
    split: str,
    segmenter,
    cache: Path | None = None,
    max_frontal: int = 0,
    variants: int = 0,
    seed: int = 0,
    negatives: bool = True,
) -> dict:
    """Features, targets, kinds and names of one split's gate examples (cached in ``cache`` when given).

    Options for the train split: at most ``max_frontal`` frontal X-rays per source (0: all),
    and ``variants`` altered copies of every lateral view and CT slice (tried with 6 on split
    v1: no better on validation). Validation and test: every image as it is.
    """

    def build() -> dict:
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        frontal, other = gate_records(records, split)
        if split == "train" and max_frontal:
            frontal = _subsample(frontal, max_frontal, rng)
        items = [(k, n, 1, im) for k, n, im in _read_group(frontal, 1)]
        for k, n, im in _read_group(other, 0):
            extra = _variants(im, variants, rng) if split == "train" else []
            items += [(k, n if i == 0 else f"{n}#variant{i}", 0, v) for i, v in enumerate([im, *extra])]
        items += [(name.split(":")[0], name, 0, img) for name, img in (negative_images(split) if negatives else [])]
        return _featurise(items, segmenter, f"gate features ({split})")

    return _cached(cache, build)


def _augmented_data(
    records: list[dict], split: str, segmenter, per_source: int, cache: Path | None = None, seed: int = 0
) -> dict:
    """Gate examples of :func:`augment_frontal` copies of up to ``per_source`` frontal films per source of a split (target 1)."""

    def build() -> dict:
        rng = np.random.default_rng([seed, 7, ("train", "val", "test").index(split)])
        frontal = _subsample(gate_records(records, split)[0], per_source, rng)
        items = [
            (f"{k}:augmented", f"{n}#augmented", 1, augment_frontal(im, rng)) for k, n, im in _read_group(frontal, 1)
        ]
        return _featurise(items, segmenter, f"gate features ({split}, augmented)")

    return _cached(cache, build)


def wilson_interval(refused: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a refusal rate ``refused / n`` (NaN, NaN for n = 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(refused), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate_with_ci(refused: np.ndarray) -> dict:
    """n, refused, rate and its Wilson 95% CI of a boolean array of refusals."""
    refused = np.asarray(refused, bool)
    k, n = int(refused.sum()), int(refused.size)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "refused": k, "rate": k / n if n else float("nan"), "ci": [lo, hi]}


def _codes(probs: np.ndarray, labels: list[str], lung_share: np.ndarray) -> list[str]:
    kinds = [labels[i] for i in np.asarray(probs).argmax(axis=1)]
    return [
        ("no_chest" if share < NO_CHEST_LUNG_SHARE else "photo")
        if k == "other"
        else {"lateral": "lateral", "CT": "ct"}.get(k, "unsure")
        for k, share in zip(kinds, lung_share)
    ]


def decide(p: np.ndarray, data: dict, spec) -> dict:
    """The gate's decisions on cached examples (``data``: x, facts), as :func:`gate_refusal` takes them one by one.

    Returns:
        by_gate, by_intensity (each check's own verdict, (N,) bool), refused (either) and
        reason (a key of :data:`REASONS` per example, the wording a refusal would carry).
    """
    check = spec.intensity_check or {}
    by_gate = np.asarray(p) < spec.threshold
    by_intensity = intensity_distance(data["facts"], check) > check["limit"] if check else np.zeros(len(by_gate), bool)
    head = check.get("kinds")
    geo = np.asarray(data["x"])[:, -3:]
    reason = (
        _codes(kind_probabilities(kind_inputs(p, geo, data["facts"]), head), head["labels"], geo[:, 0])
        if head
        else ["unsure"] * len(by_gate)
    )
    reason = [("ct" if r == "unsure" else r) if (i and not g) else r for r, g, i in zip(reason, by_gate, by_intensity)]
    return {"by_gate": by_gate, "by_intensity": by_intensity, "refused": by_gate | by_intensity, "reason": reason}


def refusal_rates(
    p: np.ndarray,
    y: np.ndarray,
    kinds: list[str],
    threshold: float,
    also: np.ndarray | None = None,
    reasons: list[str] | None = None,
) -> dict:
    """Refusals (p < threshold, or ``also`` true) per kind of input with Wilson CIs, by check and reason, and the headline rates.

    ``per_kind[kind]``: n, refused, rate, ci, by_gate (the linear gate refuses), by_intensity_only
    (the intensity check alone refuses) and, when ``reasons`` are given, the refusals by reason.
    """
    by_gate = np.asarray(p) < threshold
    by_int = np.asarray(also, bool) if also is not None else np.zeros(len(by_gate), bool)
    refused = by_gate | by_int
    kinds_a = np.array(kinds)
    per_kind = {}
    for k in sorted(set(kinds)):
        sel = kinds_a == k
        row = {
            **rate_with_ci(refused[sel]),
            "by_gate": int(by_gate[sel].sum()),
            "by_intensity_only": int((by_int & ~by_gate)[sel].sum()),
        }
        if reasons is not None:
            row["reasons"] = (
                {r: int(n) for r, n in zip(*np.unique(np.array(reasons)[sel & refused], return_counts=True))}
                if (sel & refused).any()
                else {}
            )
        per_kind[k] = row
    lat_ct = np.isin(kinds_a, ["lateral", "CT"])
    y = np.asarray(y)
    return {
        "false_refusal_frontal": float(refused[y == 1].mean()),
        "refusal_lateral_ct": float(refused[lat_ct].mean()) if lat_ct.any() else float("nan"),
        "refusal_non_xray": float(refused[(y == 0) & ~lat_ct].mean()) if ((y == 0) & ~lat_ct).any() else float("nan"),
        "n_frontal": int((y == 1).sum()),
        "n_lateral_ct": int(lat_ct.sum()),
        "lateral_ct": rate_with_ci(refused[lat_ct]),
        "per_kind": per_kind,
    }


def _pct(row: dict) -> str:
    return (
        f"{row['refused']}/{row['n']} = {row['rate']:.1%} [{row['ci'][0]:.1%}, {row['ci'][1]:.1%}]" if row["n"] else "–"
    )


def refusal_table(results: dict[str, dict]) -> str:
    """A Markdown table of refusals per kind (rows) and split (columns), each 'k/n = rate [Wilson 95% CI]'."""
    splits = list(results)
    kinds = sorted({k for r in results.values() for k in r["per_kind"]}, key=lambda k: (not k.endswith(":frontal"), k))
    lines = ["| input | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for k in kinds:
        cells = [_pct(results[s]["per_kind"][k]) if k in results[s]["per_kind"] else "–" for s in splits]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| lateral + CT | " + " | ".join(_pct(results[s]["lateral_ct"]) for s in splits) + " |")
    return "\n".join(lines) + "\n"


def refused_list(data: dict, p: np.ndarray, decision: dict, split: str) -> list[dict]:
    """Frontal films refused and lateral views / CT slices let through: what a person should look at."""
    out = []
    for i, (y, kind, name) in enumerate(zip(data["y"], data["kind"], data["name"])):
        wrong = decision["refused"][i] if y == 1 else (kind in ("lateral", "CT") and not decision["refused"][i])
        if wrong:
            check = "gate" if decision["by_gate"][i] else ("intensity" if decision["by_intensity"][i] else "accepted")
            out.append(
                {
                    "split": split,
                    "kind": kind,
                    "name": name,
                    "p_frontal": round(float(p[i]), 4),
                    "check": check,
                    "reason": decision["reason"][i] if decision["refused"][i] else "accepted",
                }
            )
    return out


def contact_sheet(items: list[dict], path: str | Path, columns: int = 6, title: str = "") -> Path:
    """A PNG grid of thumbnails (``items``: name = image path, plus kind, check, reason, p_frontal) captioned with file name and reason."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import ImageReadError, read_image
    from .report import plain_text
    from .resize import resize_aa

    items = [it for it in items if Path(str(it["name"]).split("#")[0]).is_file()]
    rows = max(1, -(-len(items) // columns))
    fig = Figure(figsize=(2.4 * columns, 2.9 * rows + 0.4))
    FigureCanvasAgg(fig)
    fig.suptitle(plain_text(title or f"{len(items)} images", 120), fontsize=10)
    if not items:
        fig.text(0.5, 0.5, "none", ha="center", va="center")
    for i, it in enumerate(items):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.set_axis_off()
        try:
            image = read_image(str(it["name"]).split("#")[0])
            f = 200 / max(image.shape)
            ax.imshow(
                resize_aa(image, (max(1, round(image.shape[0] * f)), max(1, round(image.shape[1] * f))))
                if f < 1
                else image,
                cmap="gray",
                vmin=0,
                vmax=1,
            )
        except ImageReadError:
            pass
        caption = f"{plain_text(Path(str(it['name'])).name, 28)}\n{it['kind']} ({it['split']})\n{it['check']}: {it['reason']}, p={it['p_frontal']:.2f}"
        ax.set_title(caption, fontsize=6.5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


# -- fitting ------------------------------------------------------------------

#: Training settings of the shipped gate (docs/experiments/gate-hospital-sources.md).
MAX_FRONTAL_PER_SOURCE = 600
AUGMENTED_PER_SOURCE = {"train": 250, "val": 40}
KIND_LABELS = ("frontal", "lateral", "CT", "other")


def gate_data(
    records: list[dict], segmenter, out: Path, splits=("train", "val", "test"), augmented: bool = True
) -> dict[str, dict]:
    """Cached gate examples per split, plus ``<split>_augmented`` (augmented frontal copies) for train and validation."""
    data = {
        s: _split_data(
            records,
            s,
            segmenter,
            cache=out / f"features_{s}.npz",
            max_frontal=MAX_FRONTAL_PER_SOURCE if s == "train" else 0,
        )
        for s in splits
    }
    if augmented:
        for s in [s for s in ("train", "val") if s in splits]:
            data[f"{s}_augmented"] = _augmented_data(
                records, s, segmenter, AUGMENTED_PER_SOURCE[s], cache=out / f"features_{s}_augmented.npz"
            )
    return data


def _concat(*parts: dict) -> dict:
    return {
        "x": np.concatenate([d["x"] for d in parts]),
        "y": np.concatenate([d["y"] for d in parts]),
        "kind": [k for d in parts for k in d["kind"]],
        "name": [n for d in parts for n in d["name"]],
        "facts": np.concatenate([d["facts"] for d in parts]),
    }


def fit_gate(x: np.ndarray, y: np.ndarray, C: float = 0.05):
    """The gate model: class-balanced logistic regression on standardised features, as a FrontalGate."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from .models import create_model

    mean, scale = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x - mean) / scale, y)
    gate = create_model("frontal_gate", in_features=x.shape[1])
    with torch.no_grad():
        gate.mean.copy_(torch.from_numpy(mean))
        gate.scale.copy_(torch.from_numpy(scale))
        gate.linear.weight.copy_(torch.from_numpy(clf.coef_).float())
        gate.linear.bias.copy_(torch.from_numpy(clf.intercept_).float())
    return gate


def gate_probability(gate, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.sigmoid(gate(torch.from_numpy(np.asarray(x, np.float32)))).numpy()


def fit_threshold(p_frontal_val: np.ndarray, max_false_refusal: float = 0.01) -> float:
    """The highest threshold (at most 0.5) that refuses no more than ``max_false_refusal`` of frontal validation images."""
    p = np.sort(p_frontal_val)
    return float(min(0.5, p[int(np.floor(max_false_refusal * len(p)))])) if len(p) else 0.5


def fit_kind_head(p: np.ndarray, data: dict) -> dict:
    """The reason head: class-balanced multinomial logistic regression (frontal / lateral / CT / other) on :func:`kind_inputs`."""
    from sklearn.linear_model import LogisticRegression

    kinds = np.array(data["kind"])
    label = np.where(data["y"] == 1, "frontal", np.where(np.isin(kinds, ["lateral", "CT"]), kinds, "other"))
    z = kind_inputs(p, data["x"][:, -3:], data["facts"])
    mean, scale = z.mean(0), z.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000, class_weight="balanced").fit((z - mean) / scale, label)
    order = [list(clf.classes_).index(k) for k in KIND_LABELS]
    return {
        "labels": list(KIND_LABELS),
        "inputs": ["gate logit", "lung share", "left/right balance", "aspect", *INTENSITY_FACTS],
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": clf.coef_[order].tolist(),
        "intercept": clf.intercept_[order].tolist(),
    }


class _Spec:  # the two fields :func:`decide` reads, before the WeightSpec exists
    def __init__(self, threshold: float, intensity_check: dict) -> None:
        self.threshold, self.intensity_check = threshold, intensity_check


def fit_all(
    data: dict[str, dict],
    C: float = 0.2,
    augmented: bool = True,
    percentile: float = INTENSITY_PERCENTILE,
    max_false_refusal: float = 0.01,
):
    """(gate, threshold, intensity check with its reason head) from cached examples; validation sets the threshold only."""
    train = (
        _concat(data["train"], data["train_augmented"]) if augmented and "train_augmented" in data else data["train"]
    )
    gate = fit_gate(train["x"], train["y"], C)
    threshold = fit_threshold(gate_probability(gate, data["val"]["x"][data["val"]["y"] == 1]), max_false_refusal)
    check = fit_intensity_check(data["train"]["facts"][data["train"]["y"] == 1], percentile)
    check["kinds"] = fit_kind_head(gate_probability(gate, train["x"]), train)
    return gate, threshold, check


def score(gate, spec, data: dict[str, dict]) -> tuple[dict, list[dict]]:
    """Refusal rates per split (:func:`refusal_rates`) and the list of wrong decisions (:func:`refused_list`)."""
    results, wrong = {}, []
    for s, d in data.items():
        p = gate_probability(gate, d["x"])
        dec = decide(p, d, spec)
        results[s] = refusal_rates(p, d["y"], d["kind"], spec.threshold, dec["by_intensity"], dec["reason"])
        wrong += refused_list(d, p, dec, s)
    return results, wrong


def source_totals(results: dict[str, dict], splits=("train", "val", "test")) -> dict[str, dict]:
    """Frontal refusals per source over the given splits together (e.g. all of hannover's images)."""
    totals: dict[str, list[int]] = {}
    for s in splits:
        for k, row in results.get(s, {}).get("per_kind", {}).items():
            if k.endswith(":frontal"):
                t = totals.setdefault(k.split(":")[0], [0, 0])
                t[0], t[1] = t[0] + row["refused"], t[1] + row["n"]
    return {
        src: {"n": n, "refused": k, "rate": k / n, "ci": list(wilson_interval(k, n))} for src, (k, n) in totals.items()
    }


def _subset(d: dict, keep: np.ndarray) -> dict:
    idx = np.flatnonzero(keep)
    return {
        "x": d["x"][idx],
        "y": d["y"][idx],
        "kind": [d["kind"][i] for i in idx],
        "name": [d["name"][i] for i in idx],
        "facts": d["facts"][idx],
    }


def out_of_fold(data: dict[str, dict], records: list[dict], source: str = "hannover", folds: int = 5, **fit_kw) -> dict:
    """Refusals of one source's frontal training films by gates refitted without their patients (patient-grouped folds).

    Each fold drops every training example (augmented copies and other folders included) of
    its patients, refits gate, threshold and intensity check (:func:`fit_all`) and scores the
    fold's films: an estimate of how the gate treats that source's films it was not trained on.
    """
    patient = {str(r["path"]): r["patient_id"] for r in records}
    pid = lambda name: patient.get(str(name).split("#")[0])  # noqa: E731
    train = data["train"]
    mine = np.array([k == f"{source}:frontal" for k in train["kind"]])
    patients = sorted({pid(n) for n, m in zip(train["name"], mine) if m})
    fold_of = {p: i % folds for i, p in enumerate(np.random.default_rng(0).permutation(patients))}
    refused = np.zeros(int(mine.sum()), bool)
    where = np.flatnonzero(mine)
    for f in range(folds):
        held = lambda d, f=f: np.array([fold_of.get(pid(n), -1) == f for n in d["name"]], bool)  # noqa: E731
        fold = {
            s: (_subset(d, ~held(d)) if s.startswith("train") else d)
            for s, d in data.items()
            if s in ("train", "train_augmented", "val")
        }
        gate, threshold, check = fit_all(fold, **fit_kw)
        test = held(train) & mine
        d = _subset(train, test)
        refused[np.isin(where, np.flatnonzero(test))] = decide(
            gate_probability(gate, d["x"]), d, _Spec(threshold, check)
        )["refused"]
    return {"source": source, "folds": folds, "patients": len(patients), **rate_with_ci(refused)}


def write_report(out: Path, results: dict, wrong: list[dict], extra: dict, title: str) -> None:
    """gate_eval.json, gate_eval.md (the per-source table) and refused.png (contact sheet) in ``out``."""
    import json

    (out / "gate_eval.json").write_text(json.dumps({**extra, "results": results, "wrong": wrong}, indent=2) + "\n")
    totals = extra.get("all_splits", {})
    md = [
        f"# {title}\n",
        "Refused / n = rate [Wilson 95% CI]; frontal rows are false refusals, the others true refusals.\n",
        refusal_table(results),
    ]
    if totals:
        md += [
            f"\nFrontal films refused over {', '.join(results)} together (train films are in-sample for a gate trained on them):\n",
            "| source | refused |",
            "|---|---|",
        ]
        md += [f"| {src} | {_pct(row)} |" for src, row in sorted(totals.items())]
    md += [
        "\nFrontal films refused, by the check that refused them (the linear gate; the intensity check alone):\n",
        "| split | linear gate | intensity check alone | reasons given |",
        "|---|---|---|---|",
    ]
    for split, r in results.items():
        rows = [v for k, v in r["per_kind"].items() if ":frontal" in k]
        why: dict[str, int] = {}
        for v in rows:
            for code, n in v.get("reasons", {}).items():
                why[code] = why.get(code, 0) + n
        md.append(
            f"| {split} | {sum(v['by_gate'] for v in rows)} | {sum(v['by_intensity_only'] for v in rows)} | "
            + (", ".join(f"{n} {c}" for c, n in sorted(why.items())) or "–")
            + " |"
        )
    oof = extra.get("out_of_fold")
    if oof:
        md.append(
            f"\n{oof['source']} training films scored by gates refitted without their patients ({oof['folds']} patient folds, "
            f"{oof['patients']} patients): refused {_pct(oof)}\n"
        )
    (out / "gate_eval.md").write_text("\n".join(md) + "\n")
    films = [w for w in wrong if "#" not in str(w["name"])]  # augmented copies and variants would show their original
    contact_sheet(
        films,
        out / "refused.png",
        title=f"{title}: frontal films refused, lateral views and CT slices let through ({len(films)})",
    )


def train_gate(
    data_root: str | None = None,
    out_dir: str = "runs/gate",
    export_dir: str | None = None,
    max_false_refusal: float = 0.01,
    C: float = 0.2,
    augmented: bool = True,
    percentile: float = INTENSITY_PERCENTILE,
) -> dict:
    """Fit the gate on the train split (all sources, with augmented frontal copies), pick its threshold on validation, measure it on test, export it."""
    from .data import load_records
    from .data.splits import SPLIT_VERSION
    from .io import NORMALIZATION
    from .models import WeightSpec, save_weights
    from .pipeline import LungSegmenter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data_root)
    segmenter = LungSegmenter.from_spec()
    data = gate_data(records, segmenter, out, augmented=augmented)
    gate, threshold, check = fit_all(data, C, augmented, percentile, max_false_refusal)
    results, wrong = score(gate, _Spec(threshold, check), data)
    totals = source_totals(results)
    oof = out_of_fold(
        data, records, "hannover", C=C, augmented=augmented, percentile=percentile, max_false_refusal=max_false_refusal
    )
    sizes = {s: {"n": len(d["y"]), "positives": int(d["y"].sum())} for s, d in data.items()}
    spec = WeightSpec(
        name="frontal_cxr_gate",
        architecture="frontal_gate",
        task="gate",
        targets=["frontal chest X-ray"],
        input_size=tuple(segmenter.spec.input_size),
        normalization=NORMALIZATION,
        file="frontal_cxr_gate.pt",
        resize="stage-1 encoder features",
        threshold=round(threshold, 4),
        dtype="float32",
        model_kwargs={"in_features": int(data["train"]["x"].shape[1])},
        lung_weights=segmenter.spec.sha256,
        intensity_check=check,
        training={
            "command": "covidcxr train gate --out runs/gate --export src/covidcxr/weights",
            "data": {
                "split_version": SPLIT_VERSION,
                "max_frontal_per_source": MAX_FRONTAL_PER_SOURCE,
                "augmented_per_source": AUGMENTED_PER_SOURCE if augmented else {},
                **sizes,
            },
            "augmentation": f"augment_frontal copies of frontal training films: {', '.join(HOSPITAL_MARKS)} (each p = 0.5)"
            if augmented
            else "none",
            "classifier": f"sklearn LogisticRegression(C={C}, class_weight='balanced') on standardised features",
            "threshold_rule": f"highest threshold <= 0.5 refusing at most {max_false_refusal:.0%} of frontal validation images",
            "intensity_rule": f"refuse when the intensity-facts distance exceeds its {percentile} percentile over frontal training images",
            "reason_head": "intensity_check.kinds: multinomial logistic regression (frontal / lateral / CT / other) on the gate logit, mask geometry and intensity facts; words refusals only",
        },
        metrics={
            "split": "test",
            "false_refusal_frontal": round(results["test"]["false_refusal_frontal"], 4),
            "refusal_lateral_ct": round(results["test"]["refusal_lateral_ct"], 4),
            "refusal_non_xray": round(results["test"]["refusal_non_xray"], 4),
            "n_frontal": results["test"]["n_frontal"],
            "n_lateral_ct": results["test"]["n_lateral_ct"],
            "frontal_refused_per_source": {
                k.split(":")[0]: round(r["rate"], 4)
                for k, r in results["test"]["per_kind"].items()
                if k.endswith(":frontal")
            },
            "frontal_refused_all_splits": {src: round(r["rate"], 4) for src, r in totals.items()},
            "hannover_train_out_of_fold": round(oof["rate"], 4),
        },
    )
    spec_path = save_weights(gate, spec, export_dir or out / "export")
    write_report(
        out,
        results,
        wrong,
        {"threshold": threshold, "all_splits": totals, "out_of_fold": oof, "spec": str(spec_path)},
        "Input gate, split " + SPLIT_VERSION,
    )
    return {"spec": str(spec_path), "threshold": threshold, "results": results, "all_splits": totals}


def evaluate_gate(
    spec_path: str | None = None,
    data_root: str | None = None,
    splits=("test",),
    sources: list[str] | None = None,
    out_dir: str = "eval/gate",
) -> dict:
    """Refusals of a gate spec (default: shipped) per source and split, with CIs, table and contact sheet in ``out_dir``.

    Features are recomputed from the images (nothing cached); ``sources`` keeps only those
    folders' films (and leaves out photographs and synthetic images).
    """
    from .data import load_records
    from .models import load_weights
    from .pipeline import LungSegmenter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gate, spec = load_weights(spec_path, kind="gate")
    records = load_records(data_root)
    if sources:
        unknown = set(sources) - {r["dataset"] for r in records}
        if unknown:
            raise ValueError(f"unknown source(s) {sorted(unknown)}; known: {sorted({r['dataset'] for r in records})}")
        records = [r for r in records if r["dataset"] in sources]
    segmenter = LungSegmenter.from_spec()
    data = {s: _split_data(records, s, segmenter, negatives=not sources) for s in splits}
    results, wrong = score(gate, spec, data)
    totals = source_totals(results, splits)
    write_report(
        out,
        results,
        wrong,
        {"threshold": spec.threshold, "gate_sha256": spec.sha256, "all_splits": totals},
        f"Input gate {spec.sha256[:12]}",
    )
    return {"results": results, "all_splits": totals, "out": str(out)}
