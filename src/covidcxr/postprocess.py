"""Mask clean-up: keep the two lungs, fill their holes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_lungs(mask: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Keep the (at most) two largest connected regions and fill holes in them.

    A second region smaller than ``min_fraction`` of the largest is dropped as a stray blob
    (a lung hidden by a white-out is not recovered by keeping noise).

    Args:
        mask: boolean (H, W).

    Returns:
        boolean (H, W).
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1][:2]
    keep = [order[0] + 1] + [i + 1 for i in order[1:] if sizes[i] >= min_fraction * sizes[order[0]]]
    out = np.isin(labels, keep)
    return ndimage.binary_fill_holes(out)


GEOMETRY = ("lung_fraction", "left_right_balance", "aspect")


def geometry(mask: np.ndarray) -> np.ndarray:
    """Three facts about a lung mask, read by the input gate: (3,) lung share of the image,
    left/right lung balance (0 one-sided … 1 even), height / width."""
    h, w = mask.shape
    left, right = mask[:, : w // 2].sum(), mask[:, w // 2 :].sum()
    total = left + right
    balance = 2 * min(left, right) / total if total else 0.0
    return np.array([mask.mean(), balance, h / w], np.float32)
