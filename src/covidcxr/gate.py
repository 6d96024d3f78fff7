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


def refusal(p_frontal: float, threshold: float) -> str | None:
    """The refusal message for a gate probability under the threshold, else ``None``."""
    if p_frontal >= threshold:
        return None
    return (
        f"not recognised as a frontal chest X-ray (gate probability {p_frontal:.2f} < {threshold:.2f}); "
        "lateral views, CT slices, photographs and other images are refused. Use --no-gate to force a reading (research use)"
    )


#: Names of :func:`intensity_facts`, in order.
INTENSITY_FACTS = (
    "lung p10", "lung p50", "lung p90", "outside p10", "outside p50", "outside p90",
    "lung - outside median", "black share", "lung gradient", "lung spread",
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
        image, mask = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    size = (_FACTS_SIZE, _FACTS_SIZE)
    small = resize_aa(np.asarray(image, np.float32), size)
    lungs = resize_nearest(np.asarray(mask, np.uint8), size) > 0
    inside, outside = small[lungs], small[~lungs]
    inside = inside if inside.size >= 10 else small.ravel()
    outside = outside if outside.size >= 10 else small.ravel()
    grad = np.hypot(*np.gradient(small))
    lq, oq = np.percentile(inside, [10, 50, 90]), np.percentile(outside, [10, 50, 90])
    return np.array([*lq, *oq, lq[1] - oq[1], (small < 0.05).mean(), grad[lungs].mean() if lungs.any() else grad.mean(), inside.std()], np.float32)


def intensity_distance(facts: np.ndarray, check: dict) -> np.ndarray:
    """Mahalanobis distances (N,) of intensity facts (N, 10) from the frontal training X-rays (``check``: mean, precision)."""
    d = np.atleast_2d(facts) - np.asarray(check["mean"], np.float64)
    return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(check["precision"], np.float64), d), 0))


def intensity_refusal(image: np.ndarray, mask: np.ndarray, check: dict) -> str | None:
    """The refusal message for an image whose intensities are unlike a frontal X-ray's, else ``None`` (also when ``check`` is empty)."""
    if not check:
        return None
    dist = float(intensity_distance(intensity_facts(image, mask), check)[0])
    if dist <= check["limit"]:
        return None
    return (
        f"not recognised as a frontal chest X-ray (its intensities inside and outside the lungs are unlike an X-ray's, as in a CT "
        f"reconstruction: distance {dist:.0f} > {check['limit']:.0f}); use --no-gate to force a reading (research use)"
    )


def gate_refusal(p_frontal: float, image: np.ndarray, mask: np.ndarray, spec) -> str | None:
    """The gate's decision on one image, given its gate probability and lung mask: a refusal message or ``None``.

    The linear gate first (``spec.threshold``), then the intensity check (``spec.intensity_check``).
    """
    return refusal(p_frontal, spec.threshold) or intensity_refusal(image, mask, spec.intensity_check)


