"""Severity from the lungs: lesions, Brixia zones, geographic extent and opacity.

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

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data.severity import LESIONS, ZONES
from .resize import resize_nearest
from .specs import WeightSpec, source_sha256

#: Clip ranges of the scores: geographic extent 0-8, opacity 0-6, Brixia zone 0-3.
RANGES = {"geographic_extent": (0.0, 8.0), "opacity": (0.0, 6.0), "zone": (0.0, 3.0)}
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


class SeverityScorer:
    """Lesions and severity scores from the stage-1 forward pass (NumPy; the models are callables).

    Args:
        lesions: encoder feature list (NumPy) -> lesion probabilities (N, len(LESIONS), S, S).
        lesion_spec: the lesion decoder's spec (threshold; the lung model it reads).
        head: (image features, zone features) -> (scores (N, 2), zone scores (N, 6)).
        head_spec: the severity head's spec (``model_kwargs`` name the feature groups it reads).
    """

    def __init__(self, lesions: Callable, lesion_spec: WeightSpec, head: Callable, head_spec: WeightSpec) -> None:
        wanted = head_spec.training.get("lesion_weights")
        if wanted and wanted != source_sha256(lesion_spec):
            raise ValueError(
                f"severity head {head_spec.name} was fitted on lesion weights {wanted[:12]}…, not on {lesion_spec.sha256[:12]}…; pass the matching pair"
            )
        self.lesions, self.lesion_spec = lesions, lesion_spec
        self.head, self.head_spec = head, head_spec
        self.image_cols = columns(head_spec.model_kwargs["image_groups"], zone=False)
        self.zone_cols = columns(head_spec.model_kwargs["zone_groups"], zone=True)

    @classmethod
    def from_spec(cls, lesions: str | Path | None = None, severity: str | Path | None = None) -> SeverityScorer:
        """The PyTorch lesion decoder and severity head of two specs (default: shipped)."""
        import torch

        from .models import eval_mode, load_weights

        lesion_model, lesion_spec = load_weights(lesions, kind="lesions")
        lesion_model = lesion_model.to(memory_format=torch.channels_last)  # faster CPU convolutions
        head, head_spec = load_weights(severity, kind="severity")

        @torch.inference_mode()
        def run_lesions(encoder: list[np.ndarray]) -> np.ndarray:
            with eval_mode(lesion_model):
                return torch.sigmoid(lesion_model([torch.as_tensor(f) for f in encoder]).float()).numpy()

        @torch.inference_mode()
        def run_head(image_f: np.ndarray, zone_f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with eval_mode(head):
                scores, zones = head(torch.from_numpy(image_f), torch.from_numpy(zone_f))
            return scores.numpy(), zones.numpy()

        return cls(run_lesions, lesion_spec, run_head, head_spec)

    def score(self, x: np.ndarray, encoder: list[np.ndarray], masks: list[np.ndarray]) -> list[dict]:
        """Severity of each image from the lung model's batch ``x``, its encoder features and the final lung masks.

        Returns:
            per image: ``severity`` (JSON-ready: ``geographic_extent``, ``opacity``, ``brixia``
            with zones A-F and ``global``, ``lesions`` with the affected share of each lung),
            ``lesions`` (len(LESIONS), S, S) bool inside the lungs and ``zones`` (S, S) uint8,
            both on the lung model's input grid (stretch them to the image's size to draw them).
        """
        x = np.asarray(x, np.float32)
        encoder = [np.asarray(f, np.float32) for f in encoder]
        size = tuple(x.shape[-2:])
        lungs = np.stack([resize_nearest(np.asarray(m, bool), size) for m in masks])
        zones = np.stack([brixia_zones(m) for m in lungs])
        p = self.lesions(encoder)
        thr = self.lesion_spec.threshold
        image_f, zone_f = severity_features(x, encoder, lungs, p, thr, zones)
        scores, zone_scores = self.head(
            np.ascontiguousarray(image_f[:, self.image_cols]), np.ascontiguousarray(zone_f[:, :, self.zone_cols])
        )
        lo = IMAGE_GROUPS["lesions"][
            0
        ]  # per lung (right, left): mean probability of each lesion, then share above threshold
        out = []
        for i in range(len(masks)):
            zs = np.clip(zone_scores[i], *RANGES["zone"])
            shares = {
                name: {
                    side: round(float(image_f[i, lo + 4 * j + len(LESIONS) + k]), 4)
                    for j, side in enumerate(("right_lung", "left_lung"))
                }
                for k, name in enumerate(LESIONS)
            }
            severity = {
                "geographic_extent": round(float(np.clip(scores[i, 0], *RANGES["geographic_extent"])), 2),
                "opacity": round(float(np.clip(scores[i, 1], *RANGES["opacity"])), 2),
                "brixia": {**{z: round(float(v), 2) for z, v in zip(ZONES, zs)}, "global": round(float(zs.sum()), 2)},
                "lesions": shares,
            }
            out.append({"severity": severity, "lesions": (p[i] > thr) & lungs[i], "zones": zones[i]})
        return out
