"""Brixia zones of a lung mask, and the features the severity head reads inside them (NumPy).

Everything is read at the lung model's input grid (256 x 256), from the same forward pass
that found the lungs: the lesion decoder reads the stage-1 encoder's feature maps; the
zones follow the lung mask (each lung cut into upper, middle and lower thirds of its
height, as BS-Net does); the severity head reads per-zone and per-image features:

- ``lesions``: mean ground-glass / consolidation probability and the share above threshold,
- ``geometry``: the zone's share of the lungs (image: lung share of the image, L/R balance),
- ``intensity``: mean and spread of the normalised image inside the zone (image: lungs),
- ``zone``: which zone (zone features only),
- ``deep``: encoder feature maps (96 channels at 1/16, 1280 at 1/32) averaged over the zone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..data.severity import LESIONS, RANGES, ZONES  # noqa: F401  (RANGES: re-exported)

DEEP_LEVELS = (4, 5)  # encoder outputs used: 96 channels at 1/16, 1280 at 1/32


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The patient's right lung (image left) and left lung (image right) of a lung mask.

    Two separate regions: the larger two, ordered by centre column. One region (lungs
    touching): cut at the emptiest column of its middle half.
    """
    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(mask)
    if n >= 2:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        a, b = (np.argsort(sizes)[::-1][:2] + 1).tolist()
        ca, cb = (np.nonzero(labels == k)[1].mean() for k in (a, b))
        right, left = (a, b) if ca < cb else (b, a)
        return labels == right, labels == left
    cols = np.nonzero(mask.any(axis=0))[0]
    if len(cols) == 0:
        return mask.copy(), np.zeros_like(mask)
    x0, x1 = cols.min(), cols.max() + 1
    q = (x1 - x0) // 4
    counts = mask[:, x0 + q : x1 - q].sum(axis=0) if x1 - x0 >= 4 else mask[:, x0:x1].sum(axis=0)
    cut = x0 + (q if x1 - x0 >= 4 else 0) + int(np.argmin(counts))
    right, left = mask.copy(), mask.copy()
    right[:, cut:] = False
    left[:, :cut] = False
    return right, left


