"""Lung views of the diagnosis data: stage-1 masks, lung view and enhancement per image, cached; draw weights.

See :mod:`covidcxr.research.cnn_train` for the path of the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...data.classification import lung_view
from ...data.lung_cache import cached_lung_masks, load_cached_mask
from ...io import ImageReadError, read_image
from ...io.enhance import check_enhancement, enhance

log = logging.getLogger(__name__)

SAMPLINGS = ("class_source", "group", "class", "none")


def views_cache_dir() -> Path:
    base = os.environ.get("COVIDCXR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "covidcxr") / "views"


def prepare_views(
    samples: list[dict],
    segmenter,
    size: int,
    margin: float,
    whole: bool = False,
    enhancement: str = "none",
    cache: bool = True,
    progress: bool = True,
) -> dict:
    """Lung views of ``samples`` at ``size``: stage-1 masks, then lung view and enhancement per image.

    Each view is :func:`lung_view` followed by :func:`covidcxr.io.enhance.enhance` with
    ``enhancement``, as :meth:`covidcxr.infer.Diagnoser.view` does at inference. Kept as
    one ``.npz`` per (lung weights, size, margin, enhancement, sample list), so evaluation
    and audits after training read them in seconds.

    Returns:
        dict of ``images`` (N, S, S) uint8, ``lungs`` (N, S, S) bool, ``labels`` (N,),
        ``samples`` (the N samples kept; unreadable images are dropped and logged),
        ``lung_fraction`` (N,) share of each view that is lung.
    """
    check_enhancement(enhancement)
    # "none" leaves the key as it was before enhancements existed, so those caches stay valid.
    setting = [segmenter.spec.sha256, size, margin, whole] + ([enhancement] if enhancement != "none" else [])
    key = hashlib.sha256(json.dumps([*setting, [(s["dataset"], s["filename"]) for s in samples]]).encode()).hexdigest()[
        :16
    ]
    path = views_cache_dir() / f"{key}.npz"
    by_name = {f"{s['dataset']}/{s['filename']}": s for s in samples}
    if cache and path.is_file():
        data = np.load(path)
        # Stored by dataset/filename, not by path: the same cache serves any copy of the data.
        if "names" in data.files and all(n in by_name for n in data["names"]):
            kept = [by_name[n] for n in data["names"]]
            return {
                "images": data["images"],
                "lungs": data["lungs"],
                "labels": np.array([s["label"] for s in kept], dtype=np.int64),
                "samples": kept,
                "lung_fraction": data["lungs"].mean(axis=(1, 2)),
            }
        log.info("rebuilding stale view cache %s", path)
    masks = cached_lung_masks(samples, segmenter, progress=progress)
    images, lungs, kept = [], [], []
    for s in tqdm(samples, desc="lung views", disable=not progress, unit="image"):
        if s["path"] not in masks:
            continue
        try:
            image = read_image(s["path"])
        except ImageReadError as err:
            log.warning("skipping %s", err)
            continue
        view, lung = lung_view(image, load_cached_mask(masks[s["path"]]), size, whole=whole, margin=margin)
        images.append((enhance(view[0], enhancement) * 255 + 0.5).astype(np.uint8))
        lungs.append(lung[0] > 0.5)
        kept.append(s)
    images = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    lungs = np.stack(lungs) if lungs else np.zeros((0, size, size), bool)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, lungs=lungs, names=np.array([f"{s['dataset']}/{s['filename']}" for s in kept]))
        os.replace(tmp, path)
    return {
        "images": images,
        "lungs": lungs,
        "labels": np.array([s["label"] for s in kept], dtype=np.int64),
        "samples": kept,
        "lung_fraction": lungs.mean(axis=(1, 2)),
    }


def sample_weights(labels: np.ndarray, sources: list[str], sampling: str = "class_source") -> np.ndarray:
    """Per-sample draw weights: equal per class, and inside a class equal per source.

    ``group`` draws every (source, class) pair present equally often, so inside a source
    every class it holds is equally likely; ``class`` balances classes only; ``none`` draws
    uniformly.
    """
    labels = np.asarray(labels)
    if sampling == "none":
        return np.ones(len(labels))
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    w = np.zeros(len(labels))
    if sampling == "group":
        groups = [(src, int(c)) for src, c in zip(sources, labels)]
        counts = {g: groups.count(g) for g in set(groups)}
        w = np.array([1.0 / counts[g] for g in groups])
        return w / w.sum()
    for c in np.unique(labels):
        in_class = labels == c
        if sampling == "class":
            w[in_class] = 1.0 / in_class.sum()
            continue
        srcs = sorted({sources[i] for i in np.flatnonzero(in_class)})
        for src in srcs:
            group = in_class & np.array([s == src for s in sources])
            w[group] = 1.0 / (len(srcs) * group.sum())
    return w / w.sum()
