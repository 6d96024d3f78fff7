"""Diagnosis samples: frontal chest X-rays with one of the three classes, and the lung input.

Stage 2 reads the lungs that stage 1 found: by default the bounding box of the lung mask
with a margin (``crop``), or the whole image with everything outside the lungs set to 0
(``masked``). :func:`lung_input` is the one code path for training and inference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .labels import CLASSES, is_frontal_xray, label_of

LUNG_INPUTS = ("crop", "masked", "whole")


def classification_samples(records: list[dict], split: str | None = None) -> tuple[list[dict], Counter]:
    """Frontal X-ray records with a class; and the count of each reason a record was left out.

    Returns:
        (samples: the records plus ``label`` (index into ``CLASSES``) and ``label_name``,
        excluded: Counter of ``"<dataset>: <reason>"``).
    """
    samples, excluded = [], Counter()
    for rec in records:
        if split is not None and rec["split"] != split:
            continue
        if not is_frontal_xray(rec):
            excluded[f"{rec['dataset']}: not a frontal X-ray ({rec['modality']}, view {rec['view'] or 'blank'})"] += 1
            continue
        name = label_of(rec["dataset"], rec["finding"])
        if name is None:
            excluded[f"{rec['dataset']}: finding {rec['finding']!r} excluded"] += 1
            continue
        samples.append({**rec, "label": CLASSES.index(name), "label_name": name})
    return samples, excluded


def lung_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the mask grown by ``margin`` of its size per side.

    An empty mask gives the whole image (the caller should warn: no lungs were found).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, h, 0, w
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def lung_input(image: np.ndarray, mask: np.ndarray, mode: str = "crop", margin: float = 0.1) -> np.ndarray:
    """The part of an image the classifier sees.

    Args:
        image: (H, W) float in [0, 1].
        mask: (H, W) bool lung mask at the image's size.
        mode: ``crop`` (lung bounding box + margin), ``masked`` (crop, and pixels outside the
            lungs set to 0) or ``whole`` (the image unchanged; for shortcut studies).

    Returns:
        (h, w) float32 array.
    """
    if mode not in LUNG_INPUTS:
        raise ValueError(f"lung input mode must be one of {LUNG_INPUTS}, got {mode!r}")
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and lung mask {mask.shape} differ in size")
    if mode == "whole":
        return image.astype(np.float32, copy=False)
    y0, y1, x0, x1 = lung_box(mask, margin)
    out = image[y0:y1, x0:x1].astype(np.float32, copy=True)
    if mode == "masked":
        out[~mask[y0:y1, x0:x1]] = 0.0
    return out


__all__ = ["CLASSES", "LUNG_INPUTS", "classification_samples", "lung_box", "lung_input"]
