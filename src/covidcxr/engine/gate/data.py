"""The gate's examples: stage-1 features, mask geometry and intensity facts of each split's images, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...infer.gate import blank_refusal, gate_records, intensity_facts
from ...io import ImageReadError, read_image
from ...postprocess import geometry
from .images import augment_frontal, negative_images

#: Training settings of the shipped gate (docs/experiments/gate-hospital-sources.md).
MAX_FRONTAL_PER_SOURCE = 600
AUGMENTED_PER_SOURCE = {"train": 250, "val": 40}


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


def _read_group(records: list[dict], target: int) -> list[tuple[str, str, np.ndarray]]:
    """(kind, path, image) of readable records."""
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
    items = [it for it in items if blank_refusal(it[3]) is None]  # blank images never reach the gate
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


def cached(cache: Path | None, build) -> dict:
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


def split_data(
    records: list[dict],
    split: str,
    segmenter,
    cache: Path | None = None,
    max_frontal: int = 0,
    seed: int = 0,
    negatives: bool = True,
    limit: int = 0,
) -> dict:
    """Features, targets, kinds and names of one split's gate examples (cached in ``cache`` when given).

    ``max_frontal``: at most that many frontal X-rays per source of the train split (0: all);
    validation and test keep every image. ``limit`` (a smoke run) keeps at most that many
    frontal and that many other images per source, and that many non-X-ray images, before any
    image is read.
    """

    def build() -> dict:
        rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
        frontal, other = gate_records(records, split)
        if split == "train" and max_frontal:
            frontal = _subsample(frontal, max_frontal, rng)
        if limit:
            frontal, other = _subsample(frontal, limit, rng), _subsample(other, limit, rng)
        items = [(k, n, 1, im) for k, n, im in _read_group(frontal, 1)]
        items += [(k, n, 0, im) for k, n, im in _read_group(other, 0)]
        shown = negative_images(split) if negatives else []
        if limit and len(shown) > limit:
            shown = shown[:: -(-len(shown) // limit)]
        items += [(name.split(":")[0], name, 0, img) for name, img in shown]
        return _featurise(items, segmenter, f"gate features ({split})")

    return cached(cache, build)


def augmented_data(
    records: list[dict],
    split: str,
    segmenter,
    per_source: int,
    cache: Path | None = None,
    seed: int = 0,
    tag: str = "augmented",
) -> dict:
    """Gate examples of :func:`augment_frontal` copies of up to ``per_source`` frontal films per source of a split (target 1).

    Their kinds and names carry ``tag`` (``<source>:frontal:<tag>``, ``<path>#<tag>``).
    """

    def build() -> dict:
        rng = np.random.default_rng([seed, 7, ("train", "val", "test").index(split)])
        frontal = _subsample(gate_records(records, split)[0], per_source, rng)
        items = [(f"{k}:{tag}", f"{n}#{tag}", 1, augment_frontal(im, rng)) for k, n, im in _read_group(frontal, 1)]
        return _featurise(items, segmenter, f"gate features ({split}, {tag})")

    return cached(cache, build)


def gate_data(
    records: list[dict],
    segmenter,
    out: Path,
    splits=("train", "val", "test"),
    augmented: bool = True,
    limit: int = 0,
) -> dict[str, dict]:
    """Cached gate examples per split, plus ``<split>_augmented`` (augmented frontal copies) for train and validation.

    ``limit`` (a smoke run): at most that many images of each kind per source and split (:func:`split_data`).
    """
    data = {
        s: split_data(
            records,
            s,
            segmenter,
            cache=out / f"features_{s}.npz",
            max_frontal=MAX_FRONTAL_PER_SOURCE if s == "train" else 0,
            limit=limit,
        )
        for s in splits
    }
    if augmented:
        for s in [s for s in ("train", "val") if s in splits]:
            per_source = min(AUGMENTED_PER_SOURCE[s], limit) if limit else AUGMENTED_PER_SOURCE[s]
            data[f"{s}_augmented"] = augmented_data(
                records, s, segmenter, per_source, out / f"features_{s}_augmented.npz"
            )
    return data


def concat(*parts: dict) -> dict:
    return {
        "x": np.concatenate([d["x"] for d in parts]),
        "y": np.concatenate([d["y"] for d in parts]),
        "kind": [k for d in parts for k in d["kind"]],
        "name": [n for d in parts for n in d["name"]],
        "facts": np.concatenate([d["facts"] for d in parts]),
    }


def subset(d: dict, keep: np.ndarray) -> dict:
    idx = np.flatnonzero(keep)
    return {
        "x": d["x"][idx],
        "y": d["y"][idx],
        "kind": [d["kind"][i] for i in idx],
        "name": [d["name"][i] for i in idx],
        "facts": d["facts"][idx],
    }