def brixia_zones(mask: np.ndarray) -> np.ndarray:
    """Zone map of a lung mask: 0 outside the lungs, 1-6 for zones A-F.

    A-C: the patient's right lung (image left), upper, middle, lower third of its height;
    D-F: the left lung.
    """
    out = np.zeros(np.shape(mask), np.uint8)
    for offset, lung in zip((0, 3), split_lungs(mask)):
        rows = np.nonzero(lung.any(axis=1))[0]
        if len(rows) == 0:
            continue
        top, height = rows.min(), rows.max() + 1 - rows.min()
        third = np.clip(((np.arange(out.shape[0]) - top) * 3) // height, 0, 2)
        out[lung] = (offset + 1 + third[:, None].repeat(out.shape[1], 1))[lung]
    return out


def zone_borders(zones: np.ndarray) -> np.ndarray:
    """Pixels on the border between two Brixia zones, inside the lungs, of a (H, W) zone map (bool)."""
    z = np.asarray(zones)
    border = np.zeros(z.shape, bool)
    border[1:] |= (z[1:] != z[:-1]) & (z[1:] > 0) & (z[:-1] > 0)
    border[:, 1:] |= (z[:, 1:] != z[:, :-1]) & (z[:, 1:] > 0) & (z[:, :-1] > 0)
    return border


def _block_mean(weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Average (..., H, W) over blocks down to ``shape`` (H, W multiples of it: adaptive average pooling)."""
    h, w = weights.shape[-2:]
    fh, fw = h // shape[0], w // shape[1]
    return weights.reshape(*weights.shape[:-2], shape[0], fh, shape[1], fw).mean(axis=(-3, -1))


def _pooled(feature: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, C, h, w) features averaged under (N, R, H, W) region weights -> (N, R, C)."""
    w = _block_mean(weights, feature.shape[-2:])
    n, r = w.shape[:2]
    w = w.reshape(n, r, -1)
    return (
        np.matmul(w, feature.reshape(n, feature.shape[1], -1).transpose(0, 2, 1))
        / np.maximum(w.sum(axis=2), 1e-6)[..., None]
    )


def _region_stats(
    regions: np.ndarray, lesion_p: np.ndarray, image: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion (N, R, 4), area (N, R) and intensity (N, R, 2) statistics of (N, R, H, W) regions."""
    n, r = regions.shape[:2]
    reg = regions.reshape(n, r, -1)
    area = reg.sum(axis=2)
    denom = np.maximum(area, 1)[..., None]
    les = lesion_p.reshape(n, lesion_p.shape[1], -1)
    pix = np.concatenate(
        [les, (les > threshold).astype(np.float32), image.reshape(n, 1, -1), image.reshape(n, 1, -1) ** 2], axis=1
    )
    sums = np.matmul(reg, pix.transpose(0, 2, 1)) / denom  # (N, R, 2K + 2) region means, one matrix product
    k = les.shape[1]
    mu, sq = sums[..., 2 * k], sums[..., 2 * k + 1]
    return sums[..., : 2 * k], area, np.stack([mu, np.sqrt(np.maximum(sq - mu**2, 0))], axis=2)


def severity_features(
    x: np.ndarray,
    encoder: list[np.ndarray],
    lungs: np.ndarray,
    lesion_p: np.ndarray,
    threshold: float = 0.5,
    zones: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image features (N, 12 + D) and zone features (N, 6, 13 + D) for the severity head (NumPy, float32).

    Args:
        x: (N, 1, S, S) the lung model's normalised input batch.
        encoder: that batch's encoder feature list (smp order).
        lungs: (N, S, S) bool lung masks at S.
        lesion_p: (N, len(LESIONS), S, S) lesion probabilities.
        zones: (N, S, S) :func:`brixia_zones` of ``lungs`` when already computed.

    Layout (see :data:`IMAGE_GROUPS`, :data:`ZONE_GROUPS`): image = lesions of the right
    then the left lung (8), geometry (2), intensity (2), deep (D); zone = lesions (4),
    geometry (1), intensity (2), zone one-hot (6), deep (D).
    """
    x, lungs = np.asarray(x, np.float32), np.asarray(lungs, bool)
    encoder = [np.asarray(f, np.float32) for f in encoder]
    n = len(x)
    zones = np.stack([brixia_zones(m) for m in lungs]) if zones is None else zones
    zone_w = (zones[:, None] == np.arange(1, len(ZONES) + 1)[None, :, None, None]).astype(np.float32)  # (N, 6, S, S)
    lung_w = np.stack([zone_w[:, :3].sum(1), zone_w[:, 3:].sum(1)], axis=1)  # right, left
    lesion_p = np.asarray(lesion_p, np.float32) * lungs[:, None]
    image = x[:, 0]
    z_les, z_area, z_int = _region_stats(zone_w, lesion_p, image, threshold)
    l_les, l_area, _ = _region_stats(lung_w, lesion_p, image, threshold)
    _, _, all_int = _region_stats(lungs[:, None].astype(np.float32), lesion_p, image, threshold)
    total = np.maximum(l_area.sum(1, keepdims=True), 1)
    deep_z = np.concatenate([_pooled(encoder[k], zone_w) for k in DEEP_LEVELS], axis=2)
    deep_l = np.concatenate([_pooled(encoder[k], lungs[:, None].astype(np.float32)) for k in DEEP_LEVELS], axis=2)[:, 0]
    balance = 2 * l_area.min(1) / total[:, 0]
    image_f = np.concatenate(
        [l_les.reshape(n, -1), total / lungs[0].size, balance[:, None], all_int[:, 0], deep_l], axis=1
    )
    onehot = np.broadcast_to(np.eye(len(ZONES), dtype=np.float32)[None], (n, len(ZONES), len(ZONES)))
    zone_f = np.concatenate([z_les, (z_area / total)[..., None], z_int, onehot, deep_z], axis=2)
    return image_f.astype(np.float32), zone_f.astype(np.float32)


def _groups(deep: int, zone: bool) -> dict[str, tuple[int, int]]:
    sizes = {"lesions": 4 if zone else 8, "geometry": 1 if zone else 2, "intensity": 2}
    if zone:
        sizes["zone"] = len(ZONES)
    sizes["deep"] = deep
    out, start = {}, 0
    for name, k in sizes.items():
        out[name] = (start, start + k)
        start += k
    return out


DEEP_DIM = 96 + 1280
IMAGE_GROUPS = _groups(DEEP_DIM, zone=False)
ZONE_GROUPS = _groups(DEEP_DIM, zone=True)


def columns(groups: tuple[str, ...] | list[str], zone: bool) -> list[int]:
    """Feature columns of the named groups (see :func:`severity_features`)."""
    table = ZONE_GROUPS if zone else IMAGE_GROUPS
    unknown = set(groups) - set(table)
    if unknown:
        raise ValueError(f"unknown severity feature groups {sorted(unknown)}; known: {list(table)}")
    return [i for g in table if g in groups for i in range(*table[g])]