def fit_intensity_check(facts: np.ndarray, percentile: float = INTENSITY_PERCENTILE) -> dict:
    """Mean, precision (Ledoit-Wolf) and limit (``percentile`` of their own distances) of frontal X-rays' facts (N, 10)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(facts)
    check = {"facts": list(INTENSITY_FACTS), "mean": lw.location_.tolist(), "precision": lw.precision_.tolist(), "percentile": percentile}
    check["limit"] = float(np.percentile(intensity_distance(facts, check), percentile))
    return check


# ---------------------------------------------------------------------------
# Training: covidcxr train gate

#: scikit-image sample images used as photograph negatives, split by identity.
PHOTOS = {
    "train": ("astronaut", "camera", "chelsea", "coffee", "coins", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "grass", "brick", "checkerboard", "colorwheel", "logo", "binary_blobs"),
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
        t = torch.nn.functional.interpolate(torch.from_numpy(small).float()[None, None], size=(h, w), mode="bicubic", align_corners=False)[0, 0].numpy()
        return _gray(t + rng.normal(0, 0.05, (h, w)))
    raise ValueError(kind)


def negative_images(split: str, n_synthetic: int = 60, variants: int = 10, seed: int = 0) -> list[tuple[str, np.ndarray]]:
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


def gate_features(images: list[np.ndarray], segmenter, batch_size: int = 16, desc: str = "gate features") -> tuple[np.ndarray, list[np.ndarray]]:
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


def _split_data(records: list[dict], split: str, segmenter, cache: Path | None = None, max_frontal: int = 0, variants: int = 0, seed: int = 0) -> dict:
    """Features, targets and kinds of one split's gate examples (cached in ``cache`` when given).

    Options for the train split (off by default; the shipped gate uses every image once):
    at most ``max_frontal`` frontal X-rays per source, and ``variants`` altered copies of
    every lateral view and CT slice. Tried with 300 and 6: no better on validation, coronal
    CT reconstructions still pass. Validation and test: every image as it is.
    """
    from .io import ImageReadError, read_image

    if cache is not None and cache.is_file():
        data = np.load(cache)
        if "facts" in data:  # a cache written before the intensity check is rebuilt
            return {"x": data["x"], "y": data["y"], "kind": data["kind"].tolist(), "facts": data["facts"]}
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    frontal, other = gate_records(records, split)
    if split == "train" and max_frontal:
        by_source: dict[str, list[dict]] = {}
        for r in frontal:
            by_source.setdefault(r["dataset"], []).append(r)
        frontal = [r for group in by_source.values() for r in (group if len(group) <= max_frontal else [group[i] for i in sorted(rng.choice(len(group), max_frontal, replace=False))])]
    images, kinds, targets = [], [], []
    for group, target in ((frontal, 1), (other, 0)):
        for r in group:
            try:
                image = read_image(r["path"])
            except ImageReadError:
                continue
            kind = f"{r['dataset']}:frontal" if target else ("CT" if r["modality"] == "CT" else "lateral")
            extra = _variants(image, variants, rng) if (split == "train" and not target) else []
            for im in [image, *extra]:
                images.append(im)
                kinds.append(kind)
                targets.append(target)
    for name, img in negative_images(split):
        images.append(img)
        kinds.append(name.split(":")[0])
        targets.append(0)
    keep = [i for i, im in enumerate(images) if blank_reason(im) is None]  # blank images never reach the gate
    images = [images[i] for i in keep]
    feats, masks = gate_features(images, segmenter, desc=f"gate features ({split})")
    geo = np.stack([geometry(m) for m in masks])
    facts = np.stack([intensity_facts(im, m) for im, m in zip(images, masks)])
    data = {"x": np.concatenate([feats, geo], axis=1), "y": np.array([targets[i] for i in keep]), "kind": [kinds[i] for i in keep], "facts": facts}
    if cache is not None:
        np.savez(cache, x=data["x"], y=data["y"], kind=np.array(data["kind"]), facts=facts)
    return data


def refusal_rates(p: np.ndarray, y: np.ndarray, kinds: list[str], threshold: float, also: np.ndarray | None = None) -> dict:
    """Share refused (p < threshold, or ``also`` true) per kind of input, and the two headline rates."""
    refused = (p < threshold) | (also if also is not None else False)
    kinds_a = np.array(kinds)
    per_kind = {k: {"n": int((kinds_a == k).sum()), "refused": float(refused[kinds_a == k].mean())} for k in sorted(set(kinds))}
    lat_ct = np.isin(kinds_a, ["lateral", "CT"])
    return {
        "false_refusal_frontal": float(refused[y == 1].mean()),
        "refusal_lateral_ct": float(refused[lat_ct].mean()) if lat_ct.any() else float("nan"),
        "refusal_non_xray": float(refused[(y == 0) & ~lat_ct].mean()),
        "n_frontal": int((y == 1).sum()),
        "n_lateral_ct": int(lat_ct.sum()),
        "per_kind": per_kind,
    }


def train_gate(data_root: str | None = None, out_dir: str = "runs/gate", export_dir: str | None = None, max_false_refusal: float = 0.01) -> dict:
    """Fit the gate on the train split, pick its threshold on validation, measure it on test, export it."""
    import json

    import torch

    from sklearn.linear_model import LogisticRegression

    from .data import load_records
    from .data.splits import SPLIT_VERSION
    from .io import NORMALIZATION
    from .models import WeightSpec, create_model, save_weights
    from .pipeline import LungSegmenter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data_root)
    segmenter = LungSegmenter.from_spec()
    data = {s: _split_data(records, s, segmenter, cache=out / f"features_{s}.npz") for s in ("train", "val", "test")}
    mean, scale = data["train"]["x"].mean(0), data["train"]["x"].std(0) + 1e-6
    clf = LogisticRegression(C=0.05, max_iter=5000, class_weight="balanced")
    clf.fit((data["train"]["x"] - mean) / scale, data["train"]["y"])
    gate = create_model("frontal_gate", in_features=data["train"]["x"].shape[1])
    with torch.no_grad():
        gate.mean.copy_(torch.from_numpy(mean))
        gate.scale.copy_(torch.from_numpy(scale))
        gate.linear.weight.copy_(torch.from_numpy(clf.coef_).float())
        gate.linear.bias.copy_(torch.from_numpy(clf.intercept_).float())
    probs = {s: torch.sigmoid(gate(torch.from_numpy(d["x"]).float())).detach().numpy() for s, d in data.items()}
    frontal_val = np.sort(probs["val"][data["val"]["y"] == 1])
    # The highest threshold (at most 0.5) that refuses no more than max_false_refusal of frontal validation images.
    threshold = float(min(0.5, frontal_val[int(np.floor(max_false_refusal * len(frontal_val)))])) if len(frontal_val) else 0.5
    check = fit_intensity_check(data["train"]["facts"][data["train"]["y"] == 1])
    results = {s: refusal_rates(probs[s], d["y"], d["kind"], threshold, intensity_distance(d["facts"], check) > check["limit"]) for s, d in data.items()}
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
            "data": {"split_version": SPLIT_VERSION, **{s: {"n": len(d["y"]), "positives": int(d["y"].sum())} for s, d in data.items()}},
            "classifier": "sklearn LogisticRegression(C=0.05, class_weight='balanced') on standardised features",
            "threshold_rule": f"highest threshold <= 0.5 refusing at most {max_false_refusal:.0%} of frontal validation images",
            "intensity_rule": f"refuse when the intensity-facts distance exceeds its {INTENSITY_PERCENTILE} percentile over frontal training images",
        },
        metrics={"split": "test", "false_refusal_frontal": round(results["test"]["false_refusal_frontal"], 4), "refusal_lateral_ct": round(results["test"]["refusal_lateral_ct"], 4), "refusal_non_xray": round(results["test"]["refusal_non_xray"], 4), "n_frontal": results["test"]["n_frontal"], "n_lateral_ct": results["test"]["n_lateral_ct"]},
    )
    spec_path = save_weights(gate, spec, export_dir or out / "export")
    (out / "gate_eval.json").write_text(json.dumps({"threshold": threshold, "results": results}, indent=2))
    return {"spec": str(spec_path), "threshold": threshold, "results": results}
