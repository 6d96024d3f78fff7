"""Resizing in NumPy, equal to the PyTorch resizes that training used (no torch import).

Inference with ``--backend onnxruntime`` runs without PyTorch, so the two resizes of the
pipeline are written here as separable weight matrices:

- :func:`resize_aa`: bilinear with antialiasing when shrinking, half-pixel centres: what
  ``torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)``
  computes (PIL's triangle filter). Images going into a model.
- :func:`resize_bilinear`: plain bilinear, half-pixel centres, no antialiasing:
  ``interpolate(mode="bilinear", align_corners=False)``. Model outputs going back to an
  image's own size.

Tests compare both with PyTorch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import sparse


@lru_cache(maxsize=1024)
def _aa_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) rows of the antialiased triangle filter (PIL / torch ``_upsample_bilinear2d_aa``)."""
    scale = n_in / n_out
    support = scale if scale > 1.0 else 1.0
    inv = 1.0 / scale if scale > 1.0 else 1.0
    center = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((center + support + 0.5).astype(np.int64), n_in)
    j = np.arange(n_in)[None, :]
    w = np.clip(1.0 - np.abs((j - center[:, None] + 0.5) * inv), 0.0, None)
    w[(j < lo[:, None]) | (j >= hi[:, None])] = 0.0  # the filter's window, banded
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    return sparse.csr_matrix(w.astype(np.float32))


@lru_cache(maxsize=1024)
def _bilinear_weights(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) rows of plain bilinear interpolation with half-pixel centres."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    w = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - frac)
    np.add.at(w, (rows, i1), frac)
    return sparse.csr_matrix(w)


def _separable(x: np.ndarray, size: tuple[int, int], weights) -> np.ndarray:
    x = np.asarray(x, np.float32)
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.copy()
    wy, wx = weights(h, int(size[0])), weights(w, int(size[1]))
    flat = x.reshape(-1, h, w)
    out = np.empty((len(flat), int(size[0]), int(size[1])), np.float32)
    for i, im in enumerate(flat):  # sparse (banded) weights: rows, then columns
        out[i] = (wx @ (wy @ im).T).T
    return out.reshape(*x.shape[:-2], *out.shape[-2:])


def resize_aa(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of the last two axes to ``size`` (see module docstring).

    Shape:
        (..., H, W) -> (..., *size), float32.
    """
    return _separable(x, size, _aa_weights)


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Plain bilinear resize of the last two axes to ``size`` (see module docstring).

    Shape:
        (..., H, W) -> (..., *size), float32.
    """
    return _separable(x, size, _bilinear_weights)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) labels, as ``interpolate(mode="nearest-exact")``."""
    h, w = mask.shape[-2:]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.int64), w - 1)
    return mask[..., rows[:, None], cols[None, :]]
